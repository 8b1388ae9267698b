"""The object classes of the synthetic benchmark: a shape, a colour and a surface fill each.

Class ``c >= 1`` (0 is the background) gets shape ``c-1 mod 8``, colour ``7(c-1) mod 12``
and a fill that changes every class and shifts every 24 classes, so the first 24
classes differ in shape *and* colour and up to 96 classes are all distinct
combinations. Names read like captions ("red disk", "orange striped square"), so a
CLIP-style zero-shot probe can use them.

Shapes and fills are functions of object-local coordinates ``(u, v)`` (the object's
own rotated frame, unit = its radius); every shape lies inside the unit disc.
"""

from __future__ import annotations

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.88, 0.15),
    "lime": (0.60, 0.90, 0.20),
    "green": (0.10, 0.55, 0.20),
    "teal": (0.10, 0.50, 0.50),
    "cyan": (0.25, 0.85, 0.95),
    "blue": (0.15, 0.30, 0.90),
    "purple": (0.50, 0.20, 0.75),
    "magenta": (0.90, 0.20, 0.75),
    "pink": (1.00, 0.62, 0.72),
    "brown": (0.55, 0.33, 0.15),
}
COLOUR_NAMES = tuple(COLOURS)


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, inradius: float, offset: float) -> np.ndarray:
    angles = offset + 2 * np.pi * np.arange(sides) / sides
    reach = np.max(u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles), axis=-1)
    return reach <= inradius


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    return rho <= 0.4 + 0.58 * np.abs(np.cos(2.5 * phi)) ** 3


SHAPES = {
    "disk": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "triangle": lambda u, v: _regular_polygon(u, v, 3, 0.5, np.pi / 2),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) / 0.55 <= 1.0,
    "cross": lambda u, v: ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95)),
    "star": _star,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6, 0.85, 0.0),
}
SHAPE_NAMES = tuple(SHAPES)
FILL_NAMES = ("solid", "striped", "dotted", "checkered")
MAX_CLASSES = 1 + 4 * 24  # background + every distinct (shape, colour, fill) of the scheme


def class_parts(cls: int) -> tuple[str, str, str]:
    """(shape, colour, fill) of object class ``cls >= 1``."""
    i = cls - 1
    return SHAPE_NAMES[i % 8], COLOUR_NAMES[(7 * i) % 12], FILL_NAMES[(i + i // 24) % 4]


def class_name(cls: int) -> str:
    if cls == 0:
        return "background"
    shape, colour, fill = class_parts(cls)
    return f"{colour} {shape}" if fill == "solid" else f"{colour} {fill} {shape}"


def paint_fill(fill: str, u: np.ndarray, v: np.ndarray, colour: np.ndarray, light: np.ndarray) -> np.ndarray:
    """RGB ``[...,3]`` of the surface ``fill`` in the colour ``colour`` at local coordinates."""
    frequency = 2.5  # pattern periods per object radius: ~5 across the object
    if fill == "striped":
        second = np.where((np.sin(2 * np.pi * frequency * u) > 0)[..., None], colour, colour * 0.35)
    elif fill == "dotted":
        du, dv = np.mod(u * frequency, 1.0) - 0.5, np.mod(v * frequency, 1.0) - 0.5
        second = np.where((du * du + dv * dv < 0.09)[..., None], np.float32(0.95), colour)
    elif fill == "checkered":
        parity = (np.floor(u * frequency) + np.floor(v * frequency)) % 2 == 0
        second = np.where(parity[..., None], colour, colour * 0.5 + 0.5)
    else:
        second = np.broadcast_to(colour, u.shape + (3,))
    shade = 1.0 - 0.25 * (u * light[0] + v * light[1])  # a soft directional light across the object
    return second * shade[..., None].astype(np.float32)


def _check_scheme() -> None:
    seen = {class_parts(c) for c in range(1, MAX_CLASSES)}
    assert len(seen) == MAX_CLASSES - 1, "synthetic classes must be distinct"


_check_scheme()
