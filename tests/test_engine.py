"""The training engine: schedule and logging, exact resume, crash-safe checkpoints,
run-folder safety, several processes == one process, and the step-indexed data order.

Every run here is the toy kind of run of ``tests/_toy_trainer.py`` (a small MLP on a
64-sample dataset), so what is tested is the engine itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from _toy_trainer import Interrupted, ToyDataset, ToyMLP, ToyTrainer, toy_recipe
from conftest import REPO, assert_same_weights, fresh_process, torchrun, weights

from radiosharp.engine import StepBatchSampler, checkpoint_dirs, lr_at, read_metrics, resolve_precision, step_loader
from radiosharp.recipe import OptimConfig, Recipe, RecipeError, TrainConfig


def scramble_rngs() -> None:
    """What a new process would have: RNG states unrelated to the killed run's."""
    torch.manual_seed(987654)
    random.seed(987654)
    np.random.seed(987654)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(path.rglob("*"))}


# ----------------------------------------------------------------------------- 1. the loop


def test_loss_falls_metrics_rows_and_lr_schedule(tmp_path):
    recipe = toy_recipe(tmp_path / "run", steps=30, log_every=5, warmup_steps=5)
    trainer = ToyTrainer(recipe)
    run_dir = trainer.run()

    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    for row in rows:
        assert {"loss", "mse", "lr", "images_per_s"} <= row.keys()
        assert row["images_per_s"] > 0
        assert row["lr"] == pytest.approx(lr_at(row["step"] - 1, 30, recipe.train.optim), rel=1e-12)

    # The optimizer really used lr_at(step): linear warm-up, then cosine to the floor.
    optim = recipe.train.optim
    expected = [lr_at(s, 30, optim) for s in range(30)]
    assert trainer.lrs == pytest.approx(expected, rel=1e-12)
    assert expected[:5] == pytest.approx([optim.lr * (s + 1) / 5 for s in range(5)])
    assert all(a > b for a, b in zip(expected[5:-1], expected[6:]))  # strictly decaying after warm-up
    assert expected[5] == pytest.approx(optim.lr)
    assert lr_at(30, 30, optim) == pytest.approx(optim.lr * optim.min_lr_ratio)

    # The loss falls: on the whole dataset, the trained model beats its own initialisation.
    data = ToyDataset()
    torch.manual_seed(recipe.seed)
    init = ToyMLP()
    trained = ToyMLP()
    trained.load_state_dict(weights(run_dir))
    with torch.no_grad():
        before = F.mse_loss(init(data.images), data.targets).item()
        after = F.mse_loss(trained(data.images), data.targets).item()
    assert after < 0.3 * before, (before, after)

    # The run folder: the resolved recipe (loadable again), a checkpoint, the export.
    assert Recipe.model_validate(yaml.safe_load((run_dir / "recipe.yaml").read_text())) == recipe
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000030"]
    assert json.loads((run_dir / "model.json").read_text())["kind"] == "toy"


def test_lr_at_without_warmup_is_pure_cosine():
    optim = OptimConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, 10, optim) == pytest.approx(1.0)
    assert lr_at(5, 10, optim) == pytest.approx(0.5)
    assert lr_at(10, 10, optim) == pytest.approx(0.0, abs=1e-12)


def test_each_micro_step_sees_its_share_of_the_step_batch(tmp_path):
    """grad_accum=2 walks the same sample order as grad_accum=1, in half-batches."""
    one = ToyTrainer(toy_recipe(tmp_path / "a", steps=4, batch_size=8))
    one.run()
    fresh_process()
    two = ToyTrainer(toy_recipe(tmp_path / "b", steps=4, batch_size=8, grad_accum=2))
    two.run()
    assert [len(b) for b in two.seen] == [4] * 8
    assert [i for b in one.seen for i in b] == [i for b in two.seen for i in b]


# ----------------------------------------------------------------------------- 2. exact resume


