"""``kind: distill``: train the RADIO student from frozen (optionally upsampled) teachers.

Each step draws one global batch and splits it between the resolution partitions
of the ``distill`` section (e.g. 432 px and 1024 px), each with its own share of the
batch. Teachers see every image at their native size; in a partition with
``upsample: true`` a teacher with an ``upsampler`` lifts its features first (an
exported upsampler run, or a training-free one: bilinear, s2, tiles). A teacher map
whose grid still differs from the student's is then resized to the student's grid.
A partition's student input size can also be drawn per step from a set (``sizes``), be
non-square (``[H, W]``, ``aspect_ratios``) or a mosaic of the batch's images
(``mosaic``); the teachers then see the same (cropped or composed) image
(:mod:`radiosharp.trainers.resolution`).

Loss per partition and teacher: ``summary_weight * (1 - cos)`` on the summary
(teachers that have one; SAM has none) plus ``feature_weight * MSE`` of the features
in that teacher's PHI-S space. A partition's loss is weighted by its share of the
batch, so the total is the per-image mean however the batch is split. A teacher with
``partitions: [...]`` teaches only there (SAM only at 1024 px, say). ``distill.losses``
adds, off by default, a shift-equivariant feature loss, an angle-balanced summary loss,
teacher-loss balancing and heads trained in PHI-S space
(:mod:`radiosharp.trainers.distill_losses`).

Stages chain with ``init_from: runs/<previous stage>`` (an exported student with the
same backbone and teachers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.builders import build_dataset, build_student
from radiosharp.contracts import TeacherOutput
from radiosharp.engine.trainer import Trainer
from radiosharp.images import resize
from radiosharp.phis import PhiS
from radiosharp.recipe import Recipe, RecipeError
from radiosharp.trainers.common import TeacherSlot, attach_phis, build_teacher_slots
from radiosharp.trainers.distill_config import DistillConfig, PartitionConfig, parse_section
from radiosharp.trainers.distill_losses import (
    angle_balanced_summary_loss,
    balance_weights,
    begin_shift_step,
    check_init_feature_space,
    masked_feature_loss,
)
from radiosharp.trainers.resolution import check_partition_sizes, draw_generator, partition_inputs, plan_partition

# the section's schema lives in distill_config; its names stay importable from here
__all__ = ["DistillConfig", "DistillTrainer", "PartitionConfig", "fill_batch", "parse_section", "run"]


def fill_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Top a micro-batch shortened by unreadable samples back up by repeating its good ones.

    Every partition then gets its full share, so no partition's loss is taken over an
    empty slice (a NaN) and every process builds the same graph (DDP stays in step).
    """
    if len(images) >= size:
        return images
    return images[torch.arange(size) % len(images)]


