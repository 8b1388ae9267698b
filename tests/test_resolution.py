"""Partition geometry of ``kind: distill`` (radiosharp.trainers.resolution): stochastic
multi-resolution sizes, mosaic augmentation and any aspect ratio.

The draw is a pure function of (seed, step, partition); a resumed stochastic run equals
the uninterrupted one and two processes equal one; a mosaic's tiles are its downscaled
source images and the teachers see the very mosaic the student sees; non-square
partitions train end to end on the right grids; bad values fail in one line. Tiny
teachers (112-128 px native) and the tiny /16 student, as in test_distill.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import (
    REPO,
    KillableTrainer,
    Killed,
    assert_same_weights,
    base_recipe,
    fresh_process,
    kill_and_resume,
    torchrun,
    weights,
    write,
)

from radiosharp.engine import read_metrics
from radiosharp.images import resize
from radiosharp.recipe import load_recipe
from radiosharp.train import main as train_main
from radiosharp.trainers import distill
from radiosharp.trainers.common import TeacherSlot
from radiosharp.trainers.distill import DistillTrainer, PartitionConfig
from radiosharp.trainers.resolution import (
    InputPlan,
    compose_mosaic,
    crop_to_aspect,
    draw_generator,
    mosaic_sources,
    partition_inputs,
    plan_partition,
)

LOW = list(range(128, 433, 32))  # 128, 160, ..., 416: multiples of 16
DETERMINISTIC_CPE = {"name": "radio", "size": "tiny", "cpe_min_area": 1.0, "cpe_max_aspect": 1.0}


def part(**options: Any) -> PartitionConfig:
    return PartitionConfig(name="low", batch_size=4, **options)


def plans(options: PartitionConfig, steps: range, seed: int = 0, index: int = 0) -> list[InputPlan]:
    return [plan_partition(options, 16, seed, step, index) for step in steps]


# ----------------------------------------------------------------------------- the draw


def test_the_draw_is_a_pure_function_of_seed_step_and_partition():
    options = part(sizes=LOW, mosaic=[1, 2, 3])
    first = plans(options, range(300))
    assert first == plans(options, range(300))  # same inputs, same plans (no hidden state)
    assert plans(options, range(200, 300)) == first[200:]  # a run resumed at step 200 draws the same
    assert {p.size for p in first} == {(s, s) for s in LOW}  # steps vary and cover the set
    assert {p.mosaic for p in first} == {1, 2, 3}
    assert len({p.size for p in first[:10]}) > 3
    assert plans(options, range(300), seed=1) != first
    assert plans(options, range(300), index=1) != first  # partitions draw apart
    # the size draw does not move when another option is added to the recipe
    assert [p.size for p in plans(part(sizes=LOW), range(300))] == [p.size for p in first]
    # the global RNG is neither read nor advanced
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    assert plans(options, range(50)) == first[:50]
    torch.random.set_rng_state(state)


def test_fixed_sizes_and_aspect_ratios_give_whole_patches():
    assert plans(part(size=224), range(3)) == [InputPlan((224, 224))] * 3
    assert plans(part(size=(384, 512)), range(3)) == [InputPlan((384, 512))] * 3
    drawn = {p.size for p in plans(part(size=384, aspect_ratios=[0.5, 1.0, 2.0]), range(100))}
    # the side's area kept (384^2 = 147456), each side rounded to whole 16 px patches
    assert drawn == {(544, 272), (384, 384), (272, 544)}
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in drawn)


def test_a_fixed_square_partition_feeds_the_images_as_before():
    """Default recipes stay bit-identical: student input = resize(images), teachers get the images."""
    images = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    student, teachers = partition_inputs(images, plan_partition(part(size=96), 16, 0, 5, 0))
    assert teachers is images
    assert torch.equal(student, resize(images, (96, 96)))


# ----------------------------------------------------------------------------- mosaic


def test_mosaic_tiles_are_the_downscaled_source_images():
    colours = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    flat = colours[:, :, None, None].expand(6, 3, 40, 40).clone()
    sources = mosaic_sources(6, 2, torch.Generator().manual_seed(1))
    # every tile position is a permutation of the batch: each image once per position
    assert all(sorted(sources[:, j].tolist()) == list(range(6)) for j in range(4))
    mosaic = compose_mosaic(flat, sources, (64, 64))
    assert mosaic.shape == (6, 3, 64, 64)
    for i in range(6):
        for j, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            tile = mosaic[i, :, 32 * r : 32 * r + 32, 32 * c : 32 * c + 32]
            expected = colours[sources[i, j]][:, None, None].expand_as(tile)
            torch.testing.assert_close(tile, expected)

    # textured images, a 3x3 grid that does not divide the side, a non-square mosaic
    images = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    sources = mosaic_sources(4, 3, torch.Generator().manual_seed(3))
    mosaic = compose_mosaic(images, sources, (64, 96))
    rows, cols = [0, 21, 43, 64], [0, 32, 64, 96]
    for i in range(4):
        for r in range(3):
            for c in range(3):
                tile = mosaic[i, :, rows[r] : rows[r + 1], cols[c] : cols[c + 1]]
                source = crop_to_aspect(images[sources[i, 3 * r + c]], (64, 96))  # 64 x 96 of the 96 x 96
                assert source.shape[-2:] == (64, 96)
                assert torch.equal(tile, resize(source[None], tuple(tile.shape[-2:]))[0])


def test_teachers_see_the_mosaic_the_student_sees(tmp_path, phis, monkeypatch):
    data = base_recipe(tmp_path / "run", phis)
    data["distill"] = {
        "partitions": [
            {"name": "low", "size": 64, "batch_size": 2},
            {"name": "hi", "sizes": [80, 96], "mosaic": [2], "batch_size": 2},
        ]
    }
    trainer = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", data)))
    trainer.build()
    seen: list[torch.Tensor] = []
    original = TeacherSlot.targets
    monkeypatch.setattr(TeacherSlot, "targets", lambda self, x, upsample=False: seen.append(x) or original(self, x))
    student_in: list[list[torch.Tensor]] = []
    forward = trainer.model.forward
    monkeypatch.setattr(trainer.model, "forward", lambda xs: student_in.append(xs) or forward(xs))
    batch = {"image": torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))}
    loss, metrics = trainer.train_step(batch, 7)

    low, hi = student_in[0]
    side = plan_partition(trainer.section.partitions[1], 16, 0, 7, 1).size[0]
    assert low.shape == (2, 3, 64, 64) and hi.shape == (2, 3, side, side)
    # each teacher: one call on the low images (as given), one on the hi mosaic itself
    assert len(seen) == 4
    assert sum(torch.equal(x, batch["image"][:2]) for x in seen) == 2
    assert sum(torch.equal(x, hi) for x in seen) == 2
    # the mosaic holds both hi images, each in two of its four tiles
    tile = side // 2
    tiles = [hi[i, :, r : r + tile, c : c + tile] for i in range(2) for r in (0, tile) for c in (0, tile)]
    expected = resize(batch["image"][2:], (tile, tile))
    assert all(any(torch.equal(t, e) for e in expected) for t in tiles)
    assert torch.isfinite(loss) and "hi/dinov2/features" in metrics


# ----------------------------------------------------------------------------- any aspect ratio


def test_non_square_partitions_train_end_to_end_on_their_grids(tmp_path, phis, monkeypatch):
    calls: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    original = distill.feature_loss

    def spy(pred, target, phi_s):
        calls.add((tuple(pred.shape[-2:]), tuple(target.shape[-2:])))
        return original(pred, target, phi_s)

    monkeypatch.setattr(distill, "feature_loss", spy)
    teacher_inputs: set[tuple[int, int]] = set()
    targets = TeacherSlot.targets
    monkeypatch.setattr(
        TeacherSlot,
        "targets",
        lambda self, x, upsample=False: teacher_inputs.add(tuple(x.shape[-2:])) or targets(self, x, upsample),
    )
    data = base_recipe(tmp_path / "run", phis)
    data["distill"] = {
        "partitions": [
            {"name": "wide", "size": [48, 80], "batch_size": 2},
            {"name": "any", "size": 64, "aspect_ratios": [0.5, 2.0], "batch_size": 2},
        ]
    }
    data["train"]["steps"] = 6
    run_dir = DistillTrainer(load_recipe(write(tmp_path / "r.yaml", data))).run()

    # student grids: 48x80 -> 3x5; 64 px at W/H 0.5 -> 96x48 (6x3), at 2 -> 48x96 (3x6); the
    # tiny teachers' square maps (8x8 DFN CLIP, 8x8 DINOv2) are what the loss resizes to them
    student_grids = {g for g, _ in calls}
    assert student_grids == {(3, 5), (6, 3), (3, 6)}
    assert {t for _, t in calls} == {(8, 8)}
    # the teachers see the crop the student sees, not a stretched square
    assert (77, 128) in teacher_inputs  # 48:80 of a 128 px image
    assert {(128, 64), (64, 128)} <= teacher_inputs
    rows = read_metrics(run_dir)
    assert len(rows) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run_dir / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- resume and processes


def stochastic_recipe(out: Path, phis: dict[str, str], **sections: Any) -> dict[str, Any]:
    data = base_recipe(out, phis, **sections)
    data["student"] = dict(DETERMINISTIC_CPE)
    data["teachers"]["dfn_clip"]["upsampler"] = {"name": "bilinear", "factor": 2}
    data["distill"] = {
        "partitions": [
            {"name": "low", "sizes": [32, 48, 64], "batch_size": 4},
            {"name": "hi", "sizes": [64, 80, 96], "batch_size": 4, "upsample": True},
        ]
    }
    data["train"].update(batch_size=8, steps=6, checkpoint_every=3)
    return data


class RecordingTrainer(KillableTrainer):
    """Records the student input sizes of each step and can be killed at a step."""

    sizes: dict[int, list[tuple[int, int]]] = {}

    def train_step(self, batch, step):
        if step == self.kill_at:  # killed before the step records anything
            raise Killed(step)
        self.sizes[step] = [
            tuple(self.partition_inputs(i, x[:1], step)[0].shape[-2:])
            for i, x in enumerate(batch["image"].split(self.local_sizes))
        ]
        return super().train_step(batch, step)


def test_a_resumed_stochastic_run_equals_the_uninterrupted_one(tmp_path, phis):
    def recipe(name: str, resume: bool = False) -> Any:
        return load_recipe(write(tmp_path / f"{name}.yaml", stochastic_recipe(tmp_path / name, phis, resume=resume)))

    RecordingTrainer.sizes = {}
    RecordingTrainer(recipe("straight")).run()
    straight_sizes = dict(RecordingTrainer.sizes)
    assert len({s for sizes in straight_sizes.values() for s in sizes}) > 2  # the sizes did vary

    fresh_process()
    RecordingTrainer.sizes = {}
    kill_and_resume(RecordingTrainer, recipe, tmp_path / "killed")  # the draws must not depend on the global RNG
    assert RecordingTrainer.sizes == straight_sizes

    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"), atol=1e-6)
    losses = [[r["loss"] for r in read_metrics(tmp_path / name)] for name in ("straight", "killed")]
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)


@pytest.mark.slow  # ~20 s; the fast set keeps two-process equality in tests/test_engine.py
@pytest.mark.subprocess
def test_two_processes_draw_alike_and_equal_one_process(tmp_path, phis):
    """torchrun, 2 CPU processes: every rank draws the same sizes (else DDP would hang or
    fail on mismatched shapes) and the weights equal a 1-process run of the same recipe."""
    for name in ("ddp", "one"):
        data = stochastic_recipe(tmp_path / name, phis)
        data["train"].update(steps=3, checkpoint_every=0, mixed_precision="no")
        write(tmp_path / f"{name}.yaml", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)
    cmd = torchrun("-m", "radiosharp.train", str(tmp_path / "ddp.yaml"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    fresh_process()
    DistillTrainer(load_recipe(tmp_path / "one.yaml")).run()
    # DDP sums the two halves' gradients in another float32 order; Adam turns that into a
    # few 1e-5 on weights whose gradient is near zero. A step drawn differently (another size,
    # another rank's size) moves weights by about the learning rate, 2e-3.
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "one"), atol=1e-4)
    ddp_rows, one_rows = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in one_rows], abs=1e-5)
    resolved = yaml.safe_load((tmp_path / "ddp" / "recipe.yaml").read_text())
    assert resolved["distill"]["partitions"][0]["sizes"] == [32, 48, 64]


# ----------------------------------------------------------------------------- mistakes


def _sizes(values):
    def mutate(r):
        r["distill"]["partitions"][0].pop("size")
        r["distill"]["partitions"][0]["sizes"] = values

    return mutate


def _both(r):
    r["distill"]["partitions"][0]["sizes"] = [64, 96]


def _neither(r):
    r["distill"]["partitions"][0].pop("size")


def _set(key, value):
    def mutate(r):
        r["distill"]["partitions"][0][key] = value

    return mutate


def _aspects_with_hw(r):
    _sizes([64, [48, 64]])(r)
    _set("aspect_ratios", [1.5])(r)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            _sizes([64, 72, [96, 90]]),
            r"^error: distill\.partitions\[low\]\.sizes: 72, \[96, 90\] are not a multiple of the student "
            r"patch size 16 .*nearest valid sides: 64, 80",
        ),
        (_set("size", [48, 72]), r"distill\.partitions\[low\]\.size: student: image size 48x72 .*patch size 16"),
        (_both, r"bad value at 'distill\.partitions\.0': partition 'low' gives both of size and sizes"),
        (_neither, r"partition 'low' gives neither of size and sizes; give exactly one"),
        (_sizes([]), r"bad value at 'distill\.partitions\.0\.sizes': sizes is an empty set"),
        (_set("mosaic", []), r"'distill\.partitions\.0\.mosaic': mosaic is an empty set"),
        (_set("aspect_ratios", []), r"'distill\.partitions\.0\.aspect_ratios': aspect_ratios is an empty set"),
        (_set("mosaic", [1, 0]), r"distill\.partitions\.0\.mosaic\.1.*greater than 0"),
        (_set("aspect_ratios", [1.0, -2.0]), r"distill\.partitions\.0\.aspect_ratios\.1.*greater than 0"),
        (_aspects_with_hw, r"partition 'low': aspect_ratios reshape a square side; give square sizes"),
    ],
    ids=[
        "sizes_not_patch_multiples",
        "hw_not_patch_multiple",
        "size_and_sizes",
        "no_size",
        "empty_sizes",
        "empty_mosaic",
        "empty_aspects",
        "mosaic_zero",
        "negative_aspect",
        "aspect_with_hw",
    ],
)
def test_bad_partition_geometry_fails_in_one_line_before_anything_is_written(tmp_path, phis, capsys, mutate, message):
    data = base_recipe(tmp_path / "out", phis)
    mutate(data)
    assert train_main([str(write(tmp_path / "r.yaml", data))]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_a_mosaic_needs_its_tile_generator():
    with pytest.raises(ValueError, match="needs a generator"):
        partition_inputs(torch.rand(2, 3, 32, 32), InputPlan((32, 32), mosaic=2))
    g1, g2 = draw_generator(0, 3, 1, "tiles"), draw_generator(0, 3, 1, "tiles")
    assert torch.equal(mosaic_sources(8, 2, g1), mosaic_sources(8, 2, g2))
