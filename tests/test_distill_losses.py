"""``distill.losses``: shift-equivariant feature loss, angle-balanced summaries, teacher-loss
balancing, PHI-S feature space with its export, and defaults that leave the loss as it was.

The shift tests use exactly shift-equivariant toy models (average-pooled patches through a
fixed channel map), so a known answer exists; the trainer tests use the tiny teachers and
student of ``tests/test_distill.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import KillableTrainer, assert_same_weights, base_recipe, fresh_process, kill_and_resume, weights, write

import radiosharp
from radiosharp.contracts import TeacherOutput
from radiosharp.engine import read_metrics
from radiosharp.images import resize
from radiosharp.phis import PhiS
from radiosharp.recipe import RecipeError, load_recipe
from radiosharp.student_io import load_student, save_student
from radiosharp.trainers import distill
from radiosharp.trainers.distill import DistillTrainer, parse_section
from radiosharp.trainers.distill_losses import (
    DistillLossConfig,
    ShiftStep,
    angle_balanced_summary_loss,
    angular_dispersion,
    balance_weights,
    masked_feature_loss,
    shift_generator,
    translate_images,
    untranslate_features,
)

# ----------------------------------------------------------------------------- toy models


class PatchFeatures(torch.nn.Module):
    """Average-pooled ``patch x patch`` cells through a fixed channel map, plus an optional
    fixed map added at every token position (a teacher's position noise): exactly
    equivariant to shifts by whole patches, but for that pattern."""

    def __init__(self, patch: int, channels: int = 6, pattern: torch.Tensor | None = None) -> None:
        super().__init__()
        self.patch = patch
        self.mix = torch.randn(channels, 3, generator=torch.Generator().manual_seed(3))
        self.pattern = pattern

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(images, self.patch)
        maps = torch.einsum("cd,bdhw->bchw", self.mix, cells)
        return maps + self.pattern if self.pattern is not None else maps


@dataclass
class ToyTeacher:
    patch_size: int
    native_size: int


class ToySlot:
    """What ShiftStep.targets needs of a TeacherSlot: the teacher's grid and its targets."""

    def __init__(self, model: PatchFeatures, native: int) -> None:
        self.key, self.model = "toy", model
        self.teacher, self.upsampled = ToyTeacher(model.patch, native), None

    def targets(self, images: torch.Tensor, upsample: bool = False) -> TeacherOutput:
        assert images.shape[-1] == self.teacher.native_size  # shifted at its native size, not resized again
        return TeacherOutput(None, self.model(images))


@dataclass
class ToyCall:
    slot: ToySlot
    upsample: bool
    parts: list[int]

    def run(self, inputs: list[torch.Tensor]) -> dict[int, TeacherOutput]:
        return {i: self.slot.targets(resize(inputs[i], (self.slot.teacher.native_size,) * 2)) for i in self.parts}


@dataclass
class ToyOut:
    features: dict[str, torch.Tensor]
    summary: dict[str, torch.Tensor]
    backbone: torch.Tensor | None = None


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def shifted_loss(student: PatchFeatures, teacher: PatchFeatures, x: torch.Tensor, step: int, cfg=None) -> float:
    """The shift-equivariant feature loss of one step, through ShiftStep as the trainer runs it."""
    cfg = cfg or DistillLossConfig(shift_equivariant=True)
    shift = ShiftStep(cfg, student.patch, seed=0, step=step, micro=0, process=0)
    out = ToyOut({"toy": student(shift.student_inputs([x])[0])}, {})
    out = shift.student_outputs([out])[0]
    target = shift.targets(ToyCall(ToySlot(teacher, x.shape[-1]), False, [0]), [x])[0]
    loss = masked_feature_loss(out.features["toy"], target.features, PhiS.identity(6), "raw", out.valid, target.valid)
    return float(loss)


# ----------------------------------------------------------------------------- shift-equivariant loss


def test_translation_is_undone_exactly_on_the_tokens_in_view():
    maps = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    shifts = torch.tensor([[1, -2], [0, 1]])
    moved = translate_images(maps, shifts)  # content moves by (dy, dx)
    assert torch.equal(moved[0, 0, 1:, :-2], maps[0, 0, :-1, 2:])
    back, valid = untranslate_features(moved, shifts)
    assert valid[0, 0].sum() == 5 * 4 and valid[1, 0].sum() == 6 * 5
    assert torch.equal(back * valid, maps * valid)
    assert torch.equal(back * (1 - valid), torch.zeros_like(back))


def test_shift_loss_is_zero_for_a_student_that_equals_the_shifted_teacher():
    """Same function, same grid, different random shifts: the plain loss of the maps as they
    come is far from zero, the shift-equivariant loss is zero."""
    model = PatchFeatures(patch=8)
    x = images(6, 64)
    cfg = DistillLossConfig(shift_equivariant=True, shift_std=1.0)
    shift = ShiftStep(cfg, 8, seed=0, step=0, micro=0, process=0)
    student_out = model(shift.student_inputs([x])[0])
    target = shift.targets(ToyCall(ToySlot(model, 64), False, [0]), [x])[0]
    assert shift.student_shifts[0].abs().sum() > 0
    assert F.mse_loss(student_out, target.features) > 1e-3  # the views really differ
    out = shift.student_outputs([ToyOut({"toy": student_out}, {})])[0]
    loss = masked_feature_loss(out.features["toy"], target.features, PhiS.identity(6), "raw", out.valid, target.valid)
    assert float(loss) < 1e-12


def test_shift_loss_is_zero_across_grids_for_the_teacher_map_moved_into_the_student_frame():
    """A 4x4 student against an 8x8 teacher: the student's map is the teacher's map on its grid,
    moved by the student's shift; the teacher's shifted map has garbage where it saw no content."""
    teacher_map = torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    d_s, d_t = torch.tensor([[1, 0], [0, -1], [1, 1]]), torch.tensor([[-2, 1], [1, 0], [0, 2]])
    pred = translate_images(resize(teacher_map, (4, 4)), d_s)
    target = translate_images(teacher_map, d_t)
    for b, (dy, dx) in enumerate(d_t.tolist()):  # what the teacher saw of the fill is not the content
        if dy > 0:
            target[b, :, :dy] = 7.0
        if dx > 0:
            target[b, :, :, :dx] = -7.0
    pred_back, pred_valid = untranslate_features(pred, d_s)
    target_back, target_valid = untranslate_features(target, d_t)
    loss = masked_feature_loss(pred_back, target_back, PhiS.identity(5), "raw", pred_valid, target_valid)
    assert float(loss) < 1e-10
    assert float(masked_feature_loss(pred_back, target_back, PhiS.identity(5))) > 0.01  # unmasked: not zero
    assert float(masked_feature_loss(pred, target, PhiS.identity(5))) > 0.5  # not moved back: far from zero


def test_a_fixed_position_pattern_in_the_teacher_is_not_rewarded():
    """Teacher = content + a fixed pattern at its token positions. With the plain loss the
    student that copies the pattern is perfect; with the shift-equivariant loss (default
    shift distribution) the content-only student scores better: the pattern is not learnt."""
    pattern = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(2)).sign()
    teacher = PatchFeatures(8, pattern=pattern)
    content_only, with_pattern = PatchFeatures(8), PatchFeatures(8, pattern=pattern)
    x = images(16, 64, seed=4)
    plain = {
        name: float(F.mse_loss(m(x), teacher(x))) for name, m in (("content", content_only), ("pattern", with_pattern))
    }
    assert plain["pattern"] == 0 and plain["content"] == pytest.approx(1.0)
    shifted = {
        name: sum(shifted_loss(m, teacher, x, step) for step in range(40)) / 40
        for name, m in (("content", content_only), ("pattern", with_pattern))
    }
    assert shifted["content"] == pytest.approx(1.0, abs=1e-5)  # the pattern's energy, whatever the shift
    assert shifted["pattern"] > 1.2 * shifted["content"], shifted


