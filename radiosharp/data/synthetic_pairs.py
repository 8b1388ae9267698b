"""``synthetic_pairs``: seeded image pairs by known affine warps, with corresponding keypoints.

A source for the eval task ``keypoints`` like ``keypoint_pairs`` (:mod:`radiosharp.data.keypoint_pairs`,
whose module doc gives the coordinate convention and the :class:`~radiosharp.data.keypoint_pairs.KeypointPair`
listed in ``keypoint_pairs``): pair ``i``'s source is a synthetic scene or a random colour texture, its
target the source under a seeded rotation, scale and shift; keypoints are drawn in the source and mapped
through the warp. ``texture`` is ``scenes`` or ``noise``; keypoints keep ``margin`` (a fraction of the
side) from the borders of both images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from radiosharp.data.errors import DataError
from radiosharp.data.keypoint_pairs import KeypointPair
from radiosharp.data.synthetic import SyntheticScenes
from radiosharp.data.transforms import check_size
from radiosharp.registry import DATASETS

TEXTURES = ("scenes", "noise")


def warp_matrix(size: int, rotation: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    """``[2,3]`` forward map source -> target pixel coordinates: rotate by ``rotation`` degrees and
    scale by ``scale`` about the image centre, then shift by ``shift`` pixels."""
    theta = math.radians(rotation)
    c, s = math.cos(theta) * scale, math.sin(theta) * scale
    a = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    centre = torch.full((2,), size / 2, dtype=torch.float64)
    b = centre - a @ centre + torch.tensor(shift, dtype=torch.float64)
    return torch.cat([a, b[:, None]], 1)


def warp_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Points ``[K,2]`` through the forward ``[2,3]`` map."""
    m = matrix.to(torch.float64)
    return (points.to(torch.float64) @ m[:, :2].T + m[:, 2]).to(points.dtype)


def warp_image(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``[3,S,S]`` -> the target ``[3,S,S]`` whose pixel at ``p`` shows the source at ``matrix^-1 p``
    (bilinear, black outside the source)."""
    size = image.shape[-1]
    m = matrix.to(torch.float64)
    inv_a = torch.linalg.inv(m[:, :2])
    inv_b = -inv_a @ m[:, 2]
    # in normalised coordinates n = 2 p / S - 1 (align_corners=False): n_s = A' n_t + b'
    centre = torch.full((2,), size / 2, dtype=torch.float64)
    b_norm = (inv_a @ centre + inv_b - centre) / (size / 2)
    theta = torch.cat([inv_a, b_norm[:, None]], 1)[None].float()
    grid = F.affine_grid(theta, [1, 3, size, size], align_corners=False)
    return F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


NOISE_OCTAVES = ((4, 0.4), (8, 0.3), (16, 0.2), (32, 0.1))  # (cells across the image, weight)


def noise_texture(rng: np.random.Generator, size: int) -> torch.Tensor:
    """``[3,S,S]`` random colour texture: per channel, value noise at 4 to 32 cells across the image
    (bilinearly upsampled uniform grids, weights 0.4 .. 0.1), stretched to fill 0..1. Busy at every
    scale, so a small neighbourhood's colours tell it apart from the rest of the image."""
    field = torch.zeros(3, size, size)
    for cells, weight in NOISE_OCTAVES:
        grid = torch.from_numpy(rng.random((1, 3, cells, cells), dtype=np.float32))
        field += weight * F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0]
    low, high = field.amin((1, 2), keepdim=True), field.amax((1, 2), keepdim=True)
    return ((field - low) / (high - low).clamp_min(1e-6)).contiguous()


