"""YAML recipes: one file is one run.

``load_recipe(path, overrides)`` reads the file, follows ``base:`` (relative to the
file that names it), applies ``dotted.key=value`` overrides (values parsed as YAML),
and validates the result into a typed :class:`Recipe`. Every problem is a
:class:`RecipeError` whose message names the dotted key and the valid choices.

Sections that configure a plug-in (a teacher, an upsampler, a student, a data
source, an eval task) hold the plug-in's ``name``/``family`` plus the keyword
arguments of its registered builder; keys the builder does not take are errors.
"""

from __future__ import annotations

import copy
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from radiosharp.registry import DATASETS, STUDENTS, TEACHERS, UPSAMPLERS, BadOptionError, Registry, UnknownNameError
from radiosharp.run_ref import run_folder_of, run_hint


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and what would be valid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PluginConfig(BaseModel):
    """A registry name plus the builder's keyword arguments (kept as extra fields)."""

    model_config = ConfigDict(extra="allow")
    registry: ClassVar[Registry]
    name_field: ClassVar[str] = "name"

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for the builder (everything but the reserved fields)."""
        return dict(self.model_extra or {})

    def build_config(self) -> dict[str, Any]:
        """``{name_field: name, **options}``: what the registry builds this plug-in from."""
        return {self.name_field: getattr(self, self.name_field), **self.options}

    def check(self, where: str) -> None:
        name = getattr(self, self.name_field)
        self.registry.get(name, f"{where}.{self.name_field}")
        self.registry.check_options(name, self.options, where)


class UpsamplerConfig(PluginConfig):
    """How a teacher's features are lifted: a registry name or an exported upsampler run.

    A plain string in YAML is shorthand for either (:mod:`radiosharp.run_ref`): a run
    when it starts with ``run:`` or contains a path separator, else an upsampler name.
    """

    registry: ClassVar[Registry] = UPSAMPLERS
    name: str = "bilinear"
    factor: int | None = Field(default=None, ge=1)
    run: str | None = None

    @field_validator("factor")
    @classmethod
    def _upsampling_factor(cls, value: int | None) -> int | None:
        # Factor 1 would be identity for some upsamplers and meaningless for others (a FeatUp
        # stack of no stage, a multi-view objective with nothing to learn): refused for all.
        if value == 1:
            raise ValueError(
                "factor 1 does not upsample (the teacher's own features are the factor-1 baseline); "
                "valid factors: integers >= 2 (2, 3, 4, ...)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            run = run_folder_of(value)
            return {"name": value} if run is None else {"run": run}
        return value

    def check(self, where: str) -> None:
        if self.run is None:
            try:
                super().check(where)
            except UnknownNameError as err:
                raise UnknownNameError(f"{err}; {run_hint(self.name)}") from None


class TeacherConfig(PluginConfig):
    """One teacher: its family's builder options plus how the student learns from it."""

    registry: ClassVar[Registry] = TEACHERS
    name_field: ClassVar[str] = "family"
    family: str
    upsampler: UpsamplerConfig | None = None
    phi_s: str | None = None  # PHI-S statistics file (python -m radiosharp.stats); None: computed in-run
    summary_weight: float = 1.0
    feature_weight: float = 1.0
    partitions: list[str] | None = None  # distillation partitions this teacher teaches in; None: all


# Teacher builder options that do not change the vision network (where the weights are
# cached, whether the text tower is built too), so may differ between an upsampler run
# and the distillation or figure that uses it.
NON_NETWORK_OPTIONS = ("cache_dir", "text")


def resolved_teacher_options(cfg: TeacherConfig | Mapping[str, Any]) -> dict[str, Any]:
    """``{"family": ..., **builder options}`` of the network a teacher config builds.

    Every builder default is filled in and keys the builder does not take (a recipe's
    ``upsampler``, ``phi_s``, loss weights) are dropped, as are NON_NETWORK_OPTIONS,
    so two configs of one teacher compare equal (``{family: dinov2}`` equals
    ``{family: dinov2, size: real}``). A family no longer registered keeps its keys as given.
    """
    if isinstance(cfg, TeacherConfig):
        cfg = cfg.build_config()
    family = cfg.get("family")
    if family not in TEACHERS:
        given = {k: v for k, v in cfg.items() if k != "family" and k not in NON_NETWORK_OPTIONS}
        return {"family": family, **given}
    full = {k: p.default for k, p in TEACHERS.options(family).items() if k not in NON_NETWORK_OPTIONS}
    full.update({k: v for k, v in cfg.items() if k in full})
    return {"family": family, **full}


