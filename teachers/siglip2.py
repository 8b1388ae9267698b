"""SigLIP 2 NaFlex teacher: native aspect ratios through transformers ``Siglip2VisionModel``.

- ``summary`` = the pooled image embedding of the attention-pool (MAP) head
  (``pooler_output``, 1152-d for SO400M), the vector SigLIP 2 compares with text.
- ``features`` = the patch tokens after the final LayerNorm, ``[B, C, H/16, W/16]``: the
  patch grid keeps the image's aspect ratio (``h != w``), as NaFlex was trained.

NaFlex models take patchified pixels (``[B, h*w, 16*16*3]``, each patch row-major with
the channel last, as ``Siglip2ImageProcessor`` cuts them), a patch mask and each
image's grid; their 16x16 position table is resized (bilinear, antialiased) to that
grid. Every image of a batch here has the same ``H x W``, so no patch is padding and
the mask is all ones. :meth:`Siglip2Teacher.naflex_size` gives the aspect-preserving
size the processor would pick for a patch budget, to feed whole images at their shape.

Why a family of its own rather than a source of ``siglip``: the fixed-resolution SigLIP
/ SigLIP 2 ids (``siglip`` family, ``source: hf``) are ``SiglipVisionModel`` with a
conv patch embedding and a square table resized by ``interpolate_pos_encoding``; the
NaFlex ids are another model type (``siglip2``) with another input format and
position resizing, and another default size, so sharing the builder would only add
branches to both.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from radiosharp.registry import TEACHERS
from teachers._contract import HubWeightOptions, check_choice
from teachers._transformers import HFAttentionPoolTeacher, hf_pretrained_or_seeded, hf_vision_config
from teachers._weights import load_weights_file

FAMILY = "siglip2"
DEFAULT_MODEL = "google/siglip2-so400m-patch16-naflex"
REAL_NATIVE = 256  # the processor's default budget: 256 patches of 16 px (16x16 for a square image)
TINY_NATIVE = 128
PATCH = 16
HF_MODEL_TYPES = ("siglip2", "siglip2_vision_model")
# Tiny dims: width 48 (has a Hadamard matrix), 4 heads of 12, 2 blocks, an 8x8 position table.
TINY_CONFIG = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_patches=64)
# The vision towers of the published NaFlex models (for `size: random` without the hub).
HF_CONFIG_COMMON = dict(patch_size=PATCH, num_patches=256, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
HF_CONFIGS = {
    "google/siglip2-base-patch16-naflex": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
    ),
    "google/siglip2-so400m-patch16-naflex": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
    ),
}
WEIGHT_PREFIXES = ("vision_model.",)


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, h*w, p*p*C]``: patches row-major, each as (row, column, channel)."""
    b, c, height, width = pixels.shape
    h, w = height // patch, width // patch
    x = pixels.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, patch * patch * c)


class Siglip2Teacher(HFAttentionPoolTeacher):
    """A frozen transformers ``Siglip2VisionModel`` (NaFlex) with its attention-pool head."""

    name = FAMILY

    def naflex_size(self, height: int, width: int, max_num_patches: int | None = None) -> tuple[int, int]:
        """The ``(H, W)`` to resize an ``height x width`` image to: the largest size of the same
        aspect ratio, in whole patches, with at most ``max_num_patches`` patches (default: as many
        as the native square has), as ``Siglip2ImageProcessor`` chooses it."""
        p = self.patch_size
        budget = max_num_patches or (self.native_size // p) ** 2
        if budget < 1 or height < 1 or width < 1:
            raise ValueError(f"{FAMILY}: naflex_size needs positive sizes, got {height}x{width}, budget {budget}")

        def side(scale: float, size: int) -> int:
            return max(p, math.ceil(size * scale / p) * p)

        low, high = 1e-6, 100.0
        while high - low >= 1e-5:  # the processor's binary search on the scale
            scale = (low + high) / 2
            if side(scale, height) * side(scale, width) <= budget * p * p:
                low = scale
            else:
                high = scale
        return side(low, height), side(low, width)

    def model_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        b = pixels.shape[0]
        h, w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        return {
            "pixel_values": patchify(pixels, self.patch_size),
            "pixel_attention_mask": torch.ones(b, h * w, dtype=torch.long, device=pixels.device),
            "spatial_shapes": torch.tensor([[h, w]] * b, dtype=torch.long, device=pixels.device),
        }


def _config(size: str, model: str, cache_dir: str | None) -> Any:
    from transformers import Siglip2VisionConfig

    if size == "tiny":
        return Siglip2VisionConfig(**TINY_CONFIG, patch_size=PATCH)
    if size == "random":
        check_choice(FAMILY, "model (with size=random)", model, list(HF_CONFIGS))
        return Siglip2VisionConfig(**HF_CONFIG_COMMON, **HF_CONFIGS[model])
    return hf_vision_config(FAMILY, model, cache_dir, HF_MODEL_TYPES)


@TEACHERS.register(FAMILY)
def build_siglip2(common: HubWeightOptions, model: str = DEFAULT_MODEL, layer: int = -1) -> Siglip2Teacher:
    """SigLIP 2 NaFlex (``teachers.<key>.family: siglip2``), any aspect ratio.

    - ``size``: ``real``, ``tiny`` (a ``Siglip2VisionModel`` of width 48, 2 blocks, 4 heads,
      an 8x8 position table, 128 px, seeded random weights) or ``random`` (the vision tower
      of a published NaFlex model, ``HF_CONFIGS``, with seeded random weights).
    - ``model``: hub id or local folder of a ``siglip2`` model (default
      ``google/siglip2-so400m-patch16-naflex``; also ``google/siglip2-base-patch16-naflex``).
    - ``weights``: a local state-dict file (a whole ``Siglip2Model`` or the vision model,
      transformers layout); the architecture comes from ``model``'s config.
    - ``native_size``: the side of the square the teacher runs at by default (256: the
      processor's 256-patch budget; 128 tiny); any ``H x W`` in multiples of 16 runs.
    - ``cache_dir``: the Hugging Face cache to read weights from (default HF_HUB_CACHE).
    - ``seed``: the random weights of ``size: tiny`` / ``random``.
    - ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
      the option), after the final LayerNorm; an intermediate layer gives no summary.
    """
    from transformers import Siglip2VisionModel

    common.check(FAMILY)
    weights_path, native = common.weights_and_native(FAMILY, (TINY_NATIVE, REAL_NATIVE), PATCH)
    config = _config(common.size, model, common.cache_dir)
    net = hf_pretrained_or_seeded(
        FAMILY, Siglip2VisionModel, model, config, common.size, weights_path, common.cache_dir, common.seed
    )
    if weights_path is not None:
        load_weights_file(net, weights_path, FAMILY, prefixes=WEIGHT_PREFIXES)
    return Siglip2Teacher(net.float(), native, layer).freeze()
