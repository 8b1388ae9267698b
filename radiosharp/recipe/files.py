"""Reading recipe files: YAML that refuses a key written twice, and ``base:`` chains merged (not yet validated)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from radiosharp.recipe.schema import RecipeError


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that names one key twice (``key``, 1-based ``first`` and ``second`` lines)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key '{key}' at lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming one key twice.

    Plain PyYAML keeps the later value silently (a recipe's second ``train:`` block
    would replace the first). Keys brought in by a merge (``<<: *base``) may be
    overridden, as YAML intends; only keys written twice in one mapping are refused.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a key given twice in one mapping."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = safe_load_unique(path.read_text()) or {}
    except DuplicateKeyError as err:
        raise RecipeError(
            f"{path}: duplicate key '{err.key}' at lines {err.first} and {err.second} "
            "(YAML would silently keep the later one); keep one of them"
        ) from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` wins; mappings merge key by key, everything else is replaced.

    A ``null`` in ``over`` removes the key (a teacher of the base recipe, say), so
    the field falls back to its default.
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe_dict(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at ``path`` with its ``base:`` chain merged in (not yet validated)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise RecipeError(f"recipe inheritance loops: {chain}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else list(base)
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, read_recipe_dict(path.parent / b, (*_seen, path)))
    return deep_merge(merged, data)
