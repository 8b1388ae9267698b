"""A teacher plus its upsampler, seen by the rest of the system as one teacher at ``u x``.

``UpsampledTeacher(teacher, upsampler, debias, phi_s)`` takes images whose sides are
multiples of ``u * patch_size`` and returns features on the ``u x`` finer grid::

    global view = images resized to (H/u, W/u)          (the teacher's own input)
    featurize(x) = phi_s(debias(teacher(x).features))   (de-biased, PHI-S normalized)
    features     = phi_s.inverse(upsampler(images, featurize(global view), featurize))
    summary      = teacher(global view).summary

The frozen teacher is held OUTSIDE the module tree: it is not in ``parameters()``
(optimizers and DDP see only the upsampler and the de-bias buffer), not in
``state_dict()`` (exports never carry teacher weights; the teacher is rebuilt from
its config), yet ``.to()/.cuda()/.half()`` move it along, and ``train()`` never
takes it out of eval mode. PHI-S (any module with ``forward(NCHW)`` and
``inverse(NCHW)``, e.g. ``radiosharp.phis.PhiS``) is a frozen submodule, so its
statistics travel with the export.

Bounded memory: ``UpsampledTeacher(..., max_memory_mb=M)`` (or the attribute of that name, or the
environment variable ``RADIOSHARP_MAX_MEMORY_MB`` when the argument is not given) runs the
upsampler of every no-grad call through the upsampler's ``bounded_forward`` (:mod:`upsamplers._chunked`): the same
output, computed in tiles or query chunks whose working memory fits ``M`` MiB (the chunk size is
derived from ``M``, see :mod:`upsamplers._chunked`). The global view then goes through the teacher
on its own and the tiles of tile upsamplers ``tile_batch`` at a time (default 1), instead of in one
teacher call with the global view. Under autograd (training) the unbounded call runs: training
bounds its memory with the upsamplers' ``checkpoint_activations`` option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radiosharp.contracts import Teacher, TeacherOutput, check_image_size
from radiosharp.export import read_export, save_export
from radiosharp.images import resize

EXPORT_KIND = "upsampler"
MAX_MEMORY_ENV = "RADIOSHARP_MAX_MEMORY_MB"


def _env_budget() -> float | None:
    value = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if not value:
        return None
    try:
        budget = float(value)
    except ValueError:
        raise ValueError(f"{MAX_MEMORY_ENV}={value!r}: expected a number of MiB") from None
    if budget <= 0:
        raise ValueError(f"{MAX_MEMORY_ENV}={value!r}: must be > 0")
    return budget


class _Identity(nn.Module):
    """PHI-S stand-in when there are no statistics: normalize and inverse are no-ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x


