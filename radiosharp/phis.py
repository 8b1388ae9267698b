"""PHI-S: per-teacher feature normalization by a Hadamard-isotropic rotation.

For a teacher with feature mean ``mu`` and covariance ``Sigma = U diag(lambda) U^T``::

    y = alpha * H * U^T (x - mu),   alpha = mean(lambda) ** -0.5,   H H^T = I

Every output dimension then has variance exactly 1: the diagonal of
``alpha^2 H diag(lambda) H^T`` is ``alpha^2 * sum_k H_ik^2 lambda_k = alpha^2 mean(lambda)``
because each entry of a normalized Hadamard matrix squares to ``1/C``. Since
``alpha * H U^T`` is a scaled rotation, MSE in PHI-S space is the raw MSE divided
by ``mean(lambda)``, so teachers of very different scales weigh the same in a
distillation loss. The exact inverse is ``x = U H^T y / alpha + mu``.

:class:`FeatureMoments` streams the statistics (float64 sums, mergeable and
all-reducible across processes); :class:`PhiS` is the frozen transform.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from radiosharp.export import save_state_dict
from radiosharp.hadamard import hadamard


def _as_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Feature vectors as rows ``[N, C]``, with channels taken from axis ``dim``."""
    if x.ndim < 2:
        raise ValueError(f"expected features [N,C] or [B,C,H,W], got shape {tuple(x.shape)}")
    return x.movedim(dim, -1).reshape(-1, x.shape[dim])