def test_shifts_are_a_pure_function_of_seed_step_micro_process_partition_and_stream():
    def draw(*key):
        return torch.randn(8, generator=shift_generator(*key))

    assert torch.equal(draw(0, 5, 0, 0, 1, "student"), draw(0, 5, 0, 0, 1, "student"))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(draw(0, 5, 0, 0, 1, "student"), draw(0, 5, 0, 0, 1, "student"))
    others = [(1, 5, 0, 0, 1, "student"), (0, 6, 0, 0, 1, "student"), (0, 5, 1, 0, 1, "student")]
    others += [(0, 5, 0, 1, 1, "student"), (0, 5, 0, 0, 0, "student"), (0, 5, 0, 0, 1, "teacher:a")]
    assert all(not torch.equal(draw(0, 5, 0, 0, 1, "student"), draw(*key)) for key in others)


def test_micro_steps_of_one_step_draw_apart_and_each_new_step_counts_from_zero():
    """With grad_accum, train_step runs several times per step: each micro-step has its own shifts,
    and the count restarts at every step, so a run resumed at a step boundary draws alike."""
    from types import SimpleNamespace

    from radiosharp.trainers.distill_losses import begin_shift_step

    def trainer():
        cfg = SimpleNamespace(losses=DistillLossConfig(shift_equivariant=True, shift_std=2.0))
        return SimpleNamespace(section=cfg, patch_size=8, recipe=SimpleNamespace(seed=0), accelerator=SimpleNamespace())

    def draws(t, step):
        shift = begin_shift_step(t, step)
        shift.student_inputs([images(8, 64)])
        return shift.student_shifts[0]

    run = trainer()
    step3_a, step3_b, step4_a = draws(run, 3), draws(run, 3), draws(run, 4)
    assert not torch.equal(step3_a, step3_b)
    resumed = trainer()  # a fresh trainer that starts at step 4
    assert torch.equal(draws(resumed, 4), step4_a)
    assert torch.equal(draws(trainer(), 3), step3_a)
    off = SimpleNamespace(section=SimpleNamespace(losses=DistillLossConfig()))
    x = [images(2, 64)]
    assert begin_shift_step(off, 0).student_inputs(x) is x  # off: nothing is drawn or moved


