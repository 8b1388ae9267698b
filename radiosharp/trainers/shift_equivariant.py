"""The shift-equivariant feature loss of ``kind: distill`` (``distill.losses.shift_equivariant``).

C-RADIOv4, section 2.3: the student and every teacher see the image under their own random
translation; each feature map is translated back before the loss, which is taken over the
region all of them saw. A teacher's fixed-pattern position noise (the artifact a ViT paints at
fixed token positions, whatever the image) stays put in the teacher's own frame, so after the
undo it moves with the teacher's random shift: the student, who cannot know that shift, cannot
predict it and learns the content instead. See :class:`ShiftStep` for the grids.

Every draw of a shift comes from a ``torch.Generator`` seeded from a hash of
``(recipe seed, step, micro-step, process, partition, stream)``, never from the global random
state, so a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.contracts import StudentOutput, TeacherOutput
from radiosharp.images import resize
from radiosharp.trainers.distill_config import DistillLossConfig

log = logging.getLogger(__name__)

__all__ = [
    "ShiftStep",
    "ShiftedStudentOutput",
    "ShiftedTeacherOutput",
    "begin_shift_step",
    "draw_shifts",
    "shift_generator",
    "translate_images",
    "untranslate_features",
]


def shift_generator(seed: int, step: int, micro: int, process: int, partition: int, stream: str) -> torch.Generator:
    """A CPU generator seeded from a hash of its arguments alone (never the global RNG)."""
    key = f"radiosharp.shift:{seed}:{step}:{micro}:{process}:{partition}:{stream}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)


def draw_shifts(generator: torch.Generator, count: int, limit: tuple[int, int], std: float) -> torch.Tensor:
    """``[count, 2]`` integer shifts (rows, columns) in whole patches: ``round(N(0, std))``
    clipped to ``+-limit`` per axis (a limit of 0 leaves that axis unshifted)."""
    shifts = torch.round(torch.randn(count, 2, generator=generator) * std).long()
    shifts[:, 0].clamp_(-limit[0], limit[0])
    shifts[:, 1].clamp_(-limit[1], limit[1])
    return shifts


def translate_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each image's content by ``shifts[b] = (dy, dx)`` pixels: ``out[y, x] = in[y - dy, x - dx]``.

    The strip the content leaves is filled by reflection (never a constant border a model
    could key on); shifts must be smaller than the image.
    """
    pad_y, pad_x = int(shifts[:, 0].abs().max()), int(shifts[:, 1].abs().max())
    if pad_y == 0 and pad_x == 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    return torch.stack(
        [
            padded[b, :, pad_y - dy : pad_y - dy + height, pad_x - dx : pad_x - dx + width]
            for b, (dy, dx) in enumerate(shifts.tolist())
        ]
    )


