"""What a featurizer's output gives the probes: ``(global [B,D], dense [B,D,h,w])``.

- a ``TeacherOutput``: dense = ``features``; global = ``summary``, or the mean-pooled
  features when the teacher has no summary (SAM).
- a ``StudentOutput``: dense = ``backbone`` (or a teacher's adaptor ``features[name]``
  with ``dense=name``); global = the mean-pooled backbone (``summary="backbone"``) or a
  teacher's adaptor summary (``summary=name``, e.g. the CLIP one for zero-shot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from radiosharp.contracts import StudentOutput, TeacherOutput
from radiosharp.eval.settings import EvalError

AUTO = "auto"
BACKBONE = "backbone"


def output_vectors(output: Any, dense: str = AUTO) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({summary source: global [B,D]}, dense [B,D,h,w])`` from a TeacherOutput or StudentOutput.

    Every global vector the output offers, so one pass serves every task: "auto" (the
    teacher's summary or mean-pooled features; the student's mean-pooled backbone) and,
    for a student, each adaptor summary by teacher name. ``dense`` as in ``split_output``.
    """
    if isinstance(output, TeacherOutput):
        if dense not in (AUTO, BACKBONE):
            raise EvalError(
                f"eval.dense='{dense}' selects a student adaptor head, but this featurizer is a teacher; use 'auto'"
            )
        feats = output.features
        return {AUTO: output.summary if output.summary is not None else feats.mean((2, 3))}, feats
    if isinstance(output, StudentOutput):
        if dense in (AUTO, BACKBONE):
            if output.backbone is None:
                raise EvalError(
                    "student output has no backbone features; choose eval.dense=<teacher name> "
                    f"among {sorted(output.features)}"
                )
            feats = output.backbone
        elif dense in output.features:
            feats = output.features[dense]
        else:
            raise EvalError(
                f"eval.dense='{dense}': the student has no feature head of that name; valid: "
                f"{', '.join([BACKBONE, *sorted(output.features)])}"
            )
        base = output.backbone if output.backbone is not None else feats
        return {**output.summary, AUTO: base.mean((2, 3))}, feats
    raise TypeError(f"a featurizer must return TeacherOutput or StudentOutput, got {type(output).__name__}")


def choose_summary(vectors: Mapping[str, torch.Tensor], summary: str, teacher: bool) -> torch.Tensor:
    """The global vectors of source ``summary`` among ``output_vectors``' (``teacher``: they came
    from a teacher, which only has "auto")."""
    if summary in (AUTO, BACKBONE):
        return vectors[AUTO]
    if teacher:
        raise EvalError(
            f"eval.summary='{summary}' selects a student adaptor head, but this featurizer is a teacher; use 'auto'"
        )
    if summary in vectors:
        return vectors[summary]
    raise EvalError(
        f"eval.summary='{summary}': the student has no summary head of that name; valid: "
        f"{', '.join([BACKBONE, *sorted(k for k in vectors if k != AUTO)])}"
    )


def split_output(output: Any, summary: str = AUTO, dense: str = AUTO) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global [B,D], dense [B,D,h,w])`` from a TeacherOutput or StudentOutput.

    ``summary`` / ``dense`` choose the source for a student: "auto"/"backbone" or a
    teacher name among its adaptor heads. Teachers only accept "auto".
    """
    vectors, feats = output_vectors(output, dense)
    return choose_summary(vectors, summary, isinstance(output, TeacherOutput)), feats
