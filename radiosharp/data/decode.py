"""Decoding image, class-mask and depth files into tensors, failing with one error type.

Every reader raises :class:`UnreadableFileError` (with the reason) for anything it
cannot decode: a missing or zero-byte file, bytes that are not an image, a truncated
JPEG (PIL only notices when it decodes the pixels, so we decode inside the ``try``).
Sources catch that one error and turn the sample into a ``SkippedSample``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

Source = str | os.PathLike | bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class UnreadableFileError(OSError):
    """A file that cannot be decoded; the message says why."""


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, TypeError, Image.DecompressionBombError)


def _open(source: Source, what: str):
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise UnreadableFileError(f"{what}: zero bytes")
        return Image.open(io.BytesIO(bytes(source)))
    path = Path(source)
    if not path.is_file():
        raise UnreadableFileError(f"{what}: no such file")
    if path.stat().st_size == 0:
        raise UnreadableFileError(f"{what}: zero-byte file")
    return Image.open(path)


def read_rgb(source: Source, min_side: int | None = None) -> torch.Tensor:
    """uint8 ``[3,H,W]`` RGB from a path or encoded bytes (EXIF rotation applied).

    ``min_side`` lets JPEG decoding skip work by decoding at a power-of-two reduction
    whose shorter side is still at least ``min_side`` (PIL's ``draft``); the later
    resize then sees fewer pixels, which matters for multi-megapixel web images.
    Grey, palette and alpha images become RGB (alpha is dropped).
    """
    from PIL import ImageOps

    try:
        with _open(source, "image") as im:
            if min_side is not None and im.format == "JPEG":
                w, h = im.size
                scale = min_side / max(1, min(w, h))
                im.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
            im = ImageOps.exif_transpose(im)
            array = np.array(im.convert("RGB"))  # a writable copy (torch refuses read-only memory)
    except UnreadableFileError:
        raise
    except _decode_errors() as err:
        raise UnreadableFileError(f"not a readable image ({type(err).__name__}: {err})") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def read_mask(source: Source) -> torch.Tensor:
    """int64 ``[H,W]`` class indices from a single-channel PNG (grey or palette).

    Palette PNGs (the VOC format) store the class index as the palette entry, so we
    read the indices and never convert to RGB. Colour-coded RGB masks are refused:
    they need a colour -> class table that the folder does not carry.
    """
    try:
        with _open(source, "mask") as im:
            if im.mode in ("RGB", "RGBA"):
                raise UnreadableFileError(
                    f"mask is an {im.mode} colour image; class masks must be single-channel "
                    "(grey 'L', palette 'P' or 16-bit 'I;16') PNGs holding the class index per pixel"
                )
            array = np.asarray(im)
    except UnreadableFileError:
        raise
    except _decode_errors() as err:
        raise UnreadableFileError(f"not a readable mask ({type(err).__name__}: {err})") from None
    if array.ndim != 2:
        raise UnreadableFileError(f"mask has shape {array.shape}; expected a single channel [H,W]")
    return torch.from_numpy(array.astype(np.int64))


def read_depth_array(source: Source) -> np.ndarray:
    """``[H,W]`` stored depth values (integer or float, as stored) from ``.npy`` / ``.npz`` or an image file."""
    encoded = isinstance(source, (bytes, bytearray, memoryview))
    is_numpy = not encoded and Path(source).suffix.lower() in (".npy", ".npz")
    try:
        if is_numpy:
            path = Path(source)
            if not path.is_file():
                raise UnreadableFileError("depth: no such file")
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    if len(loaded.files) != 1:
                        raise UnreadableFileError(f"depth .npz must hold one array, holds {loaded.files}")
                    array = loaded[loaded.files[0]]
            else:
                array = loaded
        else:
            with _open(source, "depth") as im:
                array = np.asarray(im)
    except UnreadableFileError:
        raise
    except _decode_errors() as err:
        raise UnreadableFileError(f"not a readable depth map ({type(err).__name__}: {err})") from None
    array = np.squeeze(array)
    if array.ndim != 2:
        raise UnreadableFileError(f"depth has shape {array.shape}; expected a single channel [H,W]")
    return array


def depth_in_units(array: np.ndarray, depth_scale: float | None = None) -> torch.Tensor:
    """float32 depth = stored values * ``depth_scale``; by default 1/1000 for integers (NYU's
    16-bit PNGs hold millimetres) and 1 for floats. A stored 0 ("no measurement") stays 0."""
    if depth_scale is None:
        depth_scale = 1e-3 if np.issubdtype(array.dtype, np.integer) else 1.0
    return torch.from_numpy(array.astype(np.float32) * np.float32(depth_scale))


def is_image_file(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def normalize_extensions(extensions: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"jpg;png"`` or ``["jpg", ".PNG"]`` -> ``(".jpg", ".png")``."""
    items = extensions.split(";") if isinstance(extensions, str) else list(extensions)
    out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
    if not out:
        raise ValueError(f"extensions {extensions!r} names no file extension; e.g. {list(IMAGE_EXTENSIONS)}")
    return out
