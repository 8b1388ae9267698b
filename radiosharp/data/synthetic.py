"""``synthetic``: seeded procedural scenes with class masks and depth; needs no download.

A scene is a textured background (smooth noise, stripes or a checkerboard, at a random
frequency, orientation and pair of colours) on a tilted far plane, plus 1..8 objects
drawn from the class catalogue (``synthetic_catalogue``): a shape, a colour and a fill
per class, random rotation, a slight stretch, and a diameter log-uniform between
``min_object`` and ``max_object`` of the image side, so tiny (a few pixels) and large
(half the image) objects both occur. One main object per scene is drawn from the top
octave (``max_object/2 .. max_object``), so every scene has a clear subject. Each
object has its own depth (nearer than every background point); objects are painted
far to near, so nearer ones occlude. A light haze grows with depth, the way distance
looks in photographs.

Targets: ``mask`` (class per pixel, background 0), ``depth`` (scene units: objects 1..6,
background 6.2..11.8) and ``label`` = class of the object with the most visible pixels,
for classification probes. With ``normals=True`` also ``normals`` ([3,S,S] camera-space
unit normals derived from ``depth`` by :func:`normals_from_depth`) and ``normals_valid``
([S,S] bool). Objects are fronto-parallel (one depth each), so their normals all face the
camera; only the tilted background varies (up to ~20 degrees from the optical axis).

Sample ``i`` of seed ``s`` comes from its own generator seeded with ``(s, i)``, so it is
the same in every process, worker and access order. Geometry is in image-relative
units, so the same scene rendered at a larger ``size`` is the same scene, sharper
(only the pixel noise differs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from radiosharp.data.errors import DataError
from radiosharp.data.synthetic_catalogue import COLOURS, MAX_CLASSES, SHAPES, class_name, class_parts, paint_fill
from radiosharp.data.transforms import check_size
from radiosharp.registry import DATASETS

OBJECT_DEPTH = (1.0, 6.0)
FAR_PLANE = (8.0, 10.0)
FAR_TILT = 2.5  # the background plane's depth changes by up to this across the image
HAZE = (0.75, 0.80, 0.85)


def normals_from_depth(
    depth: torch.Tensor, focal: float | None = None, min_depth: float = 1e-3, max_jump: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space unit surface normals ``[...,3,H,W]`` and a validity mask ``[...,H,W]`` from depth ``[...,H,W]``.

    Pinhole assumption: pixel (row i, col j) looks through its centre ``u = j + 0.5``, ``v = i + 0.5``;
    the focal length is ``focal`` pixels (default: the image width ``W``, a ~53 degree horizontal
    field of view) and the principal point the image centre ``(W/2, H/2)``. A depth ``Z`` (along
    the optical axis) back-projects to ``P = (Z (u - W/2) / f, Z (v - H/2) / f, Z)``: x right,
    y down, z forward (OpenCV). The normal is the cross product of the central differences of
    ``P`` along rows and columns, oriented toward the camera (``n . P < 0``; a fronto-parallel
    plane gives ``(0, 0, -1)``).

    A pixel is invalid when its depth or a 4-neighbour's is non-finite or ``<= min_depth``, when
    it lies on the image border (no central difference), or next to a depth discontinuity: the
    second difference of depth along a row or a column, ``|Z[+1] - 2 Z + Z[-1]|``, exceeds
    ``max_jump`` of ``Z`` (a plane, however tilted, steps alike on both sides of a pixel; an
    edge steps on one side only, so both pixels at an edge are invalid; so are grazing ones
    where the surface bends sharply, e.g. at a sphere's outline). Invalid pixels get the normal 0.
    """
    if depth.ndim < 2:
        raise ValueError(f"normals_from_depth: expected depth [...,H,W], got {tuple(depth.shape)}")
    H, W = depth.shape[-2:]
    f = float(focal or W)
    z = depth.double()
    ok = torch.isfinite(z) & (z > min_depth)
    z = torch.where(ok, z, torch.ones_like(z))
    u = (torch.arange(W, dtype=z.dtype, device=z.device) + 0.5 - W / 2) / f
    v = (torch.arange(H, dtype=z.dtype, device=z.device) + 0.5 - H / 2) / f
    points = torch.stack([z * u, z * v[:, None], z], -3)  # [...,3,H,W]
    d_col = torch.zeros_like(points)
    d_row = torch.zeros_like(points)
    d_col[..., 1:-1] = points[..., 2:] - points[..., :-2]
    d_row[..., 1:-1, :] = points[..., 2:, :] - points[..., :-2, :]
    normal = torch.linalg.cross(d_col, d_row, dim=-3)
    facing = (normal * points).sum(-3, keepdim=True)
    normal = torch.where(facing > 0, -normal, normal)
    valid = torch.zeros_like(ok)
    inner = ok[..., 1:-1, 1:-1] & ok[..., :-2, 1:-1] & ok[..., 2:, 1:-1] & ok[..., 1:-1, :-2] & ok[..., 1:-1, 2:]
    centre = z[..., 1:-1, 1:-1]
    for before, after in ((z[..., :-2, 1:-1], z[..., 2:, 1:-1]), (z[..., 1:-1, :-2], z[..., 1:-1, 2:])):
        # a smooth surface steps alike on both sides; a depth edge steps on one side only
        inner = inner & ((after - 2 * centre + before).abs() <= max_jump * centre)
    valid[..., 1:-1, 1:-1] = inner
    length = normal.norm(dim=-3, keepdim=True)
    valid = valid & (length[..., 0, :, :] > 0)
    normal = torch.where(valid[..., None, :, :], normal / length.clamp_min(1e-12), torch.zeros_like(normal))
    return normal.to(depth.dtype if depth.is_floating_point() else torch.float32), valid


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two octaves of value noise, bilinearly upsampled: the same field at any ``size``."""
    cells = int(rng.integers(3, 20))
    grids = torch.from_numpy(rng.random((2, 1, cells, cells), dtype=np.float32))
    coarse = F.interpolate(grids[:1], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    fine_grid = torch.from_numpy(rng.random((1, 1, 3 * cells, 3 * cells), dtype=np.float32))
    fine = F.interpolate(fine_grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return (0.7 * coarse + 0.3 * fine).numpy()


def render_background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RGB ``[S,S,3]``, depth ``[S,S]``) of the textured, tilted far plane."""
    size = x.shape[0]
    c1, c2 = rng.uniform(0.05, 0.95, 3).astype(np.float32), rng.uniform(0.05, 0.95, 3).astype(np.float32)
    kind = int(rng.integers(3))
    theta = rng.uniform(0, np.pi)
    along, across = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    if kind == 0:
        pattern = _smooth_noise(rng, size)
    elif kind == 1:
        frequency, phase, sharpness = rng.uniform(2, 24), rng.uniform(0, 2 * np.pi), rng.uniform(1, 8)
        pattern = np.clip(np.sin(2 * np.pi * frequency * along + phase) * sharpness * 0.5 + 0.5, 0, 1)
    else:
        frequency = rng.uniform(2, 14)
        pattern = ((np.floor(frequency * along) + np.floor(frequency * across)) % 2).astype(np.float32)
    image = c1 + (c2 - c1) * pattern[..., None].astype(np.float32)
    tilt_dir = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(tilt_dir) + (y - 0.5) * np.sin(tilt_dir)
    depth = rng.uniform(*FAR_PLANE) + rng.uniform(0, FAR_TILT) * ramp
    return image.astype(np.float32), depth.astype(np.float32)