# ----------------------------------------------------------------------------- summaries and balancing


def planar(angles: list[float], dim: int = 8) -> torch.Tensor:
    """Unit vectors at ``angles`` (radians) in the first two axes of ``dim`` dims, scaled arbitrarily."""
    out = torch.zeros(len(angles), dim)
    out[:, 0] = torch.cos(torch.tensor(angles))
    out[:, 1] = torch.sin(torch.tensor(angles))
    return out * torch.arange(1, len(angles) + 1).view(-1, 1)  # length plays no part


def test_angle_balanced_summary_loss_known_answer_equalizes_narrow_and_wide_cones():
    for spread in (0.05, 1.0):  # a narrow-cone teacher (SigLIP-like) and a wide one
        target = planar([spread, -spread, spread, -spread])
        pred = planar([0.0] * 4)  # the student answers the cone's axis
        loss, scale = angle_balanced_summary_loss(pred, target)
        assert float(angular_dispersion(target)) == pytest.approx(4 / 6 * 2 * spread, rel=1e-4)
        # every angle error is `spread`; the mean pairwise angle is (4 pairs of 2*spread + 2 of 0) / 6
        assert float(loss) == pytest.approx(spread / (8 / 6 * spread), rel=1e-4)
        assert float(scale) == pytest.approx(1 / (8 / 6 * spread), rel=1e-4)
    narrow = float(distill.summary_loss(planar([0.0] * 2), planar([0.05, -0.05])))
    wide = float(distill.summary_loss(planar([0.0] * 2), planar([1.0, -1.0])))
    assert wide > 300 * narrow  # what 1 - cos does instead
    same, _ = angle_balanced_summary_loss(planar([0.3, -0.2]), planar([0.3, -0.2]))
    assert float(same) < 0.01
    assert float(angular_dispersion(planar([0.4]))) == pytest.approx(math.pi / 2)


