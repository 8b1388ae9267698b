"""Optional losses and teacher balancing of ``kind: distill`` (the ``distill.losses`` section).

Every option is off by default, and with the defaults the trainer computes exactly the
loss it always did (``summary_loss`` + ``feature_loss`` of :mod:`radiosharp.trainers.distill`).

``shift_equivariant: true`` -- shift-equivariant feature loss (C-RADIOv4, section 2.3): the
    student and every teacher see the image under their own random translation, undone before
    the loss (:mod:`radiosharp.trainers.shift_equivariant`).

``summary: angle_balanced`` -- the summary loss of each teacher is the angle (radians)
    between the student's and the teacher's summary, divided by that teacher's angular
    dispersion: the mean angle between two images' summaries of the teacher (over the
    step's batch, across processes). The C-RADIOv4 report says its balanced summary loss
    uses angles so that a teacher whose summaries sit in a narrow cone (SigLIP2) weighs as
    much as one whose summaries spread wide; the exact formula could not be found, so this
    is our own, well-motivated version: a student that always answers the teacher's mean
    direction scores about the same (~0.7) for every teacher, a narrow cone or a wide one.
    ``(1 - cos)`` instead is roughly ``angle**2 / 2``, so a teacher whose cone is ten times
    narrower weighs a hundred times less.

``balance: equal`` -- teacher-loss balancing (RADIO Amplified names "improved balancing
    of teacher loss functions"; its formula is not given in what we could find). Ours:
    in each partition, teacher ``t``'s term ``L_t`` (its weighted feature + summary loss)
    is multiplied by ``w_t = mean_k(L_k) / L_t``, computed without gradient from the
    current step (averaged over processes). Every teacher then contributes the same value,
    the total keeps its value (``sum_t w_t L_t = sum_t L_t``), and the gradient is
    ``mean_k(L_k) * grad(log L_t)``: each teacher's *relative* progress counts the same,
    whatever the scale of its loss. Weights are capped at 1000 (a term near zero).
    Stateless, so a resumed run computes exactly the weights the uninterrupted run did.

``feature_space: phi_s`` -- the student's feature heads predict each teacher's PHI-S
    normalized features (well conditioned, every channel of unit variance) instead of the
    teacher's raw ones, and the export stores each teacher's PHI-S so that
    ``load_student(run)`` maps the heads back to the teacher's own space (PHI-S inverse);
    ``load_student(run, normalized=True)`` gives the PHI-S space. The loss value is the
    same as with ``raw`` (raw MSE / mean eigenvalue is the PHI-S MSE), only the target the
    heads learn changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.images import resize
from radiosharp.recipe import RecipeError
from radiosharp.trainers.distill_config import DistillLossConfig
from radiosharp.trainers.shift_equivariant import (
    ShiftedStudentOutput,
    ShiftedTeacherOutput,
    ShiftStep,
    begin_shift_step,
    draw_shifts,
    shift_generator,
    translate_images,
    untranslate_features,
)

log = logging.getLogger(__name__)

__all__ = [
    "DistillLossConfig",
    "ShiftStep",
    "ShiftedStudentOutput",
    "ShiftedTeacherOutput",
    "angle_balanced_summary_loss",
    "angular_dispersion",
    "balance_weights",
    "begin_shift_step",
    "check_init_feature_space",
    "draw_shifts",
    "masked_feature_loss",
    "shift_generator",
    "summary_angles",
    "translate_images",
    "untranslate_features",
]

MAX_BALANCE_WEIGHT = 1000.0
# A student map cell counts as seen by a teacher when its resized validity is (almost) 1.
_VALID = 1 - 1e-4


# ----------------------------------------------------------------------------- features


def masked_feature_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    phi_s: nn.Module,
    space: str = "raw",
    pred_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The feature MSE in PHI-S space, over the cells both maps saw.

    ``space="raw"``: ``pred`` is in the teacher's raw space (the MSE is divided by the mean
    eigenvalue, as ``feature_loss``); ``"phi_s"``: ``pred`` is PHI-S normalized and the
    target is normalized before the MSE. A target on another grid is resized (with its
    mask) to ``pred``'s grid; without masks this is the plain mean over every cell.
    """
    target = target.float()
    if space == "phi_s":
        target = phi_s(target)  # per-cell affine: commutes with the resize below
    grid = tuple(pred.shape[-2:])
    if target.shape[-2:] != pred.shape[-2:]:
        target = resize(target, grid)
        if target_valid is not None:
            target_valid = resize(target_valid.float(), grid)
    squared = (pred.float() - target) ** 2
    if pred_valid is None and target_valid is None:
        mse = squared.mean()
    else:
        valid = torch.ones_like(squared[:, :1])
        if pred_valid is not None:
            valid = valid * pred_valid.float()
        if target_valid is not None:
            valid = valid * (target_valid >= _VALID).float()
        mse = (squared * valid).sum() / (valid.sum() * squared.shape[1]).clamp_min(1)
    return mse / phi_s.eigenvalue_mean if space == "raw" else mse


# ----------------------------------------------------------------------------- summaries


def summary_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angles in radians ``[B]`` between paired summaries (clamped off +-1 so the gradient stays finite)."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1)
    return torch.arccos(cos.clamp(-1 + 1e-6, 1 - 1e-6))


def angular_dispersion(summaries: torch.Tensor) -> torch.Tensor:
    """The mean angle between two different rows of ``summaries [N,D]`` (pi/2 for N < 2:
    the angle of two independent directions in many dimensions)."""
    n = summaries.shape[0]
    if n < 2:
        return summaries.new_tensor(math.pi / 2, dtype=torch.float32)
    unit = F.normalize(summaries.float(), dim=-1)
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    upper = torch.triu_indices(n, n, offset=1, device=cos.device)
    return torch.arccos(cos[upper[0], upper[1]]).mean()


def angle_balanced_summary_loss(
    pred: torch.Tensor, target: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean angle(pred, target) / dispersion, 1 / dispersion)`` for one teacher.

    The dispersion (:func:`angular_dispersion` of the teacher's summaries, without
    gradient; over every process's batch when ``gather`` is given) is floored at 1e-4 rad.
    """
    with torch.no_grad():
        reference = target.detach().float()
        if gather is not None:
            reference = gather(reference)
        scale = 1.0 / angular_dispersion(reference).clamp_min(1e-4)
    return summary_angles(pred, target).mean() * scale, scale


# ----------------------------------------------------------------------------- balancing


def balance_weights(
    terms: Mapping[str, torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Per-teacher weights ``mean_k(L_k) / L_t`` (no gradient) that make every term equal.

    ``reduce`` (a mean over processes) makes every process use the same weights. A term
    below 1/1000 of the mean gets the cap weight 1000; terms all zero get weight 1.
    """
    with torch.no_grad():
        values = torch.stack([v.detach().float() for v in terms.values()])
        if reduce is not None:
            values = reduce(values)
        mean = values.mean()
        if not mean > 0:
            weights = torch.ones_like(values)
        else:
            weights = mean / values.clamp_min(mean / MAX_BALANCE_WEIGHT)
    return dict(zip(terms, weights.unbind()))


# ----------------------------------------------------------------------------- stages


def check_init_feature_space(previous: nn.Module, space: str, source: str) -> None:
    """``init_from`` must hold a student whose heads predict the space this recipe trains."""
    theirs = getattr(previous, "feature_space", "raw")
    if theirs != space:
        raise RecipeError(
            f"init_from {source}: its feature heads predict the '{theirs}' feature space, this recipe trains "
            f"distill.losses.feature_space={space}; set distill.losses.feature_space={theirs} (valid: raw, phi_s)"
        )