class FeatureMoments:
    """Count, sum and sum of outer products of feature vectors, in float64.

    ``update`` takes ``[N, C]`` vectors or ``[B, C, H, W]`` maps (every pixel is one
    vector). Raw sums (rather than a running mean and co-moment) make ``merge`` and
    the cross-process ``all_reduce`` plain additions; float64 keeps the
    ``E[xx^T] - mu mu^T`` cancellation harmless for feature scales seen in practice.
    ``covariance`` is the unbiased (N - 1) estimate.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer_sum = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.metadata: dict[str, str] = {}

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> FeatureMoments:
        """Add feature vectors: ``[N, C]`` rows, or ``[B, C, H, W]`` maps (channels at dim 1)."""
        if x.ndim not in (2, 4):
            raise ValueError(f"expected features [N,C] or [B,C,H,W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} channels, these moments have {self.dim}")
        rows = _as_rows(x, 1).to(device=self.sum.device, dtype=torch.float64)
        self.count += rows.shape[0]
        self.sum += rows.sum(0)
        self.outer_sum += rows.T @ rows
        return self

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Add another accumulator's vectors into this one (in place; returns self)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of {other.dim} channels into {self.dim}")
        self.count += other.count.to(self.count.device)
        self.sum += other.sum.to(self.sum.device)
        self.outer_sum += other.outer_sum.to(self.outer_sum.device)
        return self

    def all_reduce(self, accelerator: Any = None) -> FeatureMoments:
        """Sum the accumulators of every process (in place). A no-op for one process.

        With an ``accelerate.Accelerator`` its ``reduce`` is used; without one,
        ``torch.distributed`` when it is initialized.
        """
        packed = torch.cat([self.count.view(1), self.sum, self.outer_sum.flatten()])
        if accelerator is not None:
            if accelerator.num_processes > 1:
                packed = accelerator.reduce(packed.to(accelerator.device), reduction="sum")
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        packed = packed.to(self.sum.device)
        c = self.dim
        self.count = packed[0].clone()
        self.sum = packed[1 : 1 + c].clone()
        self.outer_sum = packed[1 + c :].view(c, c).clone()
        return self

    @property
    def num_vectors(self) -> int:
        return int(self.count.item())

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise ValueError("no feature vectors were accumulated; the mean is undefined")
        return self.sum / self.count

    @property
    def covariance(self) -> torch.Tensor:
        """Unbiased covariance ``(sum xx^T - n mu mu^T) / (n - 1)``, symmetrized, float64."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, have {self.num_vectors}")
        mu = self.mean
        cov = (self.outer_sum - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write a safetensors file with ``mean``, ``cov``, ``count`` and the raw sums.

        ``metadata`` (strings) is stored alongside, merged over ``self.metadata``.
        """
        path = Path(path)
        meta = {**self.metadata, **(metadata or {}), "dim": str(self.dim), "format": "radiosharp.phi_s.moments/1"}
        tensors = {
            "mean": self.mean,
            "cov": self.covariance,
            "count": self.count,
            "sum": self.sum,
            "outer_sum": self.outer_sum,
        }
        save_state_dict(path, tensors, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureMoments:
        """Read a file written by :meth:`save` (metadata in ``.metadata``)."""
        tensors, meta = _read_stats_file(path)
        missing = [k for k in ("count", "sum", "outer_sum") if k not in tensors]
        if missing:
            raise ValueError(f"{path}: not a moments file (missing {', '.join(missing)})")
        out = cls(int(tensors["sum"].shape[0]))
        out.count = tensors["count"].to(torch.float64).reshape(())
        out.sum = tensors["sum"].to(torch.float64)
        out.outer_sum = tensors["outer_sum"].to(torch.float64)
        out.metadata = {k: v for k, v in meta.items() if k not in ("dim", "format")}
        return out


def _read_stats_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"PHI-S statistics file not found: {path} (make it with: python -m radiosharp.stats RECIPE)"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


class PhiS(nn.Module):
    """The frozen PHI-S transform of one teacher: ``forward`` normalizes, ``inverse`` undoes it.

    Buffers (float32, computed in float64): ``mu`` [C], ``rotation`` [C,C] =
    ``alpha * H U^T``, ``inverse_rotation`` [C,C] = ``U H^T / alpha``, and
    ``eigenvalue_mean`` (scalar). They are persistent, so a module holding a PhiS
    saves and restores it with its state dict.

    ``forward(x, dim=1)``: channels sit on axis ``dim``; the default fits feature
    maps ``[B,C,H,W]`` and rows ``[N,C]`` alike; pass ``dim=-1`` for tokens ``[B,N,C]``.
    It runs in (at least) float32 with autocast off, so a bf16 run still measures its
    loss in full precision.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("inverse_rotation", torch.eye(dim))
        self.register_buffer("eigenvalue_mean", torch.ones(()))
        self.metadata: dict[str, str] = {}

    # ------------------------------------------------------------------ constructors

    @classmethod
    def identity(cls, dim: int) -> PhiS:
        """A PhiS that changes nothing (for when no statistics exist); mean eigenvalue 1."""
        return cls(dim)

    @classmethod
    def from_stats(cls, mean: torch.Tensor, cov: torch.Tensor) -> PhiS:
        """Build from a feature mean [C] and covariance [C,C] (any float dtype; math in float64)."""
        mean = torch.as_tensor(mean).detach().to("cpu", torch.float64)
        cov = torch.as_tensor(cov).detach().to("cpu", torch.float64)
        c = mean.shape[-1]
        if mean.shape != (c,) or cov.shape != (c, c):
            raise ValueError(f"expected mean [C] and covariance [C,C], got {tuple(mean.shape)} and {tuple(cov.shape)}")
        eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
        # A sample covariance is PSD; tiny negative eigenvalues are rounding noise.
        eigenvalue_mean = eigenvalues.clamp_min(0).mean()
        if not eigenvalue_mean > 0:
            raise ValueError("the features have zero variance; PHI-S is undefined for constant features")
        h_norm = hadamard(c) / c**0.5
        alpha = eigenvalue_mean.rsqrt()
        rotation = alpha * h_norm @ eigenvectors.T
        inverse_rotation = eigenvectors @ h_norm.T / alpha
        out = cls(c)
        out.mu.copy_(mean)
        out.rotation.copy_(rotation)
        out.inverse_rotation.copy_(inverse_rotation)
        out.eigenvalue_mean.copy_(eigenvalue_mean)
        return out

    @classmethod
    def from_moments(cls, moments: FeatureMoments) -> PhiS:
        out = cls.from_stats(moments.mean, moments.covariance)
        out.metadata = dict(moments.metadata)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, expect_dim: int | None = None) -> PhiS:
        """Build from a statistics file of ``python -m radiosharp.stats`` (``mean`` + ``cov``).

        ``expect_dim``: the teacher's width; a file for another width is an error.
        """
        tensors, meta = _read_stats_file(path)
        if "mean" not in tensors or "cov" not in tensors:
            raise ValueError(
                f"{path}: not a PHI-S statistics file (needs 'mean' and 'cov', has "
                f"{', '.join(sorted(tensors)) or 'nothing'})"
            )
        dim = int(tensors["mean"].shape[0])
        if expect_dim is not None and dim != expect_dim:
            raise ValueError(f"{path}: statistics are for {dim}-channel features, the teacher has {expect_dim}")
        out = cls.from_stats(tensors["mean"], tensors["cov"])
        out.metadata = meta
        return out

    # ------------------------------------------------------------------ transform

    @property
    def mean_eigenvalue(self) -> float:
        """Mean covariance eigenvalue: MSE in PHI-S space == raw MSE / this."""
        return float(self.eigenvalue_mean)

    def _transform(
        self, x: torch.Tensor, matrix: torch.Tensor, dim: int, before: torch.Tensor | None, after: torch.Tensor | None
    ) -> torch.Tensor:
        if x.ndim == 0 or x.shape[dim] != self.dim:
            raise ValueError(f"PHI-S expects {self.dim} channels on axis {dim}, got shape {tuple(x.shape)}")
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            rows = x.to(dtype).movedim(dim, -1)
            if before is not None:
                rows = rows - before.to(dtype)
            rows = rows @ matrix.to(dtype).T
            if after is not None:
                rows = rows + after.to(dtype)
        return rows.movedim(-1, dim)

    def forward(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Normalize: ``alpha H U^T (x - mu)`` along axis ``dim`` (channels)."""
        return self._transform(x, self.rotation, dim, before=self.mu, after=None)

    def inverse(self, y: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Undo :meth:`forward`: ``U H^T y / alpha + mu``."""
        return self._transform(y, self.inverse_rotation, dim, before=None, after=self.mu)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mean_eigenvalue={self.mean_eigenvalue:.4g}"