@pytest.mark.parametrize(
    "noise,grad_accum", [(False, 1), (True, 1), (True, 2)], ids=["plain", "dropout+noise", "dropout+noise+accum2"]
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, noise, grad_accum):
    steps = 8

    def recipe(name, resume=False):
        return toy_recipe(
            tmp_path / name,
            steps=steps,
            batch_size=8,
            grad_accum=grad_accum,
            log_every=1,
            checkpoint_every=steps // 2,
            warmup_steps=2,
            resume=resume,
        )

    straight = ToyTrainer(recipe("straight"), noise=noise)
    straight.run()

    # Killed as step 6 begins: steps 5 and 6 were logged but not checkpointed.
    fresh_process()
    killed = ToyTrainer(recipe("killed"), noise=noise, kill_at=6)
    with pytest.raises(Interrupted):
        killed.run()
    assert [p.name for p in checkpoint_dirs(tmp_path / "killed")] == ["step_00000004"]
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]

    fresh_process()
    scramble_rngs()
    resumed = ToyTrainer(recipe("killed", resume=True), noise=noise)
    resumed.run()

    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    half = (steps // 2) * grad_accum
    assert resumed.seen == straight.seen[half:]
    assert resumed.lrs == straight.lrs[half:]
    # The rows of steps 5-6 from before the kill were replaced, not duplicated.
    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in rows_b] == list(range(1, steps + 1))
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-6)


def test_compiled_run_gives_the_same_losses_weights_and_resume(tmp_path):
    """train.compile: Accelerate compiles the model (aot_eager: no C++ compiler needed); the losses,
    the export (plain parameter names, no torch.compile prefix) and a resume equal the eager run's."""
    steps = 6

    def recipe(name, compile, resume=False):
        return toy_recipe(tmp_path / name, steps=steps, log_every=1, checkpoint_every=3, compile=compile, resume=resume)

    ToyTrainer(recipe("eager", "no")).run()
    fresh_process()
    compiled = ToyTrainer(recipe("compiled", "aot_eager"))
    assert compiled.accelerator.state.dynamo_plugin.backend.value == "AOT_EAGER"
    compiled.run()
    assert type(compiled.model).__name__ == "OptimizedModule"  # prepare() compiled it
    eager_rows, compiled_rows = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert [r["loss"] for r in compiled_rows] == pytest.approx([r["loss"] for r in eager_rows], abs=1e-6)
    assert_same_weights(weights(tmp_path / "eager"), weights(tmp_path / "compiled"), atol=1e-6)
    assert not any("_orig_mod" in key for key in weights(tmp_path / "compiled"))
    fresh_process()
    with pytest.raises(Interrupted):
        ToyTrainer(recipe("killed", "aot_eager"), kill_at=4).run()
    fresh_process()
    ToyTrainer(recipe("killed", "aot_eager", resume=True)).run()
    assert_same_weights(weights(tmp_path / "compiled"), weights(tmp_path / "killed"), atol=1e-6)


def test_train_compile_values():
    assert TrainConfig(compile=True).compile == "inductor"
    assert TrainConfig(compile=False).compile == "no"
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="fast")


def test_noise_makes_runs_differ_without_restored_rngs(tmp_path):
    """Guards the test above: with noise on, a different RNG stream gives other weights."""
    ToyTrainer(toy_recipe(tmp_path / "a", steps=3, seed=0), noise=True).run()
    fresh_process()
    trainer = ToyTrainer(toy_recipe(tmp_path / "b", steps=3, seed=0), noise=True)
    original = trainer.train_step

    def shifted(batch, step):
        if step == 0:
            torch.rand(1)  # one extra draw: every later random number moves
        return original(batch, step)

    trainer.train_step = shifted
    trainer.run()
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_creating_the_loader_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    batches = iter(step_loader(ToyDataset(8), 4, seed=0, start_step=0))
    assert torch.equal(state, torch.get_rng_state())
    assert len(next(batches)["image"]) == 4


# ----------------------------------------------------------------------------- 3. crash-safe checkpoints


def test_crash_mid_save_keeps_last_good_checkpoint_and_resume_uses_it(tmp_path):
    run_dir = tmp_path / "run"
    trainer = ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, keep_checkpoints=2, log_every=1))
    real_save = trainer.accelerator.save_state

    def save_then_fail(output_dir, **kwargs):
        real_save(output_dir, **kwargs)  # the files are written ...
        if trainer.state.step == 6:
            raise OSError("disk full")  # ... but the save never finishes

    trainer.accelerator.save_state = save_then_fail
    with pytest.raises(OSError, match="disk full"):
        trainer.run()
    ckpt = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000002", "step_00000004", "step_00000006.tmp"]
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000002", "step_00000004"]

    # A crash after DONE was written but before the rename: still not complete.
    fake = ckpt / "step_00000008.tmp"
    shutil.copytree(ckpt / "step_00000004", fake)
    assert (fake / "DONE").exists()
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000002", "step_00000004"]

    fresh_process()
    resumed = ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, keep_checkpoints=2, log_every=1, resume=True))
    resumed.run()
    assert resumed.lrs == pytest.approx([lr_at(s, 6, resumed.recipe.train.optim) for s in (4, 5)])
    # Stale .tmp folders are cleared, and keep_checkpoints=2 pruned step 2.
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000004", "step_00000006"]

    fresh_process()
    ToyTrainer(toy_recipe(tmp_path / "straight", steps=6, checkpoint_every=2, log_every=1)).run()
    assert_same_weights(weights(tmp_path / "straight"), weights(run_dir))


