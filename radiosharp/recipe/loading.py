"""Validating a recipe into a :class:`~radiosharp.recipe.schema.Recipe` with one-line errors that name the dotted
key and the valid choices; ``load_recipe`` (file + ``base:`` + overrides + validation) and the YAML a run keeps."""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from radiosharp.recipe.files import read_recipe_dict
from radiosharp.recipe.overrides import apply_override
from radiosharp.recipe.schema import KINDS, Recipe, RecipeError
from radiosharp.registry import BadOptionError, UnknownNameError


def _model_at(model: type[BaseModel], path: list[Any]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``path`` (list indices and dict keys skipped)."""

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]

    current: type[BaseModel] | None = model
    for part in path:
        if current is None:
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            continue  # a list index or a dict key: stay on the item model
        found = models_in(field.annotation)
        current = found[0] if found else None
    return current


def _format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    lines = []
    for e in err.errors():
        parts = [p for p in e["loc"] if not str(p).startswith("function-")]
        loc = ".".join(str(p) for p in parts)
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, parts[:-1]) if model is not None else None
            valid = f"; valid keys: {', '.join(owner.model_fields)}" if owner is not None else ""
            lines.append(f"unknown key '{loc}'{valid}")
        elif e["type"] == "literal_error":
            lines.append(f"bad value at '{loc}': {e['msg']}")
        else:
            msg = e["msg"].removeprefix("Value error, ")  # a validator's own message
            lines.append(f"bad value at '{loc}': {msg} (got {e.get('input')!r})")
    return "; ".join(lines)


def validate_section(section: str, model: type[BaseModel], data: Any) -> Any:
    """Validate a kind's free-form section (``distill``, ``upsampler_training``) with ``model``.

    Errors name the full dotted path (``distill.partitions.0.size``).
    """
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise RecipeError(_prefix_paths(_format_validation_error(err, model), section)) from None


def _prefix_paths(message: str, section: str) -> str:
    return re.sub(r"(unknown key|bad value at) '", lambda m: f"{m.group(0)}{section}.", message)


def validate_recipe(data: Mapping[str, Any]) -> Recipe:
    """Validate a merged recipe dict: schema first, then registry names and options."""
    if "kind" not in data:
        raise RecipeError(f"recipe has no 'kind'; valid kinds: {', '.join(KINDS)}")
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as err:
        raise RecipeError(_format_validation_error(err, Recipe)) from None
    try:
        recipe.check_names()
    except (UnknownNameError, BadOptionError) as err:
        raise RecipeError(str(err)) from None
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    data = read_recipe_dict(path)
    for override in overrides:
        apply_override(data, override)
    data.setdefault("name", Path(path).stem)
    return validate_recipe(data)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what a run folder keeps as recipe.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