def untranslate_features(features: torch.Tensor, shifts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo a translation of the input by ``shifts`` tokens: ``(maps, valid)``.

    ``maps[b, :, i, j] = features[b, :, i + dy, j + dx]`` (zero where that lies outside) and
    ``valid [B,1,h,w]`` is 1 exactly where the token's content was in the shifted view.
    """
    height, width = features.shape[-2:]
    pad_y, pad_x = int(shifts[:, 0].abs().max()), int(shifts[:, 1].abs().max())
    ones = features.new_ones((features.shape[0], 1, height, width))
    if pad_y == 0 and pad_x == 0:
        return features, ones
    padded = F.pad(features, (pad_x, pad_x, pad_y, pad_y))
    padded_ones = F.pad(ones, (pad_x, pad_x, pad_y, pad_y))
    maps, valid = [], []
    for b, (dy, dx) in enumerate(shifts.tolist()):
        rows, cols = slice(pad_y + dy, pad_y + dy + height), slice(pad_x + dx, pad_x + dx + width)
        maps.append(padded[b, :, rows, cols])
        valid.append(padded_ones[b, :, rows, cols])
    return torch.stack(maps), torch.stack(valid)


@dataclass
class ShiftedTeacherOutput(TeacherOutput):
    """A teacher's outputs of a shifted view, its features moved back; ``valid [B,1,h,w]``."""

    valid: torch.Tensor | None = None


@dataclass
class ShiftedStudentOutput(StudentOutput):
    """The student's outputs of a shifted view, its feature maps moved back; ``valid [B,1,h,w]``."""

    valid: torch.Tensor | None = None


class ShiftStep:
    """The shifts of one micro-step of a distillation: student inputs, outputs, teacher targets.

    Grids. A model's map is only exactly a translated map of the unshifted image when its
    input moved by whole tokens of that model, so each model is shifted in its own input
    frame by whole patches of its own: the student by ``d * p_s`` pixels at the partition's
    input size, a teacher by ``d * p_t`` pixels at its native size (``d * u * p_t`` at an
    upsampled teacher's ``u x`` native size: one low-res token of the teacher it lifts, so
    the teacher under the upsampler, and each of its tiles, also moves by whole tokens).
    Undoing is then an integer crop of each map, with no resampling, and each map's
    ``valid`` mask marks the tokens whose content was in view. Shifting every model in
    pixels of the dataset image instead would move a /14 teacher and a /16 student by
    fractions of their tokens: their patches would see other pixel mixtures, and the maps
    could only be moved back by interpolation, which blurs exactly the fixed-pattern noise
    the loss is about. After the undo, the teacher map (and its mask) is resized to the
    student's grid as always; the loss counts the cells the student saw whose resized
    teacher mask is 1 (every teacher token feeding them was in the teacher's view).

    The shifts of the student and of each teacher are independent draws (C-RADIOv4), per
    image, ``round(N(0, shift_std))`` patches per axis, clipped to ``max_shift`` and to a
    quarter of the model's grid so the views always overlap by at least half. The strip a
    shifted image leaves empty is filled by reflection (:func:`translate_images`).
    """

    def __init__(
        self, config: DistillLossConfig, patch_size: int, seed: int, step: int, micro: int, process: int
    ) -> None:
        self.config = config
        self.patch_size = patch_size
        self.key = (seed, step, micro, process)
        self.student_shifts: list[torch.Tensor] = []

    @classmethod
    def none(cls) -> ShiftStep:
        """A step without shifts: every method hands its input back unchanged."""
        return _NoShift()

    def _draw(self, partition: int, stream: str, count: int, grid: tuple[int, int]) -> torch.Tensor:
        limit = (min(self.config.max_shift, grid[0] // 4), min(self.config.max_shift, grid[1] // 4))
        return draw_shifts(shift_generator(*self.key, partition, stream), count, limit, self.config.shift_std)

    def student_inputs(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each partition's student images, moved by whole student patches."""
        p = self.patch_size
        self.student_shifts = [
            self._draw(i, "student", len(x), (x.shape[-2] // p, x.shape[-1] // p)) for i, x in enumerate(inputs)
        ]
        return [translate_images(x, d.to(x.device) * p) for x, d in zip(inputs, self.student_shifts)]

    def student_outputs(self, outputs: Sequence[Any]) -> list[Any]:
        """The student's feature maps moved back to the unshifted frame, with their masks."""
        moved = []
        for out, shifts in zip(outputs, self.student_shifts):
            features, valid = {}, None
            for name, maps in out.features.items():
                features[name], valid = untranslate_features(maps, shifts)
            moved.append(ShiftedStudentOutput(out.summary, features, out.backbone, valid))
        return moved

    def targets(self, call: Any, teacher_inputs: Sequence[torch.Tensor]) -> dict[int, TeacherOutput]:
        """``call.run(teacher_inputs)`` (a :class:`~radiosharp.trainers.distill.TargetCall`) with
        every image shifted by whole teacher tokens, the maps moved back, and their masks."""
        slot = call.slot
        lifted = call.upsample and slot.upsampled is not None
        size = slot.upsampled.native_size if lifted else slot.teacher.native_size
        unit = slot.teacher.patch_size * (int(slot.upsampled.factor) if lifted else 1)
        grid = size // unit
        xs, shifts = [], []
        for i in call.parts:
            x = resize(teacher_inputs[i], (size, size))
            xs.append(x)
            shifts.append(self._draw(i, f"teacher:{slot.key}", len(x), (grid, grid)))
        images, moves = torch.cat(xs), torch.cat(shifts)
        out = slot.targets(translate_images(images, moves.to(images.device) * unit), upsample=call.upsample)
        rows, cols = out.features.shape[-2:]
        if rows != cols or rows % grid:
            raise ValueError(
                f"shift_equivariant: teacher '{slot.key}' gives a {rows}x{cols} map at {size} px, not a multiple "
                f"of its {grid}x{grid} token grid (native size / patch size); its maps cannot be moved back by "
                "whole tokens. Turn distill.losses.shift_equivariant off for this recipe"
            )
        features, valid = untranslate_features(out.features, moves * (rows // grid))
        sizes = [len(x) for x in xs]
        summaries = out.summary.split(sizes) if out.summary is not None else [None] * len(xs)
        return {
            i: ShiftedTeacherOutput(s, f, v)
            for i, s, f, v in zip(call.parts, summaries, features.split(sizes), valid.split(sizes))
        }


class _NoShift(ShiftStep):
    def __init__(self) -> None:  # noqa: D107 - nothing to hold
        self.student_shifts = []

    def student_inputs(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return inputs  # type: ignore[return-value]

    def student_outputs(self, outputs: Sequence[Any]) -> list[Any]:
        return outputs  # type: ignore[return-value]

    def targets(self, call: Any, teacher_inputs: Sequence[torch.Tensor]) -> dict[int, TeacherOutput]:
        return call.run(teacher_inputs)


def begin_shift_step(trainer: Any, step: int) -> ShiftStep:
    """The :class:`ShiftStep` of ``trainer``'s next micro-step (a no-op one unless shifts are on).

    With gradient accumulation ``train_step`` runs several times per step; the micro-step
    index (counted here, from 0 at each new step, so a resumed run counts alike) keeps
    their draws apart.
    """
    config: DistillLossConfig = trainer.section.losses
    if not config.shift_equivariant:
        return ShiftStep.none()
    last, micro = getattr(trainer, "_shift_micro", (None, -1))
    micro = micro + 1 if last == step else 0
    trainer._shift_micro = (step, micro)
    process = int(getattr(trainer.accelerator, "process_index", 0))
    patch_size = getattr(trainer, "patch_size", None) or trainer.unwrapped().student.patch_size
    return ShiftStep(config, patch_size, trainer.recipe.seed, step, micro, process)