class SyntheticPairs(Dataset):
    """Seeded pairs (source, target = source under a known affine warp) with keypoints.

    Pair ``i``: the source is synthetic scene ``i`` of ``seed`` (``texture='scenes'``) or a
    smooth random colour field (``texture='noise'``); the target is it rotated by up to
    ``max_rotation`` degrees, scaled by a log-uniform factor in ``[1/max_scale, max_scale]``
    about the centre and shifted by up to ``max_translation`` of the side per axis (black
    where the source does not reach). ``num_keypoints`` source points are drawn uniformly
    at least ``margin`` of the side from the source's borders, among those whose warped point
    is as far inside the target's (a border point's neighbourhood is cut off by the image
    edge in one image and not in the other, which no local feature can match). Samples:
    ``2 i`` the source, ``2 i + 1`` the target. The PCK length is the image side.
    """

    def __init__(
        self,
        num_pairs: int = 32,
        size: int = 224,
        seed: int = 0,
        max_rotation: float = 30.0,
        max_scale: float = 1.25,
        max_translation: float = 0.1,
        num_keypoints: int = 32,
        texture: str = "scenes",
        margin: float = 0.05,
    ) -> None:
        if not 0 <= margin < 0.5:
            raise DataError(f"synthetic_pairs: margin must be in [0, 0.5) (a fraction of the side), got {margin}")
        if num_pairs < 1 or num_keypoints < 1:
            raise DataError(
                f"synthetic_pairs: num_pairs and num_keypoints must be >= 1, got {num_pairs}, {num_keypoints}"
            )
        if max_scale < 1 or max_rotation < 0 or max_translation < 0:
            raise DataError(
                "synthetic_pairs: need max_scale >= 1, max_rotation >= 0 and max_translation >= 0, got "
                f"{max_scale}, {max_rotation}, {max_translation}"
            )
        if texture not in TEXTURES:
            raise DataError(f"synthetic_pairs: texture '{texture}' is not valid; valid: {', '.join(TEXTURES)}")
        if seed < 0:
            raise DataError(f"synthetic_pairs: seed must be >= 0, got {seed}")
        self.num_pairs, self.size, self.seed, self.texture = num_pairs, check_size(size), seed, texture
        self.scenes = SyntheticScenes(num_images=num_pairs, size=size, seed=seed) if texture == "scenes" else None
        self.matrices: list[torch.Tensor] = []
        self.keypoint_pairs: list[KeypointPair] = []
        for i in range(num_pairs):
            rng = np.random.default_rng([seed, i, 7])  # not the scenes' stream ([seed, i])
            rotation = float(rng.uniform(-max_rotation, max_rotation))
            scale = float(np.exp(rng.uniform(-np.log(max_scale), np.log(max_scale))))
            shift = tuple(float(v) for v in rng.uniform(-max_translation, max_translation, 2) * size)
            matrix = warp_matrix(size, rotation, scale, shift)
            low, high = margin * size, (1 - margin) * size
            candidates = torch.from_numpy(rng.uniform(low, high, (8 * num_keypoints, 2)))
            warped = warp_points(candidates, matrix)
            inside = ((warped >= low) & (warped < high)).all(1)
            src, trg = candidates[inside][:num_keypoints], warped[inside][:num_keypoints]
            self.matrices.append(matrix)
            self.keypoint_pairs.append(
                KeypointPair(
                    f"pair{i}", self._key(i, "src"), self._key(i, "trg"), src.float(), trg.float(), float(size)
                )
            )
        self.image_keys = [self._key(i // 2, ("src", "trg")[i % 2]) for i in range(2 * num_pairs)]

    def _key(self, pair: int, which: str) -> str:
        return f"synthetic_pairs/{self.seed}/{pair}/{which}"

    def source_image(self, pair: int) -> torch.Tensor:
        if self.scenes is not None:
            return self.scenes[pair]["image"]
        return noise_texture(np.random.default_rng([self.seed, pair]), self.size)

    def __len__(self) -> int:
        return 2 * self.num_pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"synthetic_pairs: index {index} out of range for {len(self)} images")
        pair, target = divmod(index, 2)
        image = self.source_image(pair)
        if target:
            image = warp_image(image, self.matrices[pair]).clamp(0, 1)
        return {"image": image.contiguous(), "key": self.image_keys[index]}


DATASETS.register("synthetic_pairs")(SyntheticPairs)  # the class is the builder: one signature