def test_keep_last_k_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    ToyTrainer(toy_recipe(run_dir, steps=7, checkpoint_every=2, keep_checkpoints=3)).run()
    # Saved at 2, 4, 6 and at the end (7); the oldest went.
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000004", "step_00000006", "step_00000007"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_00000004",
        "step_00000006",
        "step_00000007",
    ]


# ----------------------------------------------------------------------------- 4. run-folder safety


def test_fresh_run_in_a_used_folder_fails_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    ToyTrainer(toy_recipe(run_dir, steps=2)).run()
    before = tree(run_dir)
    with pytest.raises(RecipeError, match=r"already holds a run \(last checkpoint step_00000002\).*resume=true"):
        ToyTrainer(toy_recipe(run_dir, steps=2))
    assert tree(run_dir) == before


def test_folder_of_a_run_killed_before_its_first_checkpoint_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        ToyTrainer(toy_recipe(run_dir, steps=4), kill_at=1).run()
    assert not checkpoint_dirs(run_dir) and (run_dir / "recipe.yaml").exists()
    before = tree(run_dir)
    with pytest.raises(RecipeError, match=r"already holds a run \(recipe.yaml.*no checkpoint.*output_dir"):
        ToyTrainer(toy_recipe(run_dir, steps=4))
    with pytest.raises(RecipeError, match="no complete checkpoint"):
        ToyTrainer(toy_recipe(run_dir, steps=4, resume=True))
    assert tree(run_dir) == before


def test_folder_with_only_phis_statistics_the_recipe_names_is_free(tmp_path):
    """What ``python -m radiosharp.stats`` wrote there is free for a run that names it (issue 13)."""
    run_dir = tmp_path / "run"
    (run_dir / "phi_s").mkdir(parents=True)
    (run_dir / "phi_s" / "dinov2.safetensors").write_bytes(b"stats")
    data = toy_recipe(run_dir, steps=1).model_dump(mode="json")
    data["teachers"] = {"dinov2": {"family": "dinov2", "phi_s": str(run_dir / "phi_s" / "dinov2.safetensors")}}
    ToyTrainer(Recipe.model_validate(data)).run()
    assert (run_dir / "model.safetensors").exists()
    assert (run_dir / "phi_s" / "dinov2.safetensors").read_bytes() == b"stats"


def test_resume_without_checkpoint_fails_clearly_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "nothing_here"
    with pytest.raises(RecipeError, match=r"resume=true but .*nothing_here has no complete checkpoint"):
        ToyTrainer(toy_recipe(run_dir, resume=True))
    assert not run_dir.exists()


def test_bad_batch_split_fails_before_writing(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RecipeError, match="train.batch_size 6 is not divisible by train.grad_accum 4"):
        ToyTrainer(toy_recipe(run_dir, batch_size=6, grad_accum=4))
    assert not run_dir.exists()


def test_mixed_precision_resolution():
    assert resolve_precision("auto", cuda=False) == "no"
    assert resolve_precision("no", cuda=False) == "no"
    assert resolve_precision("bf16", cuda=False) == "bf16"
    with pytest.raises(RecipeError, match="train.mixed_precision=fp16 needs a CUDA GPU.*'auto', 'bf16' or 'no'"):
        resolve_precision("fp16", cuda=False)
    assert resolve_precision("fp16", cuda=True) == "fp16"


def test_find_unused_parameters_reaches_ddp(tmp_path):
    trainer = ToyTrainer(toy_recipe(tmp_path / "run"), unused_head=True)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is True
    fresh_process()
    assert ToyTrainer(toy_recipe(tmp_path / "run2")).accelerator.ddp_handler.find_unused_parameters is False


# ----------------------------------------------------------------------------- 5. two processes


