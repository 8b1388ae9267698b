"""Export and re-import a trained student (``model.safetensors`` + ``model.json``).

The config stored is the student builder's options (its registry ``name`` plus the
keyword arguments, teacher dims included), so loading rebuilds the same module
through the registry and then loads the weights with ``strict=True``.

Optionally the config also holds ``teacher_configs``: each teacher's build config
(``{"family": ..., **builder options}``, no weights). With them,
``load_student(run, text_towers=True)`` rebuilds the text towers of the CLIP-like
teachers built with ``text: true`` and hands them to the student
(``student.text_towers``), so zero-shot classification runs on the student's
adaptor summaries. Exports never carry teacher weights: the towers come from the
teachers' own weights files / pretrained tags at load time.

A student trained with ``distill.losses.feature_space: phi_s`` has feature heads that
predict each teacher's PHI-S normalized features. Its export stores every teacher's PHI-S
(``feature_normalizers.<teacher>.<buffer>`` tensors in ``model.safetensors``, and
``"feature_space": "phi_s"`` in the config), and :func:`load_student` maps the heads back
to each teacher's own space by default (the PHI-S inverse ``x = U H^T y / alpha + mu``),
or leaves them normalized with ``normalized=True``. An export of heads trained on raw
features (the default) stores none: its heads already predict the teachers' own space.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.export import read_export, save_export
from radiosharp.phis import PhiS
from radiosharp.recipe import TeacherConfig

KIND = "student"
TEACHER_CONFIGS = "teacher_configs"
FEATURE_SPACE = "feature_space"
NORMALIZERS = "feature_normalizers"
_NORMALIZER_BUFFERS = ("mu", "rotation", "inverse_rotation", "eigenvalue_mean")
# Recipe keys of a teacher that say how the student learns from it, not how to build it.
TRAINING_KEYS = tuple(k for k in TeacherConfig.model_fields if k != "family")


def teacher_build_config(cfg: Any, where: str = "teacher") -> dict[str, Any]:
    """``{"family": ..., **builder options}`` of a recipe teacher (a TeacherConfig or a mapping)."""
    if hasattr(cfg, "model_dump"):
        cfg = cfg.model_dump()
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("family"), str):
        raise ValueError(f"{where}: a teacher config needs its 'family' (a registered teacher name), got {cfg!r}")
    return {k: v for k, v in cfg.items() if k not in TRAINING_KEYS}


def save_student(
    run_dir: str | os.PathLike,
    student: nn.Module,
    config: Mapping[str, Any] | None = None,
    teacher_configs: Mapping[str, Any] | None = None,
    feature_normalizers: Mapping[str, PhiS] | None = None,
) -> Path:
    """Write the student's weights and ``config`` (default: the config its builder recorded).

    ``teacher_configs``: ``{teacher name: its recipe config}`` (training-only keys are
    dropped), stored so that :func:`load_student` can rebuild the teachers' text towers;
    by default the ones the student was loaded with, if any.
    ``feature_normalizers``: ``{teacher name: its PhiS}`` for heads that predict PHI-S
    normalized features (``feature_space: phi_s``), stored so that :func:`load_student`
    returns features in each teacher's own space; by default the ones the student was
    loaded with, if any.
    """
    if config is None:
        config = getattr(student, "build_config", None)
        if config is None:
            raise ValueError("save_student: this student has no recorded builder config; pass config=")
    config = dict(config)
    if teacher_configs is None:
        teacher_configs = getattr(student, "teacher_configs", None)
    if teacher_configs:
        config[TEACHER_CONFIGS] = {
            name: teacher_build_config(cfg, f"save_student: teacher '{name}'") for name, cfg in teacher_configs.items()
        }
    if feature_normalizers is None:
        feature_normalizers = getattr(student, NORMALIZERS, None)
    extra = None
    if feature_normalizers:
        heads = set(getattr(student, "teacher_names", feature_normalizers))
        unknown = sorted(set(feature_normalizers) - heads)
        if unknown:
            raise ValueError(f"save_student: feature normalizers for {unknown}, but the student has no such heads")
        config[FEATURE_SPACE] = "phi_s"
        config[NORMALIZERS] = sorted(feature_normalizers)
        extra = {
            f"{NORMALIZERS}.{name}.{buffer}": getattr(phi, buffer).detach()
            for name, phi in feature_normalizers.items()
            for buffer in _NORMALIZER_BUFFERS
        }
    return save_export(run_dir, student, KIND, config, extra=extra)


def _normalizers_from_state(state: dict[str, torch.Tensor], names: Sequence[str], where: str) -> dict[str, PhiS]:
    """Take each teacher's PHI-S tensors out of an export's ``state`` (in place)."""
    normalizers = {}
    for name in names:
        keys = {buffer: f"{NORMALIZERS}.{name}.{buffer}" for buffer in _NORMALIZER_BUFFERS}
        missing = [key for key in keys.values() if key not in state]
        if missing:
            raise ValueError(f"{where}: feature normalizer of '{name}' is incomplete (missing {', '.join(missing)})")
        phi = PhiS(int(state[keys["mu"]].shape[0]))
        phi.load_state_dict({buffer: state.pop(key) for buffer, key in keys.items()}, strict=True)
        normalizers[name] = phi.eval()
    return normalizers


def _heads_to_teacher_space(module: nn.Module, _inputs: Any, output: Any) -> Any:
    """Forward hook: each normalized feature head's map through its teacher's PHI-S inverse."""
    for name, phi in module.feature_normalizers.items():
        if name in output.features:
            maps = output.features[name]
            output.features[name] = phi.to(maps.device).inverse(maps).to(maps.dtype)
    return output


def attach_feature_normalizers(student: nn.Module, normalizers: Mapping[str, PhiS], normalized: bool = False) -> None:
    """Record the heads' PHI-S on ``student``; unless ``normalized``, its forward then returns each
    of those teachers' features in the teacher's own space (a forward hook; no weights change)."""
    student.feature_space = "phi_s"
    student.feature_normalizers = dict(normalizers)  # a plain dict: not part of the state dict
    student.normalized_features = normalized
    if not normalized:
        student.register_forward_hook(_heads_to_teacher_space)


def text_capable_families() -> list[str]:
    """Teacher families whose builder can build the text tower alone (``builder.build_text_tower``)."""
    from radiosharp.registry import TEACHERS

    return [name for name in TEACHERS.names() if callable(getattr(TEACHERS.get(name), "build_text_tower", None))]


def build_text_towers(
    teacher_configs: Mapping[str, Mapping[str, Any]], names: bool | str | Sequence[str] = True, where: str = "student"
) -> dict[str, nn.Module]:
    """Text towers of the named teachers (``True``: those stored with ``text: true``).

    Each is built by its family's ``build_text_tower(**the teacher's options)``, found
    through the registry; no vision tower is built.
    """
    from radiosharp.registry import TEACHERS

    if names is True:
        names = [name for name, cfg in teacher_configs.items() if cfg.get("text")]
    elif isinstance(names, str):
        names = [names]
    towers: dict[str, nn.Module] = {}
    for name in names or ():
        if name not in teacher_configs:
            stored = ", ".join(teacher_configs) or "(none: export it with save_student(..., teacher_configs=))"
            raise ValueError(f"{where}: no teacher config for '{name}' to build a text tower from; stored: {stored}")
        options = dict(teacher_configs[name])
        family = options.pop("family")
        build_text = getattr(TEACHERS.get(family, f"{where}.{TEACHER_CONFIGS}.{name}"), "build_text_tower", None)
        if not callable(build_text):
            raise ValueError(
                f"{where}: teacher '{name}' (family '{family}') has no text tower; families with one: "
                f"{', '.join(text_capable_families()) or '(none)'}"
            )
        TEACHERS.check_options(family, options, f"{where}.{TEACHER_CONFIGS}.{name}")
        towers[name] = build_text(**options)
    return towers


def load_student(
    run_dir: str | os.PathLike, text_towers: bool | str | Sequence[str] = False, normalized: bool = False
) -> nn.Module:
    """Rebuild an exported student from ``run_dir`` and load its weights strictly (eval mode).

    ``text_towers``: ``True`` attaches the text towers of the stored teachers built with
    ``text: true`` (none when the export names none: zero-shot then skips); a teacher
    name or list of names attaches those (their family must have a text tower).
    Weights that are not finite are refused (ValueError naming the file and the tensor).
    Features come in each teacher's own space. For heads trained in PHI-S space
    (``feature_space: phi_s``) the stored PHI-S inverse maps them there;
    ``normalized=True`` keeps them PHI-S normalized (only such exports have that space).
    """
    from radiosharp.registry import STUDENTS

    _, config, state = read_export(run_dir, expect_kind=KIND)
    options = dict(config)
    name = options.pop("name", "radio")
    teacher_configs = options.pop(TEACHER_CONFIGS, None) or {}
    where = f"{run_dir}/model.json"
    space = options.pop(FEATURE_SPACE, "raw")
    names = options.pop(NORMALIZERS, None) or []
    if space not in ("raw", "phi_s"):
        raise ValueError(f"{where}: unknown feature_space '{space}'; valid: raw, phi_s")
    if normalized and space != "phi_s":
        raise ValueError(
            f"{run_dir}: its feature heads predict the teachers' raw features and it stores no PHI-S, "
            "so there is no normalized space to return; load it with normalized=False"
        )
    normalizers = _normalizers_from_state(state, names, where) if space == "phi_s" else {}
    student = STUDENTS.build(name, where, **options)
    student.load_state_dict(state, strict=True)
    student.teacher_configs = teacher_configs
    if space == "phi_s":
        attach_feature_normalizers(student, normalizers, normalized)
    if text_towers:
        towers = build_text_towers(teacher_configs, text_towers, where)
        if towers:
            attach = getattr(student, "attach_text_towers", None)
            if not callable(attach):
                raise ValueError(f"{where}: a '{name}' student cannot take text towers (no attach_text_towers)")
            attach(towers)
    return student.eval()