def test_balance_weights_equalize_contributions_known_answer():
    terms = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(4.0)}
    w = balance_weights(terms)
    assert [float(w[k]) for k in "abc"] == pytest.approx([7 / 3, 7 / 6, 7 / 12])
    assert [float(w[k] * terms[k]) for k in "abc"] == pytest.approx([7 / 3] * 3)  # equal contributions
    assert float(sum(w[k] * terms[k] for k in "abc")) == pytest.approx(7.0)  # the total keeps its value
    capped = balance_weights({"a": torch.tensor(0.0), "b": torch.tensor(1.0)})
    assert float(capped["a"]) == pytest.approx(1000.0) and float(capped["b"]) == pytest.approx(0.5)
    assert [float(v) for v in balance_weights({"a": torch.tensor(0.0), "b": torch.tensor(0.0)}).values()] == [1, 1]
    # the weights carry no gradient: each term's gradient is scaled by mean / L_t
    x = torch.tensor(2.0, requires_grad=True)
    loss_a, loss_b = x**2, 3 * x
    w = balance_weights({"a": loss_a, "b": loss_b})
    (w["a"] * loss_a + w["b"] * loss_b).backward()
    assert float(x.grad) == pytest.approx(5.0 * (2 * 2 / 4 + 3 / 6))


# ----------------------------------------------------------------------------- in the trainer


def built(tmp_path: Path, phis: dict[str, str], **losses: Any) -> DistillTrainer:
    recipe = base_recipe(tmp_path / "run", phis)
    if losses:
        recipe["distill"]["losses"] = losses
    fresh_process()
    trainer = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", recipe)))
    trainer.build()
    return trainer


def test_defaults_leave_the_loss_bit_identical(tmp_path, phis):
    """train_step with the defaults equals today's formula written out, bit for bit."""
    trainer = built(tmp_path, phis)
    assert trainer.section.losses == DistillLossConfig()
    batch = {"image": images(4, 128, seed=7)}
    torch.manual_seed(0)
    loss, metrics = trainer.train_step(batch, 0)

    torch.manual_seed(0)  # the student's CPE crops draw from the global RNG
    x = batch["image"]
    out = trainer.model.student(resize(x, (64, 64)))
    expected = torch.zeros(())
    for key, slot in trainer.stack.items():
        target = slot.targets(x)
        loss_f = (
            F.mse_loss(out.features[key].float(), resize(target.features.float(), (4, 4))) / slot.phi_s.eigenvalue_mean
        )
        loss_s = (1 - F.cosine_similarity(out.summary[key].float(), target.summary.float(), dim=-1)).mean()
        expected = expected + (slot.config.feature_weight * loss_f + slot.config.summary_weight * loss_s)
    assert torch.equal(loss, 1.0 * expected)
    assert set(metrics) == {f"low/{k}/{t}" for k in ("dfn_clip", "dinov2") for t in ("features", "summary")}


def test_balance_logs_per_teacher_weights_and_equalizes_the_terms(tmp_path, phis, monkeypatch):
    trainer = built(tmp_path, phis, balance="equal")
    monkeypatch.setattr(distill, "summary_loss", lambda pred, target: pred.sum() * 0)
    # DFN CLIP (64 channels) at 1.0, DINOv2 (32 channels) at 3.0
    monkeypatch.setattr(distill, "feature_loss", lambda p, t, phi: p.sum() * 0 + (1.0 if p.shape[1] == 64 else 3.0))
    loss, metrics = trainer.train_step({"image": images(4, 128)}, 0)
    assert float(loss.detach()) == pytest.approx(4.0)  # the total keeps its value
    assert float(metrics["low/dfn_clip/balance_weight"]) == pytest.approx(2.0)
    assert float(metrics["low/dinov2/balance_weight"]) == pytest.approx(2 / 3)