@pytest.mark.subprocess
def test_two_processes_match_one_process(tmp_path):
    """torchrun, 2 CPU processes (gloo): each takes half of every micro-batch, DDP averages
    the gradients, so the weights equal a 1-process run with the same global batch. The
    second job has a head that never gets a gradient: it trains only because the trainer
    asks DDP to find unused parameters."""
    jobs = [
        {
            "recipe": toy_recipe(tmp_path / "ddp", steps=3, batch_size=8, grad_accum=2, log_every=1).model_dump(
                mode="json"
            )
        },
        {
            "recipe": toy_recipe(tmp_path / "ddp_unused", steps=2, batch_size=4, log_every=1).model_dump(mode="json"),
            "options": {"unused_head": True},
        },
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    cmd = torchrun(str(REPO / "tests" / "_toy_trainer.py"), str(tmp_path / "jobs.json"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ToyTrainer(toy_recipe(tmp_path / "one", steps=3, batch_size=8, grad_accum=2, log_every=1)).run()
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "one"), atol=1e-5)
    # The logged loss is the mean over processes = the global mean loss.
    ddp_rows, one_rows = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in one_rows], abs=1e-5)
    # Each process checkpoints its own RNG states, seeded seed + process_index.
    rng_files = sorted((tmp_path / "ddp" / "checkpoints" / "step_00000003").glob("random_states_*.pkl"))
    assert [p.name for p in rng_files] == ["random_states_0.pkl", "random_states_1.pkl"]
    rank0, rank1 = (torch.load(p, weights_only=False)["torch_manual_seed"] for p in rng_files)
    assert not torch.equal(rank0, rank1)

    fresh_process()
    ToyTrainer(toy_recipe(tmp_path / "one_unused", steps=2, batch_size=4, log_every=1), unused_head=True).run()
    assert_same_weights(weights(tmp_path / "ddp_unused"), weights(tmp_path / "one_unused"), atol=1e-5)


# ----------------------------------------------------------------------------- 6. the data order


def test_every_sample_once_per_epoch_and_epochs_reshuffle():
    n, batch = 12, 4
    sampler = StepBatchSampler(n, batch, seed=3, num_steps=4 * n // batch)
    flat = [i for b in sampler for i in b]
    epochs = [flat[e * n : (e + 1) * n] for e in range(4)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))
    assert len({tuple(e) for e in epochs}) == 4  # a fresh permutation each epoch
    # A batch that straddles an epoch boundary still keeps each epoch complete.
    odd = StepBatchSampler(10, 4, seed=3, num_steps=5)
    flat = [i for b in odd for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))


def test_order_is_a_pure_function_of_seed_and_step():
    a = StepBatchSampler(50, 8, seed=1)
    b = StepBatchSampler(50, 8, seed=1)
    assert [a.global_batch_indices(s) for s in (9, 0, 3)] == [b.global_batch_indices(s) for s in (9, 0, 3)]
    assert a.global_batch_indices(0) != StepBatchSampler(50, 8, seed=2).global_batch_indices(0)
    assert StepBatchSampler(5, 5, shuffle=False).global_batch_indices(1) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world", [2, 4])
def test_rank_shards_partition_the_global_batch(world):
    full = StepBatchSampler(30, 8, seed=5, num_steps=10)
    shards = [list(StepBatchSampler(30, 8, seed=5, num_steps=10, rank=r, world=world)) for r in range(world)]
    for step, global_batch in enumerate(full):
        parts = [shards[r][step] for r in range(world)]
        assert all(len(p) == 8 // world for p in parts)
        assert sorted(i for p in parts for i in p) == sorted(global_batch)
        assert parts == [global_batch[r::world] for r in range(world)]


def test_start_step_skips_exactly():
    from_zero = list(StepBatchSampler(20, 6, seed=7, num_steps=12))
    from_five = list(StepBatchSampler(20, 6, seed=7, start_step=5, num_steps=7))
    assert from_five == from_zero[5:]
    assert len(StepBatchSampler(20, 6, num_steps=7)) == 7


def test_sampler_errors():
    with pytest.raises(ValueError, match="empty"):
        StepBatchSampler(0, 4)
    with pytest.raises(ValueError, match="global batch 6 is not divisible by 4 processes"):
        StepBatchSampler(10, 6, world=4)
    with pytest.raises(TypeError, match="endless"):
        len(StepBatchSampler(10, 2))
