"""The ``distill`` section of a recipe: its partitions and options, checked against ``train`` and
``teachers`` (:func:`parse_section`) before anything is built or written."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from radiosharp.recipe import Recipe, RecipeError, validate_section

__all__ = ["DistillConfig", "DistillLossConfig", "PartitionConfig", "parse_section"]


class DistillLossConfig(BaseModel):
    """``distill.losses``: optional losses and balancing, all off by default."""

    model_config = ConfigDict(extra="forbid")
    shift_equivariant: bool = False
    # Shifts per axis, in whole patches: round(N(0, shift_std)), clipped to +-max_shift and to
    # a quarter of the model's token grid (C-RADIOv4's authors report round(N(0, 0.5)) patches).
    shift_std: float = Field(default=0.5, gt=0)
    max_shift: int = Field(default=2, ge=1)
    summary: Literal["cosine", "angle_balanced"] = "cosine"
    balance: Literal["none", "equal"] = "none"
    feature_space: Literal["raw", "phi_s"] = "raw"

    @property
    def plain_features(self) -> bool:
        """Whether the feature loss is today's (raw MSE / mean eigenvalue, no shifts)."""
        return not self.shift_equivariant and self.feature_space == "raw"


class PartitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    # Student input: one size (a side in pixels, or [H, W]) or a set drawn per step
    # (radiosharp.trainers.resolution); exactly one of the two.
    size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None
    sizes: list[PositiveInt | tuple[PositiveInt, PositiveInt]] | None = None
    aspect_ratios: list[PositiveFloat] | None = None  # W/H drawn per step (the side's area kept)
    mosaic: list[PositiveInt] | None = None  # mosaic grid sides k drawn per step (1: the plain image)
    batch_size: int = Field(ge=1)  # this partition's share of the global batch
    upsample: bool = False  # teachers with an upsampler use it here

    @field_validator("sizes", "aspect_ratios", "mosaic")
    @classmethod
    def _not_empty(cls, value: list | None, info: ValidationInfo) -> list | None:
        if value is not None and not value:
            raise ValueError(f"{info.field_name} is an empty set; give at least one value or drop the key")
        return value

    @model_validator(mode="after")
    def _one_size(self) -> PartitionConfig:
        if (self.size is None) == (self.sizes is None):
            which = "both" if self.size is not None else "neither"
            raise ValueError(
                f"partition '{self.name}' gives {which} of size and sizes; give exactly one: size (e.g. 224 "
                "or [384, 512] as [H, W]) or sizes (a set drawn per step, e.g. [128, 160, 192])"
            )
        drawn = [self.size] if self.size is not None else self.sizes
        if self.aspect_ratios and any(not isinstance(s, int) for s in drawn):
            raise ValueError(
                f"partition '{self.name}': aspect_ratios reshape a square side; give square sizes "
                "(e.g. 384) with them, not [H, W]"
            )
        return self


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partitions: list[PartitionConfig] = Field(
        default_factory=lambda: [PartitionConfig(name="low", size=224, batch_size=8)]
    )
    # Apply a teacher's upsampler-run de-bias buffer in the partitions without upsampling too.
    debias_low_res: bool = True
    # Optional losses and teacher balancing, all off by default (radiosharp.trainers.distill_losses).
    losses: DistillLossConfig = Field(default_factory=DistillLossConfig)

    @model_validator(mode="after")
    def _unique(self) -> DistillConfig:
        names = [p.name for p in self.partitions]
        if not names:
            raise ValueError("give at least one partition, e.g. [{name: low, size: 224, batch_size: 8}]")
        if len(set(names)) != len(names):
            raise ValueError(f"partition names must be unique, got {names}")
        return self


def parse_section(recipe: Recipe) -> DistillConfig:
    """The ``distill`` section, checked against ``train`` and ``teachers``."""
    cfg = validate_section("distill", DistillConfig, recipe.distill)
    total = sum(p.batch_size for p in cfg.partitions)
    if total != recipe.train.batch_size:
        raise RecipeError(
            f"train.batch_size ({recipe.train.batch_size}) must equal the sum of the partitions' "
            f"batch sizes ({' + '.join(str(p.batch_size) for p in cfg.partitions)} = {total})"
        )
    if recipe.student is None:
        raise RecipeError("kind: distill needs a 'student' section, e.g. student: {name: radio, size: tiny}")
    if not recipe.teachers:
        raise RecipeError("kind: distill needs at least one teacher under 'teachers'")
    names = [p.name for p in cfg.partitions]
    for key, t in recipe.teachers.items():
        if t.partitions is not None and not t.partitions:
            raise RecipeError(
                f"teachers.{key}.partitions is empty, so it would teach nowhere; "
                f"drop the key (all partitions) or name some of: {', '.join(names)}"
            )
        for part in t.partitions or []:
            if part not in names:
                raise RecipeError(f"teachers.{key}.partitions names '{part}'; valid partitions: {', '.join(names)}")
    for part in cfg.partitions:
        if not any(t.partitions is None or part.name in t.partitions for t in recipe.teachers.values()):
            raise RecipeError(
                f"distill partition '{part.name}' has no teacher (every teacher's 'partitions' "
                "leaves it out); drop the partition or add it to a teacher's partitions"
            )
    return cfg
