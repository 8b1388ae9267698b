"""The RADIO student: a timm ViT with CPE, summary tokens + registers and adaptor heads.

``forward(images [B,3,H,W] in [0,1]) -> StudentOutput`` with, per teacher, a summary
``[B, summary_dim]`` (from that teacher's own summary token; absent for teachers
without one, e.g. SAM) and a feature map ``[B, feature_dim, H/p, W/p]`` (from the
patch tokens), plus ``backbone``: the final normed patch tokens ``[B, D, H/p, W/p]``.

Of the timm ``VisionTransformer`` only the patch embedding, the blocks and the norms
are kept; its class token and fixed-size position embedding are replaced by

* a cropped position embedding (``students/cpe.py``): one table at
  ``max_resolution``, read through random per-sample windows in training and
  resampled whole at inference, so any H, W that are multiples of the patch size
  work, square or not;
* one learned summary token per teacher plus registers, padded so that
  ``teachers + registers`` is a multiple of ``register_multiple``; these prefix
  tokens get no position embedding;
* optional ViTDet windowed blocks (``students/vitdet.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from radiosharp.contracts import CLIP_MEAN, CLIP_STD, StudentOutput, check_image_size, seeded
from radiosharp.registry import STUDENTS
from students.adaptor import TeacherAdaptor
from students.cpe import CroppedPositionEmbedding
from students.vitdet import global_block_indices, run_windowed

SIZES = ("tiny", "real")
TINY_DIMS = {"embed_dim": 64, "depth": 4, "num_heads": 2}
DEFAULT_MAX_RESOLUTION = {"tiny": 512, "real": 2048}
TEACHER_KEYS = ("feature_dim", "summary_dim")


def count_registers(num_summary: int, multiple: int | None) -> int:
    """Registers needed so that ``num_summary + registers`` is a multiple of ``multiple``."""
    if not multiple:
        return 0
    if multiple < 0:
        raise ValueError(f"register_multiple must be >= 0 (0 or None disables padding), got {multiple}")
    return (-num_summary) % multiple


def check_teachers(teachers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, int | None]]:
    """Validate ``{name: {"feature_dim": int, "summary_dim": int | None}}``."""
    checked: dict[str, dict[str, int | None]] = {}
    for name, dims in (teachers or {}).items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"student teachers: bad teacher name {name!r} (a non-empty string without '.')")
        if not isinstance(dims, Mapping):
            raise ValueError(f"student teachers.{name}: expected a mapping with {TEACHER_KEYS}, got {dims!r}")
        unknown = set(dims) - set(TEACHER_KEYS)
        if unknown:
            raise ValueError(
                f"student teachers.{name}: unknown keys {sorted(unknown)}; valid keys: {', '.join(TEACHER_KEYS)}"
            )
        feature_dim, summary_dim = dims.get("feature_dim"), dims.get("summary_dim")
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"student teachers.{name}.feature_dim must be a positive int, got {feature_dim!r}")
        if summary_dim is not None and (not isinstance(summary_dim, int) or summary_dim < 1):
            raise ValueError(f"student teachers.{name}.summary_dim must be a positive int or None, got {summary_dim!r}")
        checked[name] = {"feature_dim": feature_dim, "summary_dim": summary_dim}
    return checked


class RadioStudent(nn.Module):
    """ViT + CPE + summary/register tokens + per-teacher MLP-v2 adaptors.

    Built by :func:`build_radio`, whose signature holds the options and their defaults;
    ``teachers`` comes checked by :func:`check_teachers`.
    """

    def __init__(
        self,
        vit: VisionTransformer,
        *,
        teachers: dict[str, dict[str, int | None]],
        max_resolution: int,
        register_multiple: int | None,
        vitdet_window: int | None,
        num_global: int,
        adaptor_hidden: int | None,
        adaptor_inner: int,
        cpe_min_area: float,
        cpe_max_aspect: float,
        grad_checkpointing: bool,
    ) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.patch_size = int(self.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        self.teacher_names = list(teachers)
        self.summary_dims = {name: dims["summary_dim"] for name, dims in teachers.items()}
        self.grad_checkpointing = grad_checkpointing
        if self.patch_embed.patch_size[0] != self.patch_embed.patch_size[1]:
            raise ValueError(f"student needs a square patch, got {self.patch_embed.patch_size}")

        if max_resolution < self.patch_size:
            raise ValueError(f"max_resolution ({max_resolution}) must be at least the patch size ({self.patch_size})")
        side = math.ceil(max_resolution / self.patch_size)
        self.cpe = CroppedPositionEmbedding(self.embed_dim, (side, side), cpe_min_area, cpe_max_aspect)

        self.num_summary_tokens = len(self.teacher_names)
        self.num_registers = count_registers(self.num_summary_tokens, register_multiple)
        prefix = torch.empty(1, self.num_prefix_tokens, self.embed_dim)
        self.prefix_tokens = nn.Parameter(nn.init.trunc_normal_(prefix, std=0.02))

        depth = len(self.blocks)
        self.vitdet_window = vitdet_window
        self.windowed_blocks: frozenset[int] = frozenset()
        if vitdet_window is not None:
            if vitdet_window < 1:
                raise ValueError(f"vitdet_window must be a positive number of patches or None, got {vitdet_window}")
            if num_global >= depth:
                raise ValueError(
                    f"with vitdet_window set, num_global ({num_global}) must be below the depth "
                    f"({depth}) so that some blocks are windowed"
                )
            self.windowed_blocks = frozenset(range(depth)) - set(global_block_indices(depth, num_global))

        hidden = adaptor_hidden or self.embed_dim
        self.adaptors = nn.ModuleDict(
            {
                name: TeacherAdaptor(self.embed_dim, hidden, dims["feature_dim"], dims["summary_dim"], adaptor_inner)
                for name, dims in teachers.items()
            }
        )
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        # Frozen teacher text towers for zero-shot (see attach_text_towers); a plain dict,
        # so they stay out of parameters(), state_dict() and exports.
        self.text_towers: dict[str, nn.Module] = {}

    def attach_text_towers(self, towers: Mapping[str, nn.Module]) -> None:
        """Give the student the text towers of its CLIP-like teachers, by teacher name.

        ``summary[name]`` is trained to match that teacher's image embedding, so the
        tower's ``encode_text`` output lives in the same space and zero-shot
        classification works on the student. Each tower must give ``summary_dim`` wide
        embeddings. They are not submodules: the student's weights and exports stay
        free of teacher weights, and ``.to(device)`` leaves them where they are (their
        ``encode_text`` moves the tokens to them).
        """
        checked = {}
        with_summary = {n: d for n, d in self.summary_dims.items() if d is not None}
        for name, tower in towers.items():
            if name not in with_summary:
                raise ValueError(
                    f"student: no summary head '{name}' for a text tower; teachers with one: "
                    f"{', '.join(with_summary) or '(none)'}"
                )
            width, expected = getattr(tower, "output_dim", None), with_summary[name]
            if width != expected:
                raise ValueError(
                    f"student: the text tower of '{name}' gives {width}-d embeddings but the "
                    f"summary head '{name}' is {expected}-d"
                )
            checked[name] = tower
        self.text_towers = checked

    @property
    def num_prefix_tokens(self) -> int:
        return self.num_summary_tokens + self.num_registers

    def check_size(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"student: expected images [B,3,H,W], got {tuple(images.shape)}")
        check_image_size(images.shape[-2], images.shape[-1], self.patch_size, "student")

    def _run_block(self, index: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        block = self.blocks[index]
        if index in self.windowed_blocks:
            return run_windowed(block, tokens, self.num_prefix_tokens, grid, self.vitdet_window)
        return block(tokens)

    def forward_tokens(
        self, images: torch.Tensor, num_blocks: int | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normed tokens ``[B, prefix + h*w, D]`` (summary tokens, registers, patches) and the grid.

        ``num_blocks``: run only the first that many blocks (then the final norm), for a
        teacher that reads an intermediate layer; None runs them all.
        """
        self.check_size(images)
        pixels = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        patches = self.patch_embed(
            pixels.to(self.prefix_tokens.dtype)
        )  # float32 images into a bf16 student too  # [B, h, w, D] (timm dynamic_img_size -> NHWC)
        batch, rows, cols, dim = patches.shape
        position = self.cpe(batch, (rows, cols), patches.device).to(patches.dtype)
        patches = (patches + position.permute(0, 2, 3, 1)).reshape(batch, rows * cols, dim)
        prefix = self.prefix_tokens.to(patches.dtype).expand(batch, -1, -1)
        tokens = self.norm_pre(torch.cat([prefix, patches], dim=1))
        for index in range(len(self.blocks) if num_blocks is None else num_blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(self._run_block, index, tokens, (rows, cols), use_reentrant=False)
            else:
                tokens = self._run_block(index, tokens, (rows, cols))
        return self.norm(tokens), (rows, cols)

    def forward(self, images: torch.Tensor) -> StudentOutput:
        tokens, (rows, cols) = self.forward_tokens(images)
        batch = tokens.shape[0]
        patches = tokens[:, self.num_prefix_tokens :]

        def to_map(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2)  # a channels-last view

        out = StudentOutput(backbone=to_map(patches))
        for index, (name, adaptor) in enumerate(self.adaptors.items()):
            if adaptor.summary is not None:
                out.summary[name] = adaptor.summary(tokens[:, index])
            out.features[name] = to_map(adaptor.features(patches))
        return out


def create_vit(size: str, backbone: str, drop_path_rate: float) -> VisionTransformer:
    """A timm ViT without class token or position embedding, random init."""
    overrides = dict(TINY_DIMS) if size == "tiny" else {}
    try:
        vit = timm.create_model(
            backbone,
            pretrained=False,
            num_classes=0,
            global_pool="",
            class_token=False,
            pos_embed="none",
            reg_tokens=0,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            **overrides,
        )
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ValueError(
            f"student backbone '{backbone}': {err}; use a timm ViT such as vit_base_patch16_224, "
            "vit_large_patch16_224 or vit_huge_patch16_224"
        ) from None
    if not isinstance(vit, VisionTransformer):
        raise ValueError(
            f"student backbone '{backbone}' is a {type(vit).__name__}, not a timm VisionTransformer; "
            "use e.g. vit_base_patch16_224, vit_large_patch16_224 or vit_huge_patch16_224"
        )
    return vit


@STUDENTS.register("radio")
def build_radio(
    teachers: dict[str, dict] | None = None,
    size: Literal["tiny", "real"] = "tiny",
    backbone: str = "vit_base_patch16_224",
    max_resolution: int | None = None,
    register_multiple: int | None = 8,
    vitdet_window: int | None = None,
    num_global: int = 4,
    adaptor_hidden: int | None = None,
    adaptor_inner: int = 1,
    cpe_min_area: float = 0.1,
    cpe_max_aspect: float = 4 / 3,
    drop_path_rate: float = 0.0,
    grad_checkpointing: bool = False,
    seed: int = 0,
) -> RadioStudent:
    """Build the RADIO student (options = the recipe's ``student:`` keys; the trainer passes ``teachers``).

    ``size: tiny`` keeps the backbone's architecture family with tiny dims
    (embed 64, depth 4, 2 heads) and, unless given, a 512 px position table;
    ``size: real`` uses the timm config of ``backbone`` and a 2048 px table. Weights
    are random (RADIO trains its student from scratch), drawn from ``seed`` without
    touching the global RNG.
    """
    if size not in SIZES:
        raise ValueError(f"student size '{size}' is not valid; valid sizes: {', '.join(SIZES)}")
    teachers = check_teachers(teachers)
    options = {
        "register_multiple": register_multiple,
        "vitdet_window": vitdet_window,
        "num_global": num_global,
        "adaptor_hidden": adaptor_hidden,
        "adaptor_inner": adaptor_inner,
        "cpe_min_area": cpe_min_area,
        "cpe_max_aspect": cpe_max_aspect,
        "grad_checkpointing": grad_checkpointing,
    }
    with seeded(seed):
        student = RadioStudent(
            create_vit(size, backbone, drop_path_rate),
            teachers=teachers,
            max_resolution=max_resolution or DEFAULT_MAX_RESOLUTION[size],
            **options,
        )
    return student  # the registry records the builder's options as student.build_config