class MultiPartitionStudent(nn.Module):
    """Runs the student on every partition's images in one forward (one DDP call per step)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: list[torch.Tensor]) -> list[Any]:
        return [self.student(x) for x in images]


def summary_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between student and teacher summaries (scale-free, so no PHI-S)."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def feature_loss(pred: torch.Tensor, target: torch.Tensor, phi_s: PhiS) -> torch.Tensor:
    """MSE in PHI-S space; a teacher map on another grid is resized to the student's first.

    PHI-S is a rotation scaled by ``eigenvalue_mean ** -0.5`` after centring, so the MSE
    between two normalized maps is the raw MSE divided by ``eigenvalue_mean``: no C x C
    matmul over the maps is needed (``test_phis`` checks the identity).
    """
    if target.shape[-2:] != pred.shape[-2:]:
        target = resize(target.float(), tuple(pred.shape[-2:]))
    return F.mse_loss(pred.float(), target.float()) / phi_s.eigenvalue_mean


def check_init_compatible(student: nn.Module, previous: nn.Module, source: str) -> None:
    """``init_from`` must hold a student with exactly our parameters (names and shapes)."""
    ours, theirs = student.state_dict(), previous.state_dict()
    only = sorted(set(ours) ^ set(theirs))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k].shape != theirs[k].shape)
    if only or shapes:
        parts = []
        if only:
            parts.append(f"keys on one side only: {only[:4]}{' ...' if len(only) > 4 else ''}")
        if shapes:
            parts.append(
                "shapes differ: "
                + ", ".join(f"{k} {tuple(theirs[k].shape)} there, {tuple(ours[k].shape)} here" for k in shapes[:3])
            )
        raise RecipeError(
            f"init_from {source}: its student does not match this recipe's student "
            f"(same backbone, size and teachers needed); {'; '.join(parts)}"
        )
    ours_order = list(getattr(student, "teacher_names", []))
    theirs_order = list(getattr(previous, "teacher_names", []))
    if ours_order != theirs_order:
        # summary token i feeds teacher i's head: a reordered list would load silently but wrongly
        raise RecipeError(
            f"init_from {source}: its student learned teachers {theirs_order} in that order; "
            f"this recipe lists {ours_order}. List the teachers in the same order"
        )


@dataclass
class TargetCall:
    """One batched call of a teacher (upsampled or not) serving several partitions."""

    slot: TeacherSlot
    upsample: bool
    parts: list[int]  # indices of the partitions it serves, in order

    def run(self, slices: list[torch.Tensor]) -> dict[int, TeacherOutput]:
        """The targets of each served partition's images, from one teacher call per image size
        (one call unless a partition's input geometry (aspect crop, mosaic) changed its size)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in self.parts:
            groups.setdefault(tuple(slices[i].shape[-2:]), []).append(i)
        targets: dict[int, TeacherOutput] = {}
        for parts in groups.values():
            xs = [slices[i] for i in parts]
            out = self.slot.targets(torch.cat(xs) if len(xs) > 1 else xs[0], upsample=self.upsample)
            sizes = [len(x) for x in xs]
            summaries = out.summary.split(sizes) if out.summary is not None else [None] * len(xs)
            targets.update({i: TeacherOutput(s, f) for i, s, f in zip(parts, summaries, out.features.split(sizes))})
        return targets


def plan_target_calls(stack: dict[str, TeacherSlot], partitions: list[PartitionConfig]) -> list[TargetCall]:
    """One call per teacher and input kind (native, or through its upsampler).

    Partitions are slices of one batch of images and a teacher resizes its input to its
    own size, so every partition that asks a teacher for the same kind of target can be
    served by one batched call (teachers are frozen, in eval mode: samples do not mix).
    """
    calls: dict[tuple[str, bool], TargetCall] = {}
    for slot in stack.values():
        for index, part in enumerate(partitions):
            if slot.config.partitions is not None and part.name not in slot.config.partitions:
                continue
            upsample = part.upsample and slot.upsampled is not None
            calls.setdefault((slot.key, upsample), TargetCall(slot, upsample, [])).parts.append(index)
    return list(calls.values())


class DistillTrainer(Trainer):
    kind = "distill"
    # Every parameter gets a gradient on every step: each partition has images on every
    # process (batch sizes divisible by processes x grad_accum) and every teacher teaches in
    # at least one partition (parse_section), so each adaptor head is always used. DDP's
    # search for unused parameters would only cost a graph traversal per step.
    find_unused_parameters = False
    # Set by `bench train` only: FeatUp / FeatSharp named without a run are built untrained.
    untrained_upsamplers = False

    def build(self) -> None:
        recipe = self.recipe
        self.section = parse_section(recipe)
        # Everything that can be wrong with the recipe is checked before PHI-S statistics
        # are computed (and written to the run folder).
        self.stack = build_teacher_slots(recipe, self.untrained_upsamplers)
        dims = {
            key: {"summary_dim": t.teacher.summary_dim, "feature_dim": t.teacher.embed_dim}
            for key, t in self.stack.items()
        }
        try:
            student = build_student(recipe.student, teachers=dims)
        except RecipeError:
            raise
        except ValueError as err:
            raise RecipeError(f"student: {err}") from None
        for part in self.section.partitions:
            try:
                check_partition_sizes(part, student.patch_size)
            except ValueError as err:  # "size: ..." / "sizes: ..."
                raise RecipeError(f"distill.partitions[{part.name}].{err}") from None
        self.patch_size = student.patch_size
        if recipe.init_from and not recipe.resume:  # a resumed run takes its weights from its checkpoint
            from radiosharp.student_io import load_student

            try:
                previous = load_student(recipe.init_from)
            except ValueError as err:  # e.g. an upsampler run where a student run belongs
                raise RecipeError(f"init_from: {err}") from None
            check_init_compatible(student, previous, recipe.init_from)
            check_init_feature_space(previous, self.section.losses.feature_space, recipe.init_from)
            student.load_state_dict(previous.state_dict(), strict=True)
        scale = self.accelerator.num_processes * recipe.train.grad_accum
        bad = [p.name for p in self.section.partitions if p.batch_size % scale]
        if bad:
            raise RecipeError(
                f"distill partitions {bad}: each batch_size must be divisible by processes x train.grad_accum = {scale}"
            )
        self.local_sizes = [p.batch_size // scale for p in self.section.partitions]
        self.shares = [p.batch_size / recipe.train.batch_size for p in self.section.partitions]
        if self.section.debias_low_res:
            for slot in self.stack.values():
                slot.low_res_debias = getattr(slot.upsampled, "debias", None)
        try:
            self.dataset = build_dataset(recipe.data)
        except ValueError as err:
            raise RecipeError(f"data: {err}") from None
        attach_phis(self.stack, recipe, self.dataset, self.run_dir, self.accelerator)
        self.student_config = dict(
            getattr(student, "build_config", None) or {**recipe.student.build_config(), "teachers": dims}
        )
        self.model = MultiPartitionStudent(student)
        self.frozen = [m for t in self.stack.values() for m in t.modules_to_place()]
        self.target_calls = plan_target_calls(self.stack, self.section.partitions)

    def teachers_of(self, part: PartitionConfig) -> list[TeacherSlot]:
        return [t for t in self.stack.values() if t.config.partitions is None or part.name in t.config.partitions]

    def partition_loss(
        self, part: PartitionConfig, out: Any, targets: dict[str, TeacherOutput]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One partition's weighted feature + summary losses over its teachers, and their values.

        ``distill.losses`` (:mod:`radiosharp.trainers.distill_losses`) can mask the feature
        loss to the cells every shifted view saw, take it in PHI-S space, balance the
        summaries by angle and the teachers' terms against each other (weights logged as
        ``<partition>/<teacher>/balance_weight``); its defaults leave this loss as it was.
        """
        losses = self.section.losses
        several = self.accelerator.num_processes > 1
        total = torch.zeros((), dtype=torch.float32, device=out.backbone.device)
        metrics: dict[str, torch.Tensor] = {}
        terms: dict[str, torch.Tensor] = {}
        for t in self.teachers_of(part):
            target = targets[t.key]
            if losses.plain_features:
                loss_f = feature_loss(out.features[t.key], target.features, t.phi_s)
            else:
                loss_f = masked_feature_loss(
                    out.features[t.key],
                    target.features,
                    t.phi_s,
                    losses.feature_space,
                    getattr(out, "valid", None),
                    getattr(target, "valid", None),
                )
            loss = t.config.feature_weight * loss_f
            metrics[f"{part.name}/{t.key}/features"] = loss_f.detach()
            if target.summary is not None and t.key in out.summary:
                if losses.summary == "cosine":
                    loss_s = summary_loss(out.summary[t.key], target.summary)
                else:
                    gather = self.accelerator.gather if several else None
                    loss_s, scale = angle_balanced_summary_loss(out.summary[t.key], target.summary, gather)
                    metrics[f"{part.name}/{t.key}/summary_scale"] = scale
                loss = loss + t.config.summary_weight * loss_s
                metrics[f"{part.name}/{t.key}/summary"] = loss_s.detach()
            terms[t.key] = loss
        if losses.balance == "none":
            for loss in terms.values():
                total = total + loss
            return total, metrics
        reduce = (lambda v: self.accelerator.reduce(v, "mean")) if several else None
        for key, weight in balance_weights(terms, reduce).items():
            total = total + weight * terms[key]
            metrics[f"{part.name}/{key}/balance_weight"] = weight
        return total, metrics

    def partition_inputs(self, index: int, images: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(student input, teacher input)`` of partition ``index`` at ``step``: its drawn size,
        aspect and mosaic (:mod:`radiosharp.trainers.resolution`), the same on every process."""
        part, seed = self.section.partitions[index], self.recipe.seed
        plan = plan_partition(part, self.patch_size, seed, step, index)
        tiles = draw_generator(seed, step, index, "tiles") if plan.mosaic > 1 else None
        return partition_inputs(images, plan, tiles)

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        acc = self.accelerator
        images = fill_batch(batch["image"], sum(self.local_sizes)).to(acc.device)
        slices = list(images.split(self.local_sizes))
        inputs = [self.partition_inputs(index, x, step) for index, x in enumerate(slices)]
        shift = begin_shift_step(self, step)  # identities unless distill.losses.shift_equivariant
        outputs = shift.student_outputs(self.model(shift.student_inputs([s for s, _ in inputs])))
        teacher_inputs = [teacher_input for _, teacher_input in inputs]
        targets: list[dict[str, TeacherOutput]] = [{} for _ in slices]
        for call in self.target_calls:
            for index, target in shift.targets(call, teacher_inputs).items():
                targets[index][call.slot.key] = target
        total = images.new_zeros((), dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for part, share, out, part_targets in zip(self.section.partitions, self.shares, outputs, targets):
            part_loss, part_metrics = self.partition_loss(part, out, part_targets)
            metrics.update(part_metrics)
            total = total + share * part_loss
        return total, metrics

    def export(self) -> None:
        from radiosharp.student_io import save_student

        save_student(
            self.run_dir,
            self.exported_model().student,
            self.student_config,
            teacher_configs={key: t.config for key, t in self.stack.items()},
            # heads trained in PHI-S space: the export maps them back to each teacher's own space
            feature_normalizers=(
                {key: t.phi_s for key, t in self.stack.items()}
                if self.section.losses.feature_space == "phi_s"
                else None
            ),
        )


def run(recipe: Recipe) -> Path:
    return DistillTrainer(recipe).run()