def test_feature_space_phi_s_compares_heads_with_normalized_targets():
    """The same loss value as raw space, for heads that predict the PHI-S map of the raw prediction."""
    phi, _ = constructed_phis(32, seed=3)  # a mean far from 0 and a scale far from 1
    raw_pred = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(5)) + phi.mu.view(1, -1, 1, 1)
    target = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(6)) + phi.mu.view(1, -1, 1, 1)
    raw = distill.feature_loss(raw_pred, target, phi)
    normalized = masked_feature_loss(phi(raw_pred), target, phi, "phi_s")
    torch.testing.assert_close(normalized, raw, rtol=1e-4, atol=1e-6)
    assert float(masked_feature_loss(raw_pred, target, phi, "phi_s")) > 2 * float(raw)  # heads in the wrong space


OPTIONS = {
    "shift": ["distill.losses.shift_equivariant=true"],
    "angle": ["distill.losses.summary=angle_balanced"],
    "balance": ["distill.losses.balance=equal"],
    "phi_s": ["distill.losses.feature_space=phi_s"],
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_tiny_run_with_each_option_trains(tmp_path, phis, option):
    recipe = base_recipe(tmp_path / "run", phis)
    recipe["train"]["steps"] = 16
    fresh_process()
    run_dir = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", recipe), OPTIONS[option])).run()
    rows = read_metrics(run_dir)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    if option == "balance":
        assert {"low/dfn_clip/balance_weight", "low/dinov2/balance_weight"} <= rows[-1].keys()
    if option == "angle":
        assert {"low/dfn_clip/summary_scale", "low/dinov2/summary_scale"} <= rows[-1].keys()
    if option == "phi_s":
        config = json.loads((run_dir / "model.json").read_text())["config"]
        assert config["feature_space"] == "phi_s" and config["feature_normalizers"] == ["dfn_clip", "dinov2"]


def test_resume_with_the_shift_loss_equals_the_uninterrupted_run(tmp_path, phis):
    def recipe(name: str, resume: bool = False, shift: bool = True) -> Any:
        data = base_recipe(tmp_path / name, phis, resume=resume)
        data["distill"]["losses"] = {"shift_equivariant": shift, "shift_std": 1.0}
        data["train"].update(steps=6, checkpoint_every=3)
        return load_recipe(write(tmp_path / f"{name}.yaml", data))

    KillableTrainer(recipe("straight")).run()
    fresh_process()
    kill_and_resume(KillableTrainer, recipe, tmp_path / "killed")  # the shifts must not come from the global RNG
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"), atol=1e-6)
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    assert [r["loss"] for r in read_metrics(tmp_path / "killed")] == pytest.approx(losses_a, abs=1e-6)
    fresh_process()
    DistillTrainer(recipe("unshifted", shift=False)).run()  # the shifts do change the run
    assert [r["loss"] for r in read_metrics(tmp_path / "unshifted")] != pytest.approx(losses_a, abs=1e-4)


# ----------------------------------------------------------------------------- export in teacher space


def constructed_phis(dim: int, seed: int) -> tuple[PhiS, torch.Tensor]:
    """PHI-S of constructed data ``mu + A z`` (a known mean, a known anisotropic covariance)."""
    g = torch.Generator().manual_seed(seed)
    mu = 5.0 + torch.arange(dim, dtype=torch.float64)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, dim, dtype=torch.float64)
    data = mu + torch.randn(4096, dim, generator=g, dtype=torch.float64) @ mix.T
    return PhiS.from_stats(data.mean(0), torch.cov(data.T)), data.mean(0).float()


