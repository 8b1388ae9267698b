"""Pieces the trainers share: PHI-S per teacher, the frozen teacher stack.

A distillation builds its teachers in two passes: :func:`build_teacher_slots` makes
every teacher and its upsampled view (cheap, and where recipe mistakes show up: an
unknown name, an untrained upsampler, a missing run), then :func:`attach_phis` loads
or computes each teacher's PHI-S (expensive: it may stream images through the
teachers, all in one pass over the images). So a bad recipe fails before anything is
computed or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.api import list_upsamplers
from radiosharp.builders import build_teacher, build_upsampler
from radiosharp.contracts import Teacher, TeacherOutput
from radiosharp.images import resize
from radiosharp.recipe import Recipe, RecipeError, TeacherConfig, resolved_teacher_options


def teachers_phis(
    teachers: dict[str, tuple[TeacherConfig, Teacher]],
    recipe: Recipe,
    dataset: Any,
    run_dir: Path,
    accelerator: Any = None,
) -> dict[str, nn.Module]:
    """Each teacher's PHI-S: from ``cfg.phi_s``, else (a resumed run) from the run folder, else
    computed now over ``stats.num_images`` images, one pass over the images for all such teachers.

    Computed statistics are saved to ``run_dir/phi_s/<key>.safetensors`` so the run
    can be inspected and resumed with the same normalization. A file already there is
    read only on resume (the run wrote it); a fresh run never adopts one the recipe does
    not name (:func:`~radiosharp.engine.rundir.prepare_run_dir` refuses such a folder).
    """
    from radiosharp.engine.rundir import claim, claimed
    from radiosharp.phis import PhiS
    from radiosharp.stats import teachers_moments

    out: dict[str, nn.Module] = {}
    todo: dict[str, Teacher] = {}
    for key, (cfg, teacher) in teachers.items():
        saved = run_dir / "phi_s" / f"{key}.safetensors"
        if cfg.phi_s:
            path = Path(cfg.phi_s)
            if not path.is_file():
                raise RecipeError(
                    f"teachers.{key}.phi_s: statistics file not found: {path} "
                    f"(make it with: python -m radiosharp.stats RECIPE)"
                )
            try:
                out[key] = PhiS.load(path, expect_dim=teacher.embed_dim)
            except ValueError as err:
                raise RecipeError(f"teachers.{key}.phi_s: {err}") from None
        elif saved.is_file():
            if not recipe.resume and not claimed(saved):  # never adopted: prepare_run_dir refuses it first
                raise RecipeError(
                    f"teachers.{key}: {saved} was not written by this run; statistics already in the run "
                    f"folder are used only when the recipe names them (teachers.{key}.phi_s={saved}), "
                    "else choose another output_dir"
                )
            out[key] = PhiS.load(saved, expect_dim=teacher.embed_dim)  # this run's own, written before it stopped
        else:
            todo[key] = teacher
    if todo:
        moments = teachers_moments(
            todo,
            dataset,
            recipe.stats.num_images,
            recipe.stats.batch_size,
            recipe.stats.image_size,
            accelerator,
            desc=f"PHI-S {', '.join(todo)}",
        )
        for key, m in moments.items():
            if accelerator is None or accelerator.is_main_process:
                m.save(run_dir / "phi_s" / f"{key}.safetensors")
                claim(run_dir / "phi_s" / f"{key}.safetensors")
            out[key] = PhiS.from_moments(m)
    return {key: out[key] for key in teachers}


def teacher_phis(
    key: str, cfg: TeacherConfig, teacher: Teacher, recipe: Recipe, dataset: Any, run_dir: Path, accelerator: Any = None
) -> nn.Module:
    """One teacher's PHI-S (see :func:`teachers_phis`)."""
    return teachers_phis({key: (cfg, teacher)}, recipe, dataset, run_dir, accelerator)[key]