class SyntheticScenes(Dataset):
    """``num_images`` seeded scenes (see module doc); ``.num_classes`` counts the background.

    Seeded scenes of objects of many classes and sizes, with ``mask``, ``depth`` and ``label``
    (and ``normals`` / ``normals_valid`` from the depth when ``normals`` is true).

    ``num_classes`` counts the background (class 0); ``min_object`` / ``max_object`` are
    object diameters as a fraction of the image side; ``pixel_noise`` is the std of
    added Gaussian noise; ``haze`` how fast colours fade toward grey with depth.
    """

    def __init__(
        self,
        num_images: int = 256,
        size: int = 224,
        seed: int = 0,
        num_classes: int = 16,
        min_object: float = 0.02,
        max_object: float = 0.5,
        min_objects: int = 1,
        max_objects: int = 8,
        pixel_noise: float = 0.02,
        haze: float = 0.03,
        normals: bool = False,
    ) -> None:
        if num_images < 1:
            raise DataError(f"synthetic: num_images must be >= 1, got {num_images}")
        if seed < 0:
            raise DataError(f"synthetic: seed must be >= 0, got {seed}")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise DataError(
                f"synthetic: num_classes must be in [2, {MAX_CLASSES}] (background included), got {num_classes}"
            )
        if not 0 < min_object <= max_object <= 1:
            raise DataError(
                "synthetic: need 0 < min_object <= max_object <= 1 (object diameters as a "
                f"fraction of the image side), got {min_object}, {max_object}"
            )
        if not 1 <= min_objects <= max_objects:
            raise DataError(f"synthetic: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        self.num_images, self.size, self.seed = num_images, check_size(size), seed
        self.num_classes = num_classes
        self.class_names = [class_name(c) for c in range(num_classes)]
        self.min_object, self.max_object = min_object, max_object
        self.min_objects, self.max_objects = min_objects, max_objects
        self.pixel_noise, self.haze = pixel_noise, haze
        self.normals = normals
        self._colours = {c: np.array(COLOURS[class_parts(c)[1]], np.float32) for c in range(1, num_classes)}
        centres = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size
        self._y, self._x = np.meshgrid(centres, centres, indexing="ij")

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic: index {index} out of range for {self.num_images} images")
        return self.render(index)

    def render(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        size, x, y = self.size, self._x, self._y
        image, depth = render_background(rng, x, y)
        mask = np.zeros((size, size), np.int64)
        instance = np.full((size, size), -1, np.int64)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        classes = rng.integers(1, self.num_classes, count)
        low, high = np.log(self.min_object), np.log(self.max_object)
        diameters = np.exp(rng.uniform(low, high, count))
        diameters[0] = np.exp(rng.uniform(max(low, high - np.log(2)), high))  # the main object
        centres = rng.uniform(0, 1, (count, 2))
        angles = rng.uniform(0, 2 * np.pi, count)
        stretch = rng.uniform(0.85, 1.15, count)
        depths = rng.uniform(*OBJECT_DEPTH, count)
        jitter = rng.normal(0, 0.05, (count, 3)).astype(np.float32)
        lights = rng.normal(0, 0.7, (count, 2))
        for k in np.argsort(-depths, kind="stable"):  # painter's order: far to near
            radius = diameters[k] / 2
            reach = radius * max(stretch[k], 1 / stretch[k])
            (cy, cx) = centres[k]
            rows = slice(max(0, int((cy - reach) * size)), min(size, int((cy + reach) * size) + 2))
            cols = slice(max(0, int((cx - reach) * size)), min(size, int((cx + reach) * size) + 2))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                continue
            dx, dy = x[rows, cols] - cx, y[rows, cols] - cy
            cos, sin = np.cos(angles[k]), np.sin(angles[k])
            u = (dx * cos + dy * sin) / (radius * stretch[k])
            v = (-dx * sin + dy * cos) / (radius / stretch[k])
            shape, _, fill = class_parts(int(classes[k]))
            inside = SHAPES[shape](u, v)
            if not inside.any():
                continue
            colour = np.clip(self._colours[int(classes[k])] + jitter[k], 0, 1)
            paint = paint_fill(fill, u, v, colour, lights[k])
            image[rows, cols][inside] = paint[inside]
            mask[rows, cols][inside] = classes[k]
            depth[rows, cols][inside] = depths[k]
            instance[rows, cols][inside] = k
        haze = (1.0 - np.exp(np.float32(-self.haze) * depth))[..., None]
        image = image + (np.array(HAZE, np.float32) - image) * haze
        if self.pixel_noise > 0:
            image += np.float32(self.pixel_noise) * rng.standard_normal(image.shape, dtype=np.float32)
        visible = np.bincount(instance[instance >= 0], minlength=count)
        label = int(classes[int(np.argmax(visible))]) if visible.any() else int(classes[int(np.argmax(diameters))])
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(np.clip(image, 0, 1).transpose(2, 0, 1), np.float32)),
            "mask": torch.from_numpy(mask),
            "depth": torch.from_numpy(depth.astype(np.float32)),
            "label": label,
            "key": f"synthetic/{self.seed}/{index}",
        }
        if self.normals:
            sample["normals"], sample["normals_valid"] = normals_from_depth(sample["depth"])
        return sample


DATASETS.register("synthetic")(SyntheticScenes)  # the class is the builder: one signature
