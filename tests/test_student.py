"""The RADIO student: shapes, CPE, registers, ViTDet, export round trip, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radiosharp.registry import STUDENTS
from radiosharp.student_io import load_student, save_student
from students.cpe import CroppedPositionEmbedding
from students.radio import build_radio, count_registers
from students.vitdet import global_block_indices, run_windowed, window_partition, window_unpartition

TEACHERS = {
    "dfn_clip": {"feature_dim": 24, "summary_dim": 20},
    "dinov2": {"feature_dim": 32, "summary_dim": 16},
    "sam": {"feature_dim": 12, "summary_dim": None},
}


@pytest.fixture(scope="module")
def student():
    return build_radio(teachers=TEACHERS, size="tiny", max_resolution=256).eval()


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def outputs_as_list(out) -> list[torch.Tensor]:
    return [out.backbone, *out.summary.values(), *out.features.values()]


# ---------------------------------------------------------------- shapes and tokens


@pytest.mark.parametrize("height,width", [(64, 96), (128, 128), (96, 48)])
def test_output_shapes(student, height, width):
    with torch.no_grad():
        out = student(images(2, height, width))
    grid = (height // 16, width // 16)
    assert out.backbone.shape == (2, student.embed_dim, *grid)
    assert set(out.features) == set(TEACHERS)
    for name, dims in TEACHERS.items():
        assert out.features[name].shape == (2, dims["feature_dim"], *grid)
    assert set(out.summary) == {"dfn_clip", "dinov2"}  # no summary head for SAM
    assert out.summary["dfn_clip"].shape == (2, 20)
    assert out.summary["dinov2"].shape == (2, 16)


def test_public_attributes(student):
    assert student.patch_size == 16
    assert student.embed_dim == 64
    assert student.teacher_names == list(TEACHERS)
    assert student.adaptors["sam"].summary is None


@pytest.mark.parametrize(
    "teachers,multiple,registers", [(3, 8, 5), (8, 8, 0), (9, 8, 7), (3, 0, 0), (3, None, 0), (1, 4, 3)]
)
def test_register_padding(teachers, multiple, registers):
    assert count_registers(teachers, multiple) == registers
    assert (teachers + registers) % (multiple or 1) == 0


def test_prefix_tokens_hold_summaries_and_registers(student):
    assert student.num_summary_tokens == 3 and student.num_registers == 5
    assert student.prefix_tokens.shape == (1, 8, student.embed_dim)
    tokens, grid = student.forward_tokens(images(1, 64, 96))
    assert tokens.shape == (1, 8 + grid[0] * grid[1], student.embed_dim)


def test_bad_size_names_nearest_valid_size(student):
    with pytest.raises(ValueError, match=r"70x100.*patch size 16.*64x96"):
        student(images(1, 70, 100))
    with pytest.raises(ValueError, match=r"expected images \[B,3,H,W\]"):
        student(torch.rand(1, 64, 64))


def test_builder_rejects_bad_options():
    with pytest.raises(ValueError, match="valid sizes: tiny, real"):
        build_radio(size="huge")
    with pytest.raises(ValueError, match=r"teachers\.sam\.feature_dim"):
        build_radio(teachers={"sam": {"summary_dim": None}})
    with pytest.raises(ValueError, match=r"unknown keys \['dim'\]"):
        build_radio(teachers={"sam": {"feature_dim": 8, "dim": 3}})
    with pytest.raises(ValueError, match="vit_base_patch16_224"):
        build_radio(backbone="no_such_vit")
    with pytest.raises(ValueError, match="num_global"):
        build_radio(vitdet_window=2, num_global=4)  # tiny depth is 4: nothing would be windowed


def test_registered_with_recipe_options():
    assert "radio" in STUDENTS.names()
    options = STUDENTS.options("radio")
    for key in (
        "teachers",
        "size",
        "backbone",
        "max_resolution",
        "register_multiple",
        "vitdet_window",
        "num_global",
        "adaptor_hidden",
        "adaptor_inner",
        "cpe_min_area",
        "cpe_max_aspect",
        "seed",
    ):
        assert key in options


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_radio(teachers=TEACHERS, seed=5, max_resolution=128)
    assert torch.equal(torch.rand(3), expected)
    b = build_radio(teachers=TEACHERS, seed=5, max_resolution=128)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key


# ---------------------------------------------------------------- CPE


def test_train_mode_crops_differ_per_sample(student):
    student.train()
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            out = student(images(1, 64, 64).expand(2, -1, -1, -1))
    finally:
        student.eval()
    assert not torch.allclose(out.backbone[0], out.backbone[1], atol=1e-4)


def test_eval_mode_is_deterministic_and_equal_for_identical_images(student):
    batch = images(1, 64, 96).expand(3, -1, -1, -1)
    with torch.no_grad():
        first, second = student(batch), student(batch)
    for x, y in zip(outputs_as_list(first), outputs_as_list(second)):
        assert torch.equal(x, y)
    assert torch.allclose(first.backbone[0], first.backbone[2], atol=1e-6)


def test_eval_position_embedding_is_bilinear_resize_of_table():
    """Square inputs read the whole table (non-square ones: see the unstretched-table test)."""
    cpe = CroppedPositionEmbedding(8, (32, 32)).eval()
    for grid in [(4, 4), (32, 32), (48, 48)]:
        expected = F.interpolate(cpe.table, size=grid, mode="bilinear", align_corners=False)
        assert torch.allclose(cpe(2, grid), expected.expand(2, -1, -1, -1), atol=1e-5)
    assert torch.allclose(cpe(1, (32, 32)), cpe.table, atol=1e-6)  # the table's own grid reads it as is


def test_window_read_equals_table_crop():
    """A window on table-cell boundaries read at its own cell count is exactly that crop."""
    cpe = CroppedPositionEmbedding(4, (32, 32))
    window = torch.tensor([[8 / 32, 4 / 32, 16 / 32, 12 / 32]])  # x0, y0, width, height
    crop = cpe.read(window, (12, 16))
    assert torch.allclose(crop, cpe.table[:, :, 4:16, 8:24], atol=1e-5)


def test_sampled_windows_respect_area_aspect_and_bounds():
    cpe = CroppedPositionEmbedding(4, (64, 64), min_area=0.1, max_aspect=4 / 3)
    torch.manual_seed(0)
    x0, y0, width, height = cpe.sample_windows(4096, torch.device("cpu")).unbind(-1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + width <= 1 + 1e-6).all() and (y0 + height <= 1 + 1e-6).all()
    area = width * height
    assert area.min() >= 0.1 - 1e-6 and area.max() <= 1 + 1e-6 and area.max() > 0.9
    aspect = width / height
    unclamped = (width < 1) & (height < 1)
    assert (aspect[unclamped] <= 4 / 3 + 1e-5).all() and (aspect[unclamped] >= 3 / 4 - 1e-5).all()
    free = x0[width < 0.99]
    assert len(set(free.tolist())) == len(free) > 3000  # every window that can move gets its own location


def test_train_mode_position_embeddings_differ_per_sample():
    cpe = CroppedPositionEmbedding(4, (32, 32)).train()
    torch.manual_seed(0)
    pos = cpe(3, (4, 6))
    assert pos.shape == (3, 4, 4, 6)
    assert not torch.allclose(pos[0], pos[1]) and not torch.allclose(pos[1], pos[2])


# ---------------------------------------------------------------- ViTDet


def test_global_block_indices_are_evenly_spaced_and_end_global():
    assert global_block_indices(12, 4) == [2, 5, 8, 11]
    assert global_block_indices(4, 2) == [1, 3]
    assert global_block_indices(32, 4) == [7, 15, 23, 31]
    with pytest.raises(ValueError, match="num_global"):
        global_block_indices(4, 0)


@pytest.mark.parametrize("grid,window", [((4, 6), 2), ((5, 7), 3), ((3, 3), 4)])
def test_window_partition_round_trip(grid, window):
    tokens = torch.randn(2, *grid, 8)
    windows, mask = window_partition(tokens, window)
    padded = (-grid[0]) % window or (-grid[1]) % window
    assert windows.shape[1] == window * window
    assert (mask is not None) == bool(padded)
    if mask is not None:
        assert int(mask.sum()) == 2 * grid[0] * grid[1]  # True exactly at the real tokens
    assert torch.equal(window_unpartition(windows, window, grid, batch=2), tokens)


def test_windowed_block_leaves_prefix_tokens_unchanged(student):
    block = student.blocks[0]
    tokens = torch.randn(2, 3 + 4 * 6, student.embed_dim)
    out = run_windowed(block, tokens, num_prefix=3, grid=(4, 6), window=2)
    assert torch.equal(out[:, :3], tokens[:, :3])
    assert not torch.allclose(out[:, 3:], tokens[:, 3:])


def test_vitdet_small_window_differs_from_global():
    common = dict(teachers=TEACHERS, max_resolution=128, seed=1)
    windowed = build_radio(vitdet_window=2, num_global=2, **common).eval()
    full = build_radio(**common).eval()
    assert windowed.windowed_blocks == {0, 2}
    full.load_state_dict(windowed.state_dict(), strict=True)  # windowing adds no parameters
    x = images(2, 64, 96)
    with torch.no_grad():
        a, b = windowed(x), full(x)
    assert a.backbone.shape == b.backbone.shape
    assert not torch.allclose(a.backbone, b.backbone, atol=1e-3)


@pytest.mark.parametrize(
    "size,window", [((64, 64), 4), ((64, 96), 6), ((64, 96), 8)]
)  # exact; rows padded; both padded
def test_vitdet_one_window_covering_grid_equals_global(size, window):
    """With no summary tokens (teachers=None, no registers), one window is global attention."""
    common = dict(teachers=None, register_multiple=0, max_resolution=128, seed=2)
    windowed = build_radio(vitdet_window=window, num_global=1, **common).eval()
    full = build_radio(**common).eval()
    assert windowed.num_prefix_tokens == 0 and windowed.windowed_blocks == {0, 1, 2}
    x = images(2, *size)
    with torch.no_grad():
        a, b = windowed(x).backbone, full(x).backbone
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- export and training


def test_export_round_trip_gives_identical_outputs(tmp_path):
    original = build_radio(teachers=TEACHERS, max_resolution=128, vitdet_window=2, num_global=2, seed=3).eval()
    save_student(tmp_path / "run", original)
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "model.json").is_file()
    loaded = load_student(tmp_path / "run")
    assert not loaded.training
    assert loaded.teacher_names == original.teacher_names
    x = images(2, 64, 48)
    with torch.no_grad():
        for a, b in zip(outputs_as_list(original(x)), outputs_as_list(loaded(x))):
            assert torch.equal(a, b)


def test_a_bf16_student_takes_float32_images():
    student = build_radio(teachers=TEACHERS, max_resolution=128, seed=3).eval()
    x = images(1, 64, 48)
    with torch.no_grad():
        ref = student(x)
        out = student.to(torch.bfloat16)(x)
    for name in TEACHERS:
        a, b = out.features[name], ref.features[name]
        assert a.dtype == torch.bfloat16 and ((a.float() - b).norm() / b.norm()).item() < 0.05


def test_export_with_trainer_config_and_missing_runs(tmp_path):
    student = build_radio(teachers=TEACHERS, max_resolution=64)
    config = {"name": "radio", "size": "tiny", "max_resolution": 64, "teachers": TEACHERS}  # as the trainer writes it
    save_student(tmp_path / "run", student, config)
    assert load_student(tmp_path / "run").state_dict().keys() == student.state_dict().keys()
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        load_student(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no exported model"):
        load_student(tmp_path / "empty")


def test_export_weight_mismatch_is_an_error(tmp_path):
    student = build_radio(teachers=TEACHERS, max_resolution=64)
    save_student(tmp_path / "run", student, {**student.build_config, "adaptor_inner": 2})
    with pytest.raises(RuntimeError, match="Missing key"):
        load_student(tmp_path / "run")


@pytest.mark.parametrize("vitdet_window", [None, 2])
def test_gradients_reach_every_parameter(vitdet_window):
    student = build_radio(teachers=TEACHERS, max_resolution=128, vitdet_window=vitdet_window, num_global=2).train()
    out = student(images(2, 64, 96))
    sum(t.sum() for t in outputs_as_list(out)).backward()
    for name, param in student.named_parameters():
        assert param.grad is not None, f"{name} gets no gradient"
        assert param.grad.abs().sum() > 0, f"{name} gets a zero gradient"


def test_grad_checkpointing_matches_plain_backward():
    plain = build_radio(teachers=TEACHERS, max_resolution=64, seed=4).train()
    ckpt = build_radio(teachers=TEACHERS, max_resolution=64, seed=4, grad_checkpointing=True).train()
    x = images(2, 32, 48)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(0)  # same CPE crops
        out = model(x)
        sum(t.square().mean() for t in outputs_as_list(out)).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for key in grads[0]:
        assert torch.allclose(grads[0][key], grads[1][key], atol=1e-5), key


def test_distillation_loss_falls():
    """A few AdamW steps on fixed targets lower the feature + summary loss."""
    student = build_radio(teachers=TEACHERS, max_resolution=64, seed=6).train()
    x = images(4, 32, 32, seed=1)
    g = torch.Generator().manual_seed(7)
    targets = {name: torch.randn(4, d["feature_dim"], 2, 2, generator=g) for name, d in TEACHERS.items()}
    summaries = {"dfn_clip": torch.randn(4, 20, generator=g), "dinov2": torch.randn(4, 16, generator=g)}
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = student(x)
        loss = sum(F.mse_loss(out.features[k], v) for k, v in targets.items())
        loss = loss + sum((1 - F.cosine_similarity(out.summary[k], v, dim=-1)).mean() for k, v in summaries.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert math.isfinite(losses[-1])


def test_bf16_autocast_with_padded_windows():
    student = build_radio(teachers=TEACHERS, max_resolution=128, vitdet_window=3, num_global=2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(images(2, 64, 80))
    assert out.features["dinov2"].shape == (2, 32, 4, 5)
    sum(t.float().sum() for t in outputs_as_list(out)).backward()
    assert student.cpe.table.grad is not None and torch.isfinite(student.cpe.table.grad).all()


@pytest.mark.slow
@pytest.mark.parametrize("backbone,embed_dim", [("vit_base_patch16_224", 768), ("vit_large_patch16_224", 1024)])
def test_real_backbones_build_and_run(backbone, embed_dim):
    student = build_radio(teachers=TEACHERS, size="real", backbone=backbone).eval()
    assert student.embed_dim == embed_dim and student.cpe.table_grid == (128, 128)  # 2048 px / 16
    with torch.no_grad():
        out = student(images(1, 32, 48))
    assert out.backbone.shape == (1, embed_dim, 2, 3)
    assert out.features["sam"].shape == (1, 12, 2, 3)


def test_cpe_keeps_the_table_unstretched_for_non_square_inputs():
    from students.cpe import CroppedPositionEmbedding

    cpe = CroppedPositionEmbedding(8, (16, 16)).eval()
    wide = cpe(1, (4, 8))  # twice as wide as tall: the top half of the table, not a squashed whole
    top_half = torch.nn.functional.interpolate(
        cpe.table[:, :, :8, :], size=(4, 8), mode="bilinear", align_corners=False
    )
    assert torch.allclose(wide, top_half, atol=1e-5)
    cpe.train()
    windows = cpe.sample_windows(4096, torch.device("cpu"), cpe.relative_aspect((4, 8)))
    ratio = windows[:, 2] / windows[:, 3]  # width / height in table fractions
    # aspect jitter around the input's 2:1, clamped where a side hits the table
    assert ratio.median() > 1.5 and ratio.max() <= 2 * 4 / 3 + 1e-4
