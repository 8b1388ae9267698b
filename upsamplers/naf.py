"""``naf``: NAF (Chambon et al. 2025), neighbourhood attention filtering guided by the image only.

The low-res features ``[B,C,h,w]`` are bilinearly upsampled to the output grid
``[B,C,H,W]`` (``H = u*h``) and each output pixel ``i`` takes an attention-weighted mean
of them over a ``k x k`` window::

    x = E(standardize(image resized to H x W))           # [B,D,H,W] image encoding
    q, k = RoPE(Wq x), RoPE(Wk x)                        # per head, 2-D rotary positions
    out[i] = sum_o softmax_o(q[i] . k[i+o] / sqrt(d) + b[o]) * bilinear(lowres)[i+o]

``E`` is two small conv branches on ImageNet-standardized RGB, concatenated: a 1x1
branch (per-pixel colour) and a 3x3 branch (local texture), each a stem conv and
``encoder_blocks`` residual blocks (GroupNorm, SiLU, conv, twice), as NAF's encoder.
The attention weights depend on the IMAGE only and the values are never projected,
so the module has no feature-width parameter: ``dim`` is accepted (any, 0 included)
and stored as 0, and one trained model filters features of any width.

Heads: the ``num_heads`` attention heads split the encoding (``D/heads`` channels
each, a multiple of 4 for the RoPE). Feature channel ``c`` is filtered by head
``c mod heads`` (interleaved; a width not divisible by the heads is zero-padded to the
next multiple, the padding dropped from the output). We chose interleaving over NAF's
contiguous groups (``"(n d)"``), and over the fallback "one head when not divisible",
because then a channel's filter depends on its index only, never on the width: the
output for the first 16 channels of a 48-wide map equals the output for those 16
channels alone, and every width is treated alike.

Departures from the paper / valeoai/NAF, on purpose: keys are computed on the output
grid (NAF average-pools them to the low-res grid and uses a natten window dilated by
``u``), so the window here spans ``k`` output pixels (``k/u`` low-res cells) and runs on
the project's memory-lean kernel (``upsamplers._kernels``; out-of-map keys masked);
queries and keys get their own 1x1 projection of one shared encoding (NAF uses the
encoding itself for both); a learned per-head offset bias ``b[o]`` (NAF: RoPE only),
initialized to a Gaussian ``-|o|^2 / (2 u^2)`` (std = ``u`` output pixels), so at
initialization the filter is a local, smooth average of the bilinear lift rather than
a ``k x k`` box blur; the encoder runs on the image resized to ``image_scale``
times the output grid and is area-pooled to it (NAF caps the input at 4x the output);
the encoder width defaults to 64 (NAF: 256) to stay CPU-sized. Defaults otherwise follow
NAF: window 9, 4 heads, 2 blocks per branch, RoPE base 100.
"""

from __future__ import annotations

from torch import Tensor, nn

from radiosharp.registry import UPSAMPLERS
from upsamplers._base import UpsampleSpec
from upsamplers._image_guided import ImageEncoder, ImageGuidedWindowUpsampler, WindowOptions, rotary_heads


class NafUpsampler(ImageGuidedWindowUpsampler):
    """Image-guided ``k x k`` neighbourhood attention over bilinearly lifted features (module docstring)."""

    def __init__(self, spec: UpsampleSpec = UpsampleSpec(), window: WindowOptions = WindowOptions()) -> None:
        super().__init__("naf", spec, window)  # feature-agnostic: any width passes
        width = window.encoder_dim
        self.encoder = ImageEncoder(width, window.encoder_blocks)
        self.to_q = nn.Conv2d(width, width, 1)
        self.to_k = nn.Conv2d(width, width, 1)

    def attention_inputs(self, images: Tensor, lowres: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Rotated queries and keys ``[B,heads,D/heads,H,W]`` on the output grid, from the image only."""
        x = self.encoder(images, size, self.image_scale)
        q = rotary_heads(self.to_q(x), self.num_heads, self.rope_base)
        k = rotary_heads(self.to_k(x), self.num_heads, self.rope_base)
        return q, k


# the class is the builder (one signature); the registry records its options as build_config
build_naf = UPSAMPLERS.register("naf")(NafUpsampler)