class DataConfig(PluginConfig):
    registry: ClassVar[Registry] = DATASETS
    name_field: ClassVar[str] = "source"
    source: str = "synthetic"


class StudentConfig(PluginConfig):
    registry: ClassVar[Registry] = STUDENTS
    name: str = "radio"


class OptimConfig(Strict):
    name: Literal["adamw", "nadam", "sgd", "lamb"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0


class TrainConfig(Strict):
    steps: int = Field(default=100, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    num_workers: int = Field(default=0, ge=0)
    # Steps whose loss or gradient norm is not finite that may be skipped (no update,
    # logged) before the run stops; 0: the first one stops it.
    skip_nonfinite: int = Field(default=0, ge=0)
    optim: OptimConfig = OptimConfig()

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML reads a bare `no` (in a file or as `train.mixed_precision=no`) as false.
        return "no" if value is False else value


class StatsConfig(Strict):
    """PHI-S statistics: streamed over ``num_images`` images of ``data``."""

    num_images: int = Field(default=256, ge=2)
    batch_size: int = Field(default=8, ge=1)
    image_size: int | None = None


class WandbConfig(Strict):
    enabled: bool = False
    project: str = "radiosharp"
    mode: Literal["offline", "online", "disabled"] | None = None


Kind = Literal["featurize", "upsampler", "distill"]
KINDS = typing.get_args(Kind)


class Recipe(Strict):
    kind: Kind
    name: str | None = None
    output_dir: str | None = None
    seed: int = 0
    resume: bool = False
    init_from: str | None = None
    teachers: dict[str, TeacherConfig] = Field(default_factory=dict)
    data: DataConfig = DataConfig()
    eval_data: DataConfig | None = None
    student: StudentConfig | None = None
    train: TrainConfig = TrainConfig()
    stats: StatsConfig = StatsConfig()
    wandb: WandbConfig = WandbConfig()
    deepspeed: dict[str, Any] | None = None
    # Free-form sections owned by one kind of run; each trainer validates its own.
    upsampler_training: dict[str, Any] = Field(default_factory=dict)
    distill: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)

    @field_validator("teachers", mode="before")
    @classmethod
    def _default_family(cls, value: Any) -> Any:
        """A teacher's family defaults to its key (``teachers: {dinov2: {size: tiny}}``)."""
        if isinstance(value, Mapping):
            out = {}
            for key, cfg in value.items():
                cfg = dict(cfg or {})
                cfg.setdefault("family", key)
                out[key] = cfg
            return out
        return value

    def check_names(self) -> None:
        for key, teacher in self.teachers.items():
            teacher.check(f"teachers.{key}")
            if teacher.upsampler is not None:
                teacher.upsampler.check(f"teachers.{key}.upsampler")
        self.data.check("data")
        if self.eval_data is not None:
            self.eval_data.check("eval_data")
        if self.student is not None:
            self.student.check("student")

    @property
    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("runs") / (self.name or self.kind)


# ----------------------------------------------------------------------------- loading


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


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise RecipeError(f"override '{override}' must look like dotted.key=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError(f"override '{override}': empty part in the key '{key}'")
    try:
        value = safe_load_unique(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise RecipeError(f"override '{override}': {err}") from None
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):  # `distill.partitions.1.size=384`
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override '{override}': '{where}' needs an index below {len(node)}")
            if last:
                if value is None:
                    raise RecipeError(f"override '{override}': cannot remove list item '{where}'")
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if last:
            if value is None:
                node.pop(part, None)  # `teachers.sam=null` drops it; a field falls back to its default
            else:
                node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str) and part == "upsampler":
            # `teachers.x.upsampler=featsharp` then `teachers.x.upsampler.factor=3`
            child = node[part] = UpsamplerConfig._from_string(child)
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"override '{override}': '{where}' is a value, not a section")
        node = child


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
