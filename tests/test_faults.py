"""Runs that survive faults (issue 13): non-finite steps, two writers, SIGTERM / SIGINT,
corrupt checkpoints, a torn metrics log, duplicate recipe keys and bad values.

Every run is the toy kind of run of ``tests/_toy_trainer.py``; the CLI checks run
``radiosharp.train.main`` with that kind (``tests/_toy_cli.py``), in this process or,
for signals and a second writer, in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _toy_trainer import ToyTrainer, recipe_file, toy_recipe, tree
from conftest import REPO, assert_same_weights, fresh_process, weights

import radiosharp.train as train_cli
from radiosharp.engine import (
    LOCK_NAME,
    CheckpointError,
    NonFiniteError,
    RunLock,
    RunLockedError,
    checkpoint_dirs,
    read_metrics,
)
from radiosharp.export import save_export, save_state_dict
from radiosharp.recipe import RecipeError, load_recipe

TOY_CLI = REPO / "tests" / "_toy_cli.py"


def env_for_subprocess(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "true",
        **extra,
    }


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a CLI's stderr (progress bars aside), with no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- 1. non-finite guard


def test_nonfinite_loss_stops_in_one_line_naming_step_terms_and_checkpoint(tmp_path, toy_cli, capsys, monkeypatch):
    out = tmp_path / "run"
    path = recipe_file(tmp_path / "r.yaml", output_dir=out, steps=6, checkpoint_every=2, log_every=1)
    monkeypatch.setenv("TOY_NAN_AT", "3")  # the 4th step
    assert toy_cli(path) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: step 4: non-finite loss, mse, grad_norm"), err
    assert "last good checkpoint: " + str(out / "checkpoints" / "step_00000002") in err
    assert "train.skip_nonfinite" in err
    # Nothing non-finite was saved: no export, the checkpoints hold finite weights.
    assert not (out / "model.safetensors").exists()
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000002"]
    from safetensors.torch import load_file

    state = load_file(str(out / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_diverging_learning_rate_is_caught(tmp_path):
    """No injected NaN: lr=1e30 overflows the weights by itself."""
    trainer = ToyTrainer(toy_recipe(tmp_path / "run", steps=6, lr=1e30, grad_clip=None, warmup_steps=0))
    with pytest.raises(NonFiniteError, match=r"step \d: non-finite .*last good checkpoint: none"):
        trainer.run()
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_skip_nonfinite_skips_up_to_n_steps_then_stops(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    trainer = ToyTrainer(toy_recipe(tmp_path / "skip", steps=6, log_every=1, skip_nonfinite=2), nan_at=(1, 3))
    trainer.run()
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings == [
        "step 2: non-finite loss, mse, grad_norm; its optimizer step was skipped (1 of train.skip_nonfinite=2)",
        "step 4: non-finite loss, mse, grad_norm; its optimizer step was skipped (2 of train.skip_nonfinite=2)",
    ]
    assert trainer.state.skipped == 2
    exported = weights(tmp_path / "skip")
    assert all(torch.isfinite(v).all() for v in exported.values())  # the bad updates were not made
    rows = read_metrics(tmp_path / "skip")
    assert [r["step"] for r in rows] == [1, 3, 5, 6]  # the skipped steps log nothing
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)

    fresh_process()
    with pytest.raises(NonFiniteError, match=r"step 6: non-finite .*2 of train.skip_nonfinite=2 bad steps"):
        ToyTrainer(toy_recipe(tmp_path / "stop", steps=8, skip_nonfinite=2), nan_at=(1, 3, 5)).run()


def test_a_skipped_step_changes_no_weight(tmp_path):
    """Step 3 skipped: the export equals the weights after step 2 of the same recipe."""
    from _toy_trainer import Interrupted

    from radiosharp.export import load_state_dict

    ToyTrainer(toy_recipe(tmp_path / "a", steps=3, skip_nonfinite=1), nan_at=(2,)).run()
    fresh_process()
    with pytest.raises(Interrupted):
        ToyTrainer(toy_recipe(tmp_path / "b", steps=3, checkpoint_every=2), kill_at=2).run()
    after_two = load_state_dict(tmp_path / "b" / "checkpoints" / "step_00000002" / "model.safetensors")
    assert_same_weights(weights(tmp_path / "a"), after_two)


def test_loaders_refuse_weights_that_are_not_finite(tmp_path):
    from radiosharp.student_io import load_student
    from radiosharp.upsampled import load_upsampled_teacher

    for kind in ("student", "upsampler"):
        run = tmp_path / kind
        run.mkdir()
        save_state_dict(
            run / "model.safetensors", {"ok": torch.ones(2), "bad.weight": torch.tensor([1.0, float("nan")])}
        )
        (run / "model.json").write_text(json.dumps({"kind": kind, "config": {}}))
    msg = r"model.safetensors: tensor 'bad.weight' holds non-finite values"
    with pytest.raises(ValueError, match=msg):
        load_student(tmp_path / "student")
    with pytest.raises(ValueError, match=msg):
        load_upsampled_teacher(tmp_path / "upsampler")
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="tensor 'weight' holds non-finite"):
        save_export(tmp_path / "out", layer, "toy", {})
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_init_from_a_nonfinite_student_is_refused_in_one_line(tmp_path, capsys):
    previous = tmp_path / "previous"
    previous.mkdir()
    save_state_dict(previous / "model.safetensors", {"w": torch.tensor([float("nan")])})
    (previous / "model.json").write_text(json.dumps({"kind": "student", "config": {}}))
    recipe = {
        "kind": "distill",
        "output_dir": str(tmp_path / "run"),
        "init_from": str(previous),
        "teachers": {"dinov2": {"size": "tiny"}},
        "student": {"name": "radio", "size": "tiny"},
        "data": {"source": "synthetic", "num_images": 8, "size": 64},
        "distill": {"partitions": [{"name": "low", "size": 64, "batch_size": 4}]},
        "train": {"steps": 1, "batch_size": 4},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_cli.main([str(path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: init_from:"), err
    assert f"{previous / 'model.safetensors'}: tensor 'w' holds non-finite values" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 2. one writer per run folder


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, toy_cli, capsys):
    run_dir = tmp_path / "run"
    first = ToyTrainer(toy_recipe(run_dir, steps=2, log_every=1))
    session = first.setup()  # holds the lock from here on
    record = json.loads((run_dir / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"]
    before = tree(run_dir)
    with pytest.raises(RunLockedError, match=f"is being written by pid {os.getpid()} on host {record['host']}"):
        ToyTrainer(toy_recipe(run_dir, steps=2))
    assert tree(run_dir) == before
    first.loop(session)
    first.close()
    assert not (run_dir / LOCK_NAME).exists()
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]

    # resume=true while another process trains: refused, by the CLI in one line.
    holder = RunLock.acquire(run_dir)
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, steps=3, resume=True)
    assert toy_cli(path) == 2
    assert f"is being written by pid {os.getpid()}" in error_line(capsys.readouterr().err)
    holder.release()
    assert toy_cli(path) == 0
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000002", "step_00000003"]


@pytest.mark.subprocess
def test_a_lock_held_by_another_process_is_named_and_freed_when_it_dies(tmp_path, toy_cli, capsys):
    run_dir = tmp_path / "run"
    code = (
        "import sys, time; from radiosharp.engine.runlock import RunLock; "
        "lock = RunLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], env=env_for_subprocess(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, steps=2)
        before = tree(run_dir)
        assert toy_cli(path) == 2
        err = error_line(capsys.readouterr().err)
        assert f"is being written by pid {holder.pid} on host" in err, err
        assert f"kill -TERM {holder.pid}" in err
        assert tree(run_dir) == before  # refused before writing anything
    finally:
        holder.kill()  # kill -9: the OS releases its lock; no stale lock remains
        holder.wait()
    assert toy_cli(path) == 0
    assert (run_dir / "model.safetensors").exists()


def test_the_lock_is_taken_before_anything_is_written_and_a_failed_setup_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    trainer = ToyTrainer(toy_recipe(run_dir, steps=2))
    assert not run_dir.exists()  # constructing checks the folder, writes nothing
    seen = []

    def failing_build() -> None:
        seen.append(sorted(p.name for p in run_dir.iterdir()))
        raise RecipeError("a bad section")

    trainer.build = failing_build
    with pytest.raises(RecipeError, match="a bad section"):
        trainer.setup()
    assert seen == [[LOCK_NAME]]  # locked first; build is where a trainer writes its first file
    assert not run_dir.exists()  # the lock made the folder and nothing else was written


def test_under_several_processes_only_the_main_one_locks(tmp_path, monkeypatch):
    """A process that is not the main one neither checks nor takes the lock (the torchrun test runs two)."""
    trainer = ToyTrainer(toy_recipe(tmp_path / "main", steps=1))
    trainer.setup()
    assert trainer.lock is not None and trainer.lock.held
    trainer.close()
    monkeypatch.setattr(ToyTrainer, "is_main", property(lambda self: False))
    fresh_process()
    other = ToyTrainer(toy_recipe(tmp_path / "other", steps=1))
    other.setup()
    assert other.lock is None and not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------- 3. graceful stop


def _start_toy(recipe: Path, *overrides: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TOY_CLI), str(recipe), *overrides],
        env=env_for_subprocess(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "signum,status",
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],  # one path; SIGINT in test-all
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, signum, status):
    steps = 12
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kw = dict(steps=steps, batch_size=8, log_every=1, checkpoint_every=0, warmup_steps=2)
    path = recipe_file(tmp_path / "r.yaml", output_dir=killed, **kw)
    proc = _start_toy(path, "seed=0", TOY_STEP_SLEEP="0.2")
    wait_for(lambda: len(read_metrics(killed)) >= 3, what="3 logged steps")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err[-2000:]
    done = read_metrics(killed)[-1]["step"]
    assert 3 <= done < steps
    assert [p.name for p in checkpoint_dirs(killed)] == [f"step_{done:08d}"]
    assert not (killed / "model.safetensors").exists()
    assert f"stopped by {signal.Signals(signum).name} after step {done}" in err
    command = f"python -m radiosharp.train {path} seed=0 resume=true"
    assert f"resume with: {command}" in err, err[-2000:]
    assert "Traceback" not in err

    # Resume with the printed command's arguments, and compare with a run that never stopped.
    resumed = _start_toy(path, "seed=0", "resume=true")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    path2 = recipe_file(tmp_path / "s.yaml", output_dir=straight, **kw)
    uninterrupted = _start_toy(path2, "seed=0")
    _, err = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, err[-2000:]
    assert_same_weights(weights(straight), weights(killed))
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, steps + 1))


@pytest.mark.subprocess
def test_a_second_signal_exits_at_once_without_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, steps=6, log_every=1, checkpoint_every=1)
    proc = _start_toy(path, TOY_SLOW_FROM="2", TOY_STEP_SLEEP="60")  # step 3 takes a minute
    wait_for(lambda: len(read_metrics(run_dir)) >= 2, what="2 logged steps")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 20
    assert proc.returncode == 143
    assert "SIGTERM again: exiting now, without a checkpoint" in err
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000001", "step_00000002"]
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_resume_command_replaces_a_resume_override():
    assert train_cli.resume_command("r.yaml", ["a=1", "resume=false", "b=x y"]) == (
        "python -m radiosharp.train r.yaml a=1 'b=x y' resume=true"
    )


# ----------------------------------------------------------------------------- 4. checkpoint integrity


def _two_checkpoints(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    ToyTrainer(toy_recipe(run_dir, steps=4, checkpoint_every=2, log_every=1), noise=True).run()
    fresh_process()
    return run_dir


def test_done_records_size_and_sha256_of_every_file(tmp_path):
    import hashlib

    run_dir = _two_checkpoints(tmp_path)
    ckpt = checkpoint_dirs(run_dir)[-1]
    record = json.loads((ckpt / "DONE").read_text())
    assert record["step"] == 4
    files = {p.name for p in ckpt.iterdir() if p.name != "DONE"}
    assert set(record["files"]) == files
    assert {"random_states_0.pkl", "custom_checkpoint_0.pkl", "model.safetensors"} <= files
    for name, want in record["files"].items():
        data = (ckpt / name).read_bytes()
        assert want == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize(
    "victim,damage,problem",
    [
        ("model.safetensors", "flip", "model.safetensors does not match its sha256"),
        ("random_states_0.pkl", "truncate", "random_states_0.pkl has 10 bytes"),
        ("custom_checkpoint_0.pkl", "truncate", "custom_checkpoint_0.pkl has 10 bytes"),
        ("optimizer.bin", "delete", "optimizer.bin is missing"),
    ],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, victim, damage, problem):
    run_dir = _two_checkpoints(tmp_path)
    target = run_dir / "checkpoints" / "step_00000004" / victim
    if not target.exists() and damage == "delete":
        pytest.skip(f"this Accelerate writes no {victim}")
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "truncate":
        target.write_bytes(data[:10])
    else:
        target.unlink()
    caplog.set_level(logging.WARNING)
    resumed = ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, log_every=1, resume=True), noise=True)
    resumed.run()
    warning = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(warning) == 1 and "step_00000004 is corrupt" in warning[0] and problem in warning[0], warning
    assert len(resumed.lrs) == 4  # steps 3 to 6 again, from step_00000002
    fresh_process()
    ToyTrainer(toy_recipe(tmp_path / "straight", steps=6, checkpoint_every=2, log_every=1), noise=True).run()
    assert_same_weights(weights(tmp_path / "straight"), weights(run_dir))


def test_no_intact_checkpoint_fails_in_one_line(tmp_path, toy_cli, capsys):
    run_dir = _two_checkpoints(tmp_path)
    for ckpt in checkpoint_dirs(run_dir):
        (ckpt / "random_states_0.pkl").write_bytes(b"x")
    before = tree(run_dir)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from"):
        ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, resume=True)).run()
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, steps=6, checkpoint_every=2, resume=True)
    assert toy_cli(path) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: no intact checkpoint to resume from")
    assert "step_00000004: random_states_0.pkl has 1 bytes" in err
    assert "step_00000002: random_states_0.pkl has 1 bytes" in err
    assert tree(run_dir) == before


def test_an_old_style_done_marker_is_loaded_unverified(tmp_path):
    run_dir = _two_checkpoints(tmp_path)
    for ckpt in checkpoint_dirs(run_dir):
        (ckpt / "DONE").write_text(ckpt.name[5:].lstrip("0"))
    ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, log_every=1, resume=True), noise=True).run()
    fresh_process()
    ToyTrainer(toy_recipe(tmp_path / "straight", steps=6, checkpoint_every=2, log_every=1), noise=True).run()
    assert_same_weights(weights(tmp_path / "straight"), weights(run_dir))


# ----------------------------------------------------------------------------- 5. the metrics log


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    run_dir = _two_checkpoints(tmp_path)
    log_path = run_dir / "metrics.jsonl"
    assert log_path.read_bytes().endswith(b"\n") and all(json.loads(x) for x in log_path.read_text().splitlines())
    log_path.write_bytes(log_path.read_bytes() + b'{"step": 5, "lo')  # a kill or a full disk mid-write
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]  # readers skip it
    caplog.set_level(logging.WARNING)
    ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, log_every=1, resume=True), noise=True).run()
    assert any("metrics.jsonl: dropped its torn last line" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_a_bad_line_inside_the_metrics_log_is_named(tmp_path):
    run_dir = _two_checkpoints(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match=r"metrics.jsonl: line 2 is not a metrics row"):
        ToyTrainer(toy_recipe(run_dir, steps=6, checkpoint_every=2, resume=True)).run()


# ----------------------------------------------------------------------------- 6-7. one line, exit 2, before work


def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("kind: distill\ntrain:\n  steps: 3\n  batch_size: 4\n  steps: 400\n")
    with pytest.raises(RecipeError, match=r"duplicate key 'steps' at lines 3 and 5"):
        load_recipe(path)
    path.write_text("kind: distill\ntrain:\n  steps: 3\nseed: 1\ntrain:\n  steps: 400\n")
    assert train_cli.main([str(path), f"output_dir={tmp_path / 'run'}"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "duplicate key 'train' at lines 2 and 5" in err, err
    assert not (tmp_path / "run").exists()
    # YAML merge keys may still be overridden, as YAML intends.
    merged = tmp_path / "merge.yaml"
    merged.write_text("kind: distill\nx: &t {steps: 3, batch_size: 4}\ntrain:\n  <<: *t\n  steps: 5\n")
    with pytest.raises(RecipeError, match="unknown key 'x'"):  # parsed: only the extra key is wrong
        load_recipe(merged)
    with pytest.raises(RecipeError, match="duplicate key 'a'"):
        load_recipe(recipe_file(tmp_path / "r.yaml", output_dir=tmp_path / "o"), ["eval={a: 1, a: 2}"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.steps=abc", "bad value at 'train.steps'"),
        ("train.optim.lr=fast", "bad value at 'train.optim.lr'"),
        ("data.num_images=abc", "bad value at 'data.num_images': data source 'synthetic' takes an integer"),
        ("data.seed=3.5", "bad value at 'data.seed': data source 'synthetic' takes an integer there, got 3.5"),
    ],
)
def test_a_non_numeric_value_for_a_numeric_key_is_one_line(tmp_path, toy_cli, capsys, override, message):
    path = recipe_file(tmp_path / "r.yaml", output_dir=tmp_path / "run")
    assert toy_cli(path, override) == 2
    err = error_line(capsys.readouterr().err)
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_one_line(tmp_path, toy_cli, capsys):
    target = tmp_path / "afile"
    target.write_text("mine")
    for out in (target, target / "run"):
        path = recipe_file(tmp_path / "r.yaml", output_dir=out)
        assert toy_cli(path) == 2
        err = error_line(capsys.readouterr().err)
        assert f"{target} is an existing file, not a folder" in err, err
    assert target.read_text() == "mine"
