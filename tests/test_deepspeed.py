"""DeepSpeed ZeRO from the recipe's ``deepspeed:`` block.

The multi-process tests run DeepSpeed for real, on two CPU processes (DeepSpeed's CPU
accelerator over gloo), started the way users start runs (``torchrun`` and
``accelerate launch --use_deepspeed``). They check that ZeRO-2 trains exactly as DDP
does (the same recipe, the same weights), that it shards the optimizer state, that a
killed run resumes bit-exactly, and that a bf16 run exports its float32 master weights.
The first DeepSpeed start on a machine compiles its shared-memory op (about 30 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _toy_trainer import ToyTrainer, toy_recipe
from conftest import REPO, assert_same_weights, free_port, fresh_process, stage3_recipe, torchrun, weights, write

from radiosharp.engine import deepspeed_config, make_accelerator, read_metrics
from radiosharp.export import load_state_dict
from radiosharp.recipe import RecipeError, load_recipe

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (pip install radiosharp[deepspeed])",
)
ZERO2 = {"zero_optimization": {"stage": 2}}


def launch_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)  # as a user's shell: nothing set
    return env


def run_launcher(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]


def toy_job(
    out: Path,
    deepspeed: dict[str, Any] | None = ZERO2,
    precision: str = "auto",
    options: dict[str, Any] | None = None,
    **recipe: Any,
) -> dict[str, Any]:
    data = toy_recipe(out, **recipe).model_dump(mode="json")
    data["deepspeed"] = deepspeed
    data["train"]["mixed_precision"] = precision
    return {"recipe": data, "options": options or {}}


# ----------------------------------------------------------------------------- the config, in-process


def test_deepspeed_block_without_deepspeed_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )
    recipe = toy_recipe(tmp_path / "out").model_copy(update={"deepspeed": ZERO2})
    with pytest.raises(RecipeError, match=r"pip install radiosharp\[deepspeed\]"):
        ToyTrainer(recipe)
    assert not (tmp_path / "out").exists()


def test_deepspeed_config_comes_from_the_recipe(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real_find_spec(name, *a)
    )

    def recipe(**train: Any) -> Any:
        base = toy_recipe(tmp_path / "out", batch_size=32, grad_accum=2, **train)
        return base.model_copy(update={"deepspeed": ZERO2})

    ds = deepspeed_config(recipe(), world=4)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        4,
        2,
        32,
    )
    assert ds["gradient_clipping"] == 1.0 and ds["zero_optimization"] == {"stage": 2}
    # No clipping in the recipe means none under DeepSpeed (Accelerate's default would clip at 1.0).
    assert deepspeed_config(recipe(grad_clip=None), world=4)["gradient_clipping"] == 0.0

    def refused(block: dict[str, Any], optim: str = "adamw") -> str:
        bad = recipe()
        bad.deepspeed = block
        bad.train.optim.name = optim
        with pytest.raises(RecipeError) as info:
            deepspeed_config(bad, world=4)
        return str(info.value)

    assert "stage=3 is not supported; use 0, 1 or 2" in refused({"zero_optimization": {"stage": 3}})
    assert "LAMB's per-layer trust ratio" in refused(ZERO2, optim="lamb")
    assert "use train.optim.name=adamw" in refused({"zero_optimization": {"stage": 1}}, optim="lamb")
    stage0 = recipe()
    stage0.deepspeed, stage0.train.optim.name = {"zero_optimization": {"stage": 0}}, "lamb"
    assert deepspeed_config(stage0, world=4)["zero_optimization"] == {"stage": 0}  # no shards: LAMB is fine
    assert "deepspeed.optimizer is not supported" in refused({**ZERO2, "optimizer": {"type": "AdamW"}})


def test_a_deepspeed_launcher_without_a_deepspeed_block_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RecipeError, match=r"--use_deepspeed.*no 'deepspeed:' block"):
        make_accelerator(toy_recipe(tmp_path / "out"))


def test_the_shipped_zero2_recipe_avoids_lamb():
    recipe = load_recipe(REPO / "recipes" / "stage3_hires_zero2.yaml")
    assert recipe.deepspeed["zero_optimization"]["stage"] == 2
    assert recipe.train.optim.name == "adamw" and recipe.train.mixed_precision == "bf16"
    assert load_recipe(REPO / "recipes" / "stage3_hires.yaml").train.optim.name == "lamb"


# ----------------------------------------------------------------------------- real DeepSpeed, 2 processes


@pytest.mark.slow  # ~85 s on 2 cores; the fast set keeps DeepSpeed through accelerate launch (below)
@pytest.mark.subprocess
@needs_deepspeed
def test_zero2_on_two_processes_trains_as_one_process_shards_resumes_and_exports_float32(tmp_path):
    """One torchrun launch runs every job (jobs after a killed one start afresh, as a new
    process would): ZeRO-2 with gradient accumulation and active clipping; a noisy run
    straight through; the same run killed after its step-3 checkpoint, then resumed; bf16."""
    clip = {"steps": 4, "batch_size": 8, "grad_accum": 2, "lr": 3e-2, "log_every": 1}
    noisy = {"steps": 6, "batch_size": 8, "lr": 3e-2, "log_every": 1, "checkpoint_every": 3, "options": {"noise": True}}
    jobs = [
        toy_job(tmp_path / "zero2", **clip),
        toy_job(tmp_path / "straight", **noisy),
        toy_job(tmp_path / "cut", **{**noisy, "options": {"noise": True, "kill_at": 4}}),
        toy_job(tmp_path / "cut", resume=True, **noisy),
        toy_job(tmp_path / "bf16", precision="bf16", steps=12, batch_size=8, lr=1e-2, log_every=4),
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    run_launcher(torchrun(str(REPO / "tests" / "_toy_trainer.py"), str(tmp_path / "jobs.json")), tmp_path)

    # ZeRO-2 ran (its checkpoint layout, one optimizer shard per process) ...
    last = tmp_path / "zero2" / "checkpoints" / "step_00000004"
    assert (last / "latest").read_text().strip() == "pytorch_model"
    shards = sorted(p.name for p in (last / "pytorch_model").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # ... and trained exactly as one process with the same global batch, clipping included.
    ToyTrainer(toy_recipe(tmp_path / "one", **clip)).run()
    assert_same_weights(weights(tmp_path / "zero2"), weights(tmp_path / "one"), atol=1e-5)
    losses = [r["loss"] for r in read_metrics(tmp_path / "zero2")]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "one")], abs=1e-5)
    fresh_process()
    ToyTrainer(toy_recipe(tmp_path / "one_unclipped", **clip, grad_clip=None)).run()
    assert (
        weights(tmp_path / "one")["body.1.weight"] - weights(tmp_path / "one_unclipped")["body.1.weight"]
    ).abs().max() > 1e-4, "the test needs steps where clipping acts"

    # A killed run resumes from its ZeRO checkpoint bit-exactly (weights, data, RNG, LR).
    assert_same_weights(weights(tmp_path / "cut"), weights(tmp_path / "straight"))
    assert [r["loss"] for r in read_metrics(tmp_path / "cut")] == [
        r["loss"] for r in read_metrics(tmp_path / "straight")
    ]

    # bf16: the loss falls and the export holds the float32 master weights, not bf16 ones.
    rows = read_metrics(tmp_path / "bf16")
    assert rows[-1]["loss"] < rows[0]["loss"]
    exported = weights(tmp_path / "bf16")
    assert all(w.dtype == torch.float32 for w in exported.values())
    assert any(not torch.equal(w, w.bfloat16().float()) for w in exported.values())


@pytest.mark.subprocess
@needs_deepspeed
def test_accelerate_launch_use_deepspeed_distills_as_ddp(tmp_path, phis):
    """The users' command, `accelerate launch --use_deepspeed -m radiosharp.train`, on a
    stage-3 recipe (an upsampled hi-res partition): ZeRO-2 equals DDP on the same two
    processes, and the export reloads with load_student."""
    from radiosharp.student_io import load_student

    for name, block in (("ddp", None), ("zero2", ZERO2)):
        data = stage3_recipe(tmp_path / name, phis)
        data["train"].update(steps=4, mixed_precision="no")
        if block:
            data["deepspeed"] = block
        write(tmp_path / f"{name}.yaml", data)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    run_launcher(
        [
            accelerate,
            "launch",
            "--use_deepspeed",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "-m",
            "radiosharp.train",
            str(tmp_path / "zero2.yaml"),
        ],
        tmp_path,
    )
    run_launcher(torchrun("-m", "radiosharp.train", str(tmp_path / "ddp.yaml")), tmp_path)

    assert (tmp_path / "zero2" / "checkpoints" / "step_00000004" / "pytorch_model").is_dir()
    assert not (tmp_path / "ddp" / "checkpoints" / "step_00000004" / "pytorch_model").exists()
    # ZeRO-2 reduces gradients in its own buckets, DDP in others: float32 sums in another order.
    # Over 4 steps that moves a weight by up to ~1e-5 (1.02e-5 seen with the packages of
    # 2026-12); a real difference in training (a missed clip, a wrong LR) moves them by ~1e-2.
    assert_same_weights(
        load_state_dict(tmp_path / "zero2" / "model.safetensors"),
        load_state_dict(tmp_path / "ddp" / "model.safetensors"),
        atol=3e-5,
    )
    student = load_student(tmp_path / "zero2").eval()
    with torch.no_grad():
        out = student(torch.rand(1, 3, 64, 64))
    assert set(out.features) == {"dfn_clip", "dinov2"}