class UpsampledTeacher(Teacher):
    """A :class:`~radiosharp.contracts.Teacher` at ``u x`` the resolution of ``teacher``."""

    def __init__(
        self,
        teacher: Teacher,
        upsampler: nn.Module,
        debias: nn.Module | None = None,
        phi_s: nn.Module | None = None,
        max_memory_mb: float | None = None,
        tile_batch: int | None = None,
    ) -> None:
        super().__init__()
        if max_memory_mb is not None and max_memory_mb <= 0:
            raise ValueError(f"max_memory_mb must be > 0, got {max_memory_mb}")
        if tile_batch is not None and tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.max_memory_mb = max_memory_mb if max_memory_mb is not None else _env_budget()
        self.tile_batch = tile_batch
        object.__setattr__(self, "teacher", teacher)  # not a submodule (see the module docstring)
        self.upsampler = upsampler
        self.debias = debias
        self.phi_s = phi_s if phi_s is not None else _Identity()
        self.has_phi_s = phi_s is not None
        for p in self.phi_s.parameters():
            p.requires_grad_(False)
        self.factor: int = int(upsampler.factor)
        self.name = f"{getattr(teacher, 'name', 'teacher')}@{self.factor}x"
        self.patch_size = teacher.patch_size
        self.native_size = self.factor * teacher.native_size
        self.embed_dim = teacher.embed_dim
        self.summary_dim = teacher.summary_dim
        teacher.train(False)

    # -- module plumbing: the teacher follows device/dtype moves but never trains
    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        self.teacher._apply(fn)
        return super()._apply(fn)

    def train(self, mode: bool = True) -> UpsampledTeacher:
        nn.Module.train(self, mode)
        self.phi_s.train(False)
        self.teacher.train(False)
        return self

    # -- the contract
    def featurize(self, images: torch.Tensor) -> torch.Tensor:
        """The de-biased, normalized teacher features of images at the teacher's input size."""
        return self.featurize_with_summary(images)[1]

    def featurize_with_summary(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        with torch.no_grad():
            out = self.teacher(images)
        features = out.features if self.debias is None else self.debias(out.features)
        return out.summary, self.phi_s(features)

    def featurize_batched(
        self, inputs: list[torch.Tensor], images: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """Featurize several teacher-size batches and, for tile upsamplers, the tiles of
        ``images``, in ONE teacher call (as NVlabs/FeatSharp batches the global view
        with the tiles). Returns the features of each input, the summaries of the first
        input, and the tile features (None for upsamplers without tiles).
        """
        size = tuple(inputs[0].shape[-2:])
        parts = list(inputs)
        uses_tiles = getattr(self.upsampler, "uses_tiles", False)  # any module with the contract works
        if uses_tiles:
            parts.append(self.upsampler.tile_inputs(images, size))
        summary, feats = self.featurize_with_summary(torch.cat(parts) if len(parts) > 1 else parts[0])
        pieces = list(feats.split([len(p) for p in parts]))
        tiles = pieces.pop() if uses_tiles else None
        first = None if summary is None else summary[: len(inputs[0])]
        return pieces, first, tiles

    def upsample(self, images: torch.Tensor, lowres: torch.Tensor, tiles: torch.Tensor | None) -> torch.Tensor:
        """The upsampler on normalized features, handing it precomputed tile features if any."""
        if tiles is None:
            return self.upsampler(images, lowres, self.featurize)
        return self.upsampler(images, lowres, self.featurize, tile_features=tiles)

    def check_size(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B,3,H,W], got {tuple(images.shape)}")
        check_image_size(
            images.shape[-2],
            images.shape[-1],
            self.factor * self.patch_size,
            f"{self.name} (upsampled {self.factor}x, patch {self.patch_size}: sides must be "
            f"multiples of {self.factor * self.patch_size})",
        )

    def bounded(self) -> bool:
        """Whether this call runs chunked: a budget is set and autograd is off."""
        return self.max_memory_mb is not None and not torch.is_grad_enabled()

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        self.check_size(images)
        height, width = images.shape[-2:]
        global_view = resize(images, (height // self.factor, width // self.factor))
        bounded_forward = getattr(self.upsampler, "bounded_forward", None)  # any module with the contract works
        if self.bounded() and bounded_forward is not None:
            summary, lowres = self.featurize_with_summary(global_view)
            hires = bounded_forward(images, lowres, self.featurize, self.max_memory_mb, tile_batch=self.tile_batch)
            return TeacherOutput(summary=summary, features=self.phi_s.inverse(hires))
        (lowres,), summary, tiles = self.featurize_batched([global_view], images)
        hires = self.upsample(images, lowres, tiles)
        return TeacherOutput(summary=summary, features=self.phi_s.inverse(hires))

    def extra_repr(self) -> str:
        extra = "" if self.max_memory_mb is None else f", max_memory_mb={self.max_memory_mb:g}"
        return f"teacher={getattr(self.teacher, 'name', type(self.teacher).__name__)}, factor={self.factor}{extra}"


# ----------------------------------------------------------------------------- export


def save_upsampler(
    run_dir: str | os.PathLike, up_teacher: UpsampledTeacher, config: dict[str, Any] | None = None
) -> Path:
    """Export the upsampler, de-bias buffer and PHI-S (never the teacher's weights).

    ``config`` should hold ``teacher`` (the teacher's build config, e.g.
    ``{"family": "dinov2", "size": "tiny"}``) so :func:`load_upsampled_teacher` can
    rebuild it; ``upsampler`` defaults to the module's recorded build config. The
    structural facts (factor, dim, patch size, de-bias grid, PHI-S presence) are
    added here.
    """
    config = dict(config or {})
    upsampler = up_teacher.upsampler
    up_cfg = dict(config.get("upsampler") or getattr(upsampler, "build_config", {}) or {})
    if "name" not in up_cfg:
        raise ValueError(
            "save_upsampler: the upsampler config needs its registry 'name' "
            "(build the upsampler through the registry (radiosharp.create_upsampler), or pass config['upsampler'])"
        )
    for key in ("run", "factor", "dim", "patch_size"):
        up_cfg.pop(key, None)
    debias = up_teacher.debias
    config.update(
        upsampler=up_cfg,
        factor=up_teacher.factor,
        dim=up_teacher.embed_dim,
        patch_size=up_teacher.patch_size,
        debias=None if debias is None else {"grid": list(debias.grid)},
        phi_s=up_teacher.has_phi_s,
    )
    config.setdefault("teacher", None)
    return save_export(run_dir, up_teacher, EXPORT_KIND, config)


def load_upsampled_teacher(
    run_dir: str | os.PathLike, teacher: Teacher | None = None, max_memory_mb: float | None = None
) -> UpsampledTeacher:
    """Rebuild an exported :class:`UpsampledTeacher` (strict weight loading), in eval mode.

    ``max_memory_mb``: the memory budget of its upsampler calls (module docstring).

    ``teacher``: the frozen teacher to wrap; by default it is rebuilt from the export's
    teacher config with ``radiosharp.build_teacher``. Weights that are not finite are
    refused (ValueError naming the file and the tensor).
    """
    from radiosharp.builders import build_teacher, build_upsampler
    from radiosharp.debias import Debias

    _, config, state = read_export(run_dir, expect_kind=EXPORT_KIND)
    if teacher is None:
        if not config.get("teacher"):
            raise ValueError(f"{run_dir}: the export has no teacher config; pass teacher= to load it")
        teacher = build_teacher(config["teacher"], "teacher")
    dim, patch, factor = int(config["dim"]), int(config["patch_size"]), int(config["factor"])
    if teacher.embed_dim != dim or teacher.patch_size != patch:
        raise ValueError(
            f"{run_dir}: upsampler was trained for {dim}-channel features with patch {patch}; "
            f"the teacher has {teacher.embed_dim} channels and patch {teacher.patch_size}"
        )
    upsampler = build_upsampler(dict(config["upsampler"]), "upsampler", factor=factor, dim=dim, patch_size=patch)
    debias = Debias(dim, tuple(config["debias"]["grid"])) if config.get("debias") else None
    phi_s = None
    if config.get("phi_s"):
        from radiosharp.phis import PhiS

        phi_s = PhiS.identity(dim)
    model = UpsampledTeacher(teacher, upsampler, debias, phi_s, max_memory_mb=max_memory_mb)
    model.load_state_dict(state, strict=True)
    return model.eval()
