"""Decoding image, class-mask and depth files into tensors, failing with one error type.

Every reader raises :class:`UnreadableFileError` (with the reason) for anything it
cannot decode: a missing or zero-byte file, bytes that are not an image, a truncated
JPEG (PIL only notices when it decodes the pixels, so we decode inside the ``try``).
Sources catch that one error and turn the sample into a ``SkippedSample``. A file
that decodes but cannot be used as configured (an 8-bit depth map without a
``depth_scale``) raises :class:`~radiosharp.data.errors.DataError` instead: that is
the whole dataset's problem, not one sample's.

EXIF orientation (one policy for every source):

- An image is shown upright: its EXIF orientation tag (a phone photo stored sideways
  with "rotate 90") is applied, as every image viewer does (``read_rgb``).
- A class mask or depth map is never turned by a tag of its own (``read_mask`` /
  ``read_depth_array`` read the stored pixels; PNG masks and ``.npy`` depth rarely carry
  one, and a tool that wrote one did not mean it for the labels).
- A target paired with an image (``seg_folder``, ``depth_folder``, ``hf`` with a mask or
  depth column) gets the image's transposition (``orient``): the target is taken to be
  aligned with the image's stored pixels, which is what a depth sensor, a mask
  rendered from the decoded array (``np.asarray(Image.open(...))`` ignores EXIF) and
  the usual datasets (ADE20K, VOC, NYU: no orientation tags) give. Image and target
  stay aligned, both upright. A target drawn on the upright view of a 90-degree tagged
  image has the transposed shape and is skipped with a message naming both shapes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from radiosharp.data.errors import DataError, UnreadableFileError

Source = str | os.PathLike | bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the picture upright, on the last two
# dims [..., H, W] (the same as PIL's ImageOps.exif_transpose; 1 and unknown values: none)
_ORIENT = {
    2: lambda t: t.flip(-1),  # mirrored left-right
    3: lambda t: t.flip(-2, -1),  # rotated 180
    4: lambda t: t.flip(-2),  # mirrored top-bottom
    5: lambda t: t.transpose(-2, -1),  # transposed
    6: lambda t: torch.rot90(t, -1, (-2, -1)),  # stored rotated 90 counter-clockwise: turn clockwise
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),  # transversed
    8: lambda t: torch.rot90(t, 1, (-2, -1)),  # stored rotated 90 clockwise: turn counter-clockwise
}


def exif_orientation(im: object) -> int:
    """The EXIF orientation tag (1..8) of an open PIL image; 1 (upright) when it has none."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError, OSError, SyntaxError):
        return 1
    return value if value in _ORIENT else 1


def orient(target: torch.Tensor, orientation: int) -> torch.Tensor:
    """``target`` [..., H, W] transposed as an image of EXIF ``orientation`` is by ``read_rgb``."""
    op = _ORIENT.get(orientation)
    return target if op is None else op(target).contiguous()


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
    return read_rgb_oriented(source, min_side)[0]


def read_rgb_oriented(source: Source, min_side: int | None = None) -> tuple[torch.Tensor, int]:
    """``read_rgb`` and the EXIF orientation it applied (for ``orient`` on a paired target)."""
    try:
        with _open(source, "image") as im:
            if min_side is not None and im.format == "JPEG":
                w, h = im.size
                scale = min_side / max(1, min(w, h))
                im.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
            orientation = exif_orientation(im)
            array = np.array(im.convert("RGB"))  # a writable copy (torch refuses read-only memory)
    except UnreadableFileError:
        raise
    except _decode_errors() as err:
        raise UnreadableFileError(f"not a readable image ({type(err).__name__}: {err})") from None
    return orient(torch.from_numpy(array).permute(2, 0, 1), orientation), orientation


def read_mask(source: Source) -> torch.Tensor:
    """int64 ``[H,W]`` class indices from a single-channel PNG (grey or palette).

    Palette PNGs (the VOC format) store the class index as the palette entry, so we
    read the indices and never convert to RGB. Colour-coded RGB masks are refused:
    they need a colour -> class table that the folder does not carry. The stored
    pixels, without EXIF handling (see the module doc).
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
    """``[H,W]`` stored depth values (integer or float, as stored) from ``.npy`` / ``.npz`` or an image file
    (the stored pixels, without EXIF handling; see the module doc)."""
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


def is_8bit(array: np.ndarray) -> bool:
    """Whether ``array`` holds 8-bit (or 1-bit) values: a grey or palette PNG, a uint8 array."""
    return array.dtype == np.bool_ or (np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize == 1)


def depth_in_units(array: np.ndarray, depth_scale: float | None = None, source: object = "depth map") -> torch.Tensor:
    """float32 depth = stored values * ``depth_scale``; by default 1/1000 for 16/32-bit integers
    (NYU's 16-bit PNGs hold millimetres) and 1 for floats (``.npy`` in metres). A stored 0
    ("no measurement") stays 0.

    8-bit values have no conventional unit (an 8-bit PNG is often a visualisation, 0..255
    for near..far): without an explicit ``depth_scale`` they raise ``DataError`` naming
    ``source`` instead of being read as millimetres.
    """
    if depth_scale is None:
        if is_8bit(array):
            raise DataError(
                f"depth map {source} holds 8-bit values ({array.dtype}), whose depth unit is unknown; "
                "expected a 16-bit PNG in millimetres or a .npy/.npz/float TIFF in metres, or set depth_scale "
                "(metres per stored unit) to read 8-bit depth"
            )
        depth_scale = 1e-3 if np.issubdtype(array.dtype, np.integer) else 1.0
    return torch.from_numpy(array.astype(np.float32) * np.float32(depth_scale))


def is_image_file(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def normalize_extensions(extensions: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"jpg;png"`` or ``["jpg", ".PNG"]`` -> ``(".jpg", ".png")``."""
    items = extensions.split(";") if isinstance(extensions, str) else list(extensions)
    out = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip())
    if not out:
        raise DataError(f"extensions {extensions!r} names no file extension; e.g. {list(IMAGE_EXTENSIONS)}")
    return out