@dataclass
class TeacherSlot:
    """One frozen teacher of a distillation, with its optional upsampled view and PHI-S.

    ``low_res_debias``: the de-bias buffer of the teacher's upsampler run, applied to the
    teacher's own (not upsampled) features too; the buffer is the teacher's fixed
    positional artifact, which no partition should teach (FeatSharp, appendix C).
    """

    key: str
    config: TeacherConfig
    teacher: Teacher
    phi_s: nn.Module | None = None
    upsampled: nn.Module | None = None
    low_res_debias: nn.Module | None = None

    @torch.no_grad()
    def targets(self, images: torch.Tensor, upsample: bool = False) -> TeacherOutput:
        """The teacher's outputs for ``images`` (any size): at its native size, or ``u x`` that
        through its upsampler when ``upsample`` and it has one."""
        if upsample and self.upsampled is not None:
            size = self.upsampled.native_size
            return self.upsampled(resize(images, (size, size)))
        size = self.teacher.native_size
        out = self.teacher(resize(images, (size, size)))
        if self.low_res_debias is not None:
            out = TeacherOutput(out.summary, self.low_res_debias(out.features))
        return out

    def modules_to_place(self) -> list[nn.Module]:
        return [m for m in (self.teacher, self.upsampled, self.phi_s) if m is not None]


def check_same_teacher(key: str, cfg: TeacherConfig, run: str) -> None:
    """An upsampler run must have been trained on the very teacher it lifts."""
    from radiosharp.export import read_export_meta

    try:
        config = read_export_meta(run, expect_kind="upsampler").config
    except FileNotFoundError as err:
        raise RecipeError(f"teachers.{key}.upsampler: {err}") from None
    except ValueError as err:
        raise RecipeError(f"teachers.{key}.upsampler: {err} (point it at a kind: upsampler run)") from None
    trained = config.get("teacher")
    if not trained:
        return
    ours, theirs = resolved_teacher_options(cfg), resolved_teacher_options(trained)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise RecipeError(
            f"teachers.{key}.upsampler: {run} was trained for another teacher ({detail}); "
            f"train one for this teacher or make teachers.{key} match"
        )


def build_upsampled(key: str, cfg: TeacherConfig, teacher: Teacher, untrained: bool = False) -> nn.Module | None:
    """The teacher's upsampled view for hi-res partitions (None when it has no upsampler).

    ``untrained``: build a trainable upsampler named without a run (FeatUp, FeatSharp)
    with its initial weights. Only for measuring cost (``bench train``): an untrained
    upsampler would teach noise.
    """
    up = cfg.upsampler
    if up is None:
        return None
    from radiosharp.upsampled import UpsampledTeacher, load_upsampled_teacher

    if up.run is not None:
        check_same_teacher(key, cfg, up.run)
        try:
            model = load_upsampled_teacher(up.run, teacher=teacher, max_memory_mb=cfg.max_memory_mb)
        except ValueError as err:
            raise RecipeError(f"teachers.{key}.upsampler: {err}") from None
        if up.factor is not None and model.factor != up.factor:
            raise RecipeError(
                f"teachers.{key}.upsampler.factor={up.factor} but {up.run} was trained at {model.factor}x"
            )
    else:
        upsampler = build_upsampler(
            up, f"teachers.{key}.upsampler", factor=up.factor or 2, dim=teacher.embed_dim, patch_size=teacher.patch_size
        )
        if upsampler.trainable and not untrained:
            raise RecipeError(
                f"teachers.{key}.upsampler: '{up.name}' must be trained first (python -m radiosharp.train with "
                f"kind: upsampler); point teachers.{key}.upsampler at its run folder (e.g. "
                f"runs/{up.name}_{key}_{up.factor or 2}x), or use one of the training-free upsamplers: "
                f"{', '.join(list_upsamplers(trainable=False))}"
            )
        model = UpsampledTeacher(teacher, upsampler, max_memory_mb=cfg.max_memory_mb)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_teacher_slots(recipe: Recipe, untrained_upsamplers: bool = False) -> dict[str, TeacherSlot]:
    """Every teacher of the recipe with its upsampled view; PHI-S not yet attached
    (``untrained_upsamplers``: see :func:`build_upsampled`)."""
    slots = {}
    for key, cfg in recipe.teachers.items():
        try:
            teacher = build_teacher(cfg, f"teachers.{key}")
        except RecipeError:
            raise
        except ValueError as err:  # a builder's own option check (a bad size, native_size, ...)
            raise RecipeError(f"teachers.{key}: {err}") from None
        upsampled = build_upsampled(key, cfg, teacher, untrained=untrained_upsamplers)
        slots[key] = TeacherSlot(key, cfg, teacher, upsampled=upsampled)
    return slots


def attach_phis(
    slots: dict[str, TeacherSlot], recipe: Recipe, dataset: Any, run_dir: Path, accelerator: Any = None
) -> None:
    phis = teachers_phis(
        {key: (slot.config, slot.teacher) for key, slot in slots.items()}, recipe, dataset, run_dir, accelerator
    )
    for key, slot in slots.items():
        slot.phi_s = phis[key]
