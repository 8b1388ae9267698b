"""The ``objective`` a recipe trains an upsampler with, and the check that it can work.

``upsampler_training.objective`` is a name or a mapping::

    objective: multiview                                  # FeatUp / FeatSharp (the default)
    objective: {name: crop_hires, mse: 1.0, cosine: 1.0, consistency: 0.1, crops: 4}

- ``multiview``: consistency across jittered views (:mod:`radiosharp.multiview`);
- ``low_to_high``: JAFAR / UPLiFT's self-target: the image shrunk ``u`` times is featurized,
  upsampled ``u x`` (guided by the image at the teacher's size) and regressed onto the
  teacher's features of the image at its own size;
- ``crop_hires``: AnyUp's target: the image at ``u x`` is upsampled whole, and ``crops``
  cell-aligned windows of the output are regressed onto the teacher's features of the same
  windows of the image; ``consistency`` weighs the term that pulls the output,
  area-pooled back to the low-res grid, onto the low-res features;
- ``hires_teacher``: regression onto the teacher run at ``u x`` input (for teachers that
  are robust to scale: DINOv2, SAM, RADIO).

Every objective takes ``mse`` and ``cosine`` weights (MSE alone by default).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OBJECTIVES", "ObjectiveConfig", "ObjectiveError", "check_objective"]

OBJECTIVES = ("multiview", "low_to_high", "crop_hires", "hires_teacher")


class ObjectiveError(ValueError):
    """An objective that cannot work with the recipe's teacher or upsampler."""


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["multiview", "low_to_high", "crop_hires", "hires_teacher"] = "multiview"
    mse: float = Field(default=1.0, ge=0)
    cosine: float = Field(default=0.0, ge=0)
    consistency: float = Field(default=0.0, ge=0)  # crop_hires: AnyUp's downsampling term (0.1 there)
    crops: int = Field(default=1, ge=1)  # crop_hires: windows per image (AnyUp: 4)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _weights(self) -> ObjectiveConfig:
        if self.mse == 0 and self.cosine == 0:
            raise ValueError("objective: mse and cosine are both 0; give at least one a positive weight")
        if self.name != "crop_hires" and (self.consistency or self.crops != 1):
            raise ValueError(f"objective: consistency and crops are options of crop_hires, not of {self.name}")
        return self


def check_objective(objective: ObjectiveConfig, native_size: int, patch_size: int, factor: int) -> None:
    """Refuse an objective whose target cannot be formed for this teacher and factor."""
    if objective.name == "low_to_high" and native_size % (factor * patch_size):
        raise ObjectiveError(
            f"objective low_to_high: the teacher's input {native_size}px shrunk {factor}x is not a whole number "
            f"of {patch_size}px patches; use a native_size that is a multiple of {factor * patch_size}, a smaller "
            f"factor, or another objective (multiview, crop_hires, hires_teacher)"
        )