def test_load_student_returns_features_in_the_teacher_space(tmp_path):
    dims = {"dfn_clip": {"feature_dim": 64, "summary_dim": 24}, "dinov2": {"feature_dim": 32, "summary_dim": 32}}
    student = radiosharp.build_student({"name": "radio", "size": "tiny"}, teachers=dims).eval()
    phi, mean = constructed_phis(32, seed=8)
    save_student(tmp_path / "run", student, feature_normalizers={"dinov2": phi})
    x = images(2, 64, seed=9)
    with torch.no_grad():
        heads = student(x)
        teacher_space = load_student(tmp_path / "run")(x)
        normalized = load_student(tmp_path / "run", normalized=True)(x)
    torch.testing.assert_close(teacher_space.features["dinov2"], phi.inverse(heads.features["dinov2"]))
    assert torch.equal(normalized.features["dinov2"], heads.features["dinov2"])
    assert torch.equal(teacher_space.features["dfn_clip"], heads.features["dfn_clip"])  # no normalizer stored
    assert torch.equal(teacher_space.summary["dinov2"], heads.summary["dinov2"])

    # known answer: a head that predicts 0 (the PHI-S mean) comes back as the teacher's mean feature
    final = student.adaptors["dinov2"].features.final[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.zero_()
    save_student(tmp_path / "zero", student, feature_normalizers={"dinov2": phi})
    reloaded = load_student(tmp_path / "zero")
    with torch.no_grad():
        out = reloaded(x).features["dinov2"]
    torch.testing.assert_close(out, mean.view(1, -1, 1, 1).expand_as(out), atol=1e-4, rtol=0)
    # re-exporting the loaded student keeps its normalizers; the state dict never holds them
    assert not any(k.startswith("feature_normalizers") for k in reloaded.state_dict())
    save_student(tmp_path / "again", reloaded)
    with torch.no_grad():
        torch.testing.assert_close(load_student(tmp_path / "again")(x).features["dinov2"], out)


def test_normalized_needs_an_export_of_phi_s_heads(tmp_path):
    dims = {"dinov2": {"feature_dim": 32, "summary_dim": 32}}
    save_student(tmp_path / "raw", radiosharp.build_student({"name": "radio", "size": "tiny"}, teachers=dims))
    with pytest.raises(ValueError, match="stores no PHI-S"):
        load_student(tmp_path / "raw", normalized=True)


def test_init_from_refuses_heads_of_another_feature_space(tmp_path, phis):
    dims = {"dfn_clip": {"feature_dim": 64, "summary_dim": 24}, "dinov2": {"feature_dim": 32, "summary_dim": 32}}
    student = radiosharp.build_student({"name": "radio", "size": "tiny"}, teachers=dims)
    save_student(tmp_path / "phi_run", student, feature_normalizers={"dinov2": PhiS.load(phis["dinov2"])})
    recipe = base_recipe(tmp_path / "run", phis, init_from=str(tmp_path / "phi_run"))
    fresh_process()
    with pytest.raises(RecipeError, match=r"feature_space=phi_s \(valid: raw, phi_s\)"):
        DistillTrainer(load_recipe(write(tmp_path / "r.yaml", recipe))).build()


@pytest.mark.parametrize(
    "override,message",
    [
        ("distill.losses.summary=angle", r"distill\.losses\.summary.*cosine.*angle_balanced"),
        ("distill.losses.feature_space=pca", r"distill\.losses\.feature_space.*raw.*phi_s"),
        ("distill.losses.shift=true", r"unknown key 'distill\.losses\.shift'"),
        ("distill.losses.max_shift=0", r"distill\.losses\.max_shift"),
    ],
)
def test_bad_loss_options_are_recipe_errors(tmp_path, phis, override, message):
    recipe = load_recipe(write(tmp_path / "r.yaml", base_recipe(tmp_path / "run", phis)), [override])
    with pytest.raises(RecipeError, match=message):
        parse_section(recipe)
