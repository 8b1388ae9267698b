"""Export and re-import a trained student (``model.safetensors`` + ``model.json``).

The config stored is the student builder's options (its registry ``name`` plus the
keyword arguments, teacher dims included), so loading rebuilds the same module
through the registry and then loads the weights with ``strict=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from radiosharp.export import read_export, save_export

KIND = "student"


def save_student(run_dir: str | os.PathLike, student: nn.Module, config: Mapping[str, Any] | None = None) -> Path:
    """Write the student's weights and ``config`` (default: the config its builder recorded)."""
    if config is None:
        config = getattr(student, "config", None)
        if config is None:
            raise ValueError("save_student: this student has no recorded builder config; pass config=")
    return save_export(run_dir, student, KIND, dict(config))


def load_student(run_dir: str | os.PathLike) -> nn.Module:
    """Rebuild an exported student from ``run_dir`` and load its weights strictly (eval mode)."""
    from radiosharp.registry import STUDENTS

    _, config, state = read_export(run_dir, expect_kind=KIND)
    options = dict(config)
    name = options.pop("name", "radio")
    student = STUDENTS.build(name, f"{run_dir}/model.json", **options)
    student.load_state_dict(state, strict=True)
    return student.eval()
