"""The recipe schema: one pydantic model per section, plug-in sections checked against their registries."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from radiosharp.registry import DATASETS, STUDENTS, TEACHERS, UPSAMPLERS, Registry, UnknownNameError
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
    # MiB of working memory for each no-grad call of this teacher's upsampler (tiles or query
    # chunks with the same output, radiosharp.upsampled); None: unbounded (or RADIOSHARP_MAX_MEMORY_MB)
    max_memory_mb: float | None = Field(default=None, gt=0)


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
    # torch.compile of the trained model (through Accelerate's dynamo_backend): "no", or a
    # backend: "inductor" (true means it), "aot_eager" / "eager" (no C++ compiler needed).
    compile: Literal["no", "inductor", "aot_eager", "eager", "cudagraphs"] = "no"
    optim: OptimConfig = OptimConfig()

    @field_validator("mixed_precision", "compile", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any, info: Any) -> Any:
        # YAML reads a bare `no` (in a file or as `train.mixed_precision=no`) as false.
        if value is True and info.field_name == "compile":
            return "inductor"
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
