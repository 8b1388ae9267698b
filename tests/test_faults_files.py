"""Runs that survive faults (issue 13, second part): files the run did not write, full disks.

- a fresh run writes only into a new or empty folder (or one holding only statistics the
  recipe names); foreign statistics are never adopted; ``viz --out`` never overwrites its
  input and an existing file only with ``--force``;
- a full disk or quota mid-run (OSError ENOSPC / EDQUOT while writing a checkpoint, the
  metrics or the export) is one line naming the folder and the last good checkpoint, and
  the earlier checkpoints stay intact: resuming after space is freed gives the run that
  never stopped. Injected at every write of a toy run, and on a real small filesystem
  (a tmpfs, where this process may mount one).

Every run is the toy kind of run of ``tests/_toy_trainer.py`` (``tests/_toy_cli.py`` for the CLI).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from _toy_trainer import ToyTrainer, recipe_file, toy_recipe, tree
from conftest import assert_same_weights, fresh_process, weights

import radiosharp.train as train_cli
from radiosharp.engine import DiskFullError, checkpoint_dirs, read_metrics, verify_checkpoint
from radiosharp.recipe import Recipe, RecipeError


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------ never overwrite what the run did not write


def test_a_fresh_run_refuses_a_folder_holding_files_it_did_not_write(tmp_path, toy_cli, capsys):
    run_dir = tmp_path / "photos"
    (run_dir / "viz").mkdir(parents=True)
    (run_dir / "viz" / "000.png").write_bytes(b"my picture")
    (run_dir / "notes.txt").write_text("mine")
    before = tree(run_dir)
    with pytest.raises(RecipeError, match=r"holds files this run did not write \(notes.txt, viz/\)"):
        ToyTrainer(toy_recipe(run_dir, steps=1))
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, steps=1)
    assert toy_cli(path) == 2
    err = error_line(capsys.readouterr().err)
    assert "a fresh run writes only into a new or empty folder" in err and "output_dir=runs/new_name" in err, err
    assert tree(run_dir) == before


def test_an_empty_folder_and_a_stale_lock_are_free(tmp_path):
    from radiosharp.engine import LOCK_NAME

    empty = tmp_path / "empty"
    empty.mkdir()
    ToyTrainer(toy_recipe(empty, steps=1)).run()
    assert (empty / "model.safetensors").exists()
    fresh_process()
    stale = tmp_path / "stale"  # a process killed right after it locked: only the lock file is there
    stale.mkdir()
    (stale / LOCK_NAME).write_text('{"pid": 1, "host": "gone"}\n')
    ToyTrainer(toy_recipe(stale, steps=1)).run()
    assert (stale / "model.safetensors").exists()


def _with_teacher(recipe: Recipe, phi_s: str | None) -> Recipe:
    data = recipe.model_dump(mode="json")
    data["teachers"] = {"dinov2": {"family": "dinov2", "size": "tiny", "phi_s": phi_s}}
    return Recipe.model_validate(data)


def test_foreign_statistics_in_the_run_folder_are_never_adopted(tmp_path, toy_cli, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "phi_s").mkdir(parents=True)
    foreign = run_dir / "phi_s" / "dinov2.safetensors"
    foreign.write_bytes(b"someone else's statistics")
    with pytest.raises(RecipeError, match=r"did not write \(phi_s/dinov2.safetensors\).*teachers.<key>.phi_s="):
        ToyTrainer(_with_teacher(toy_recipe(run_dir, steps=1), None))
    # A statistics file the recipe does not name is foreign, also beside one it names.
    (run_dir / "phi_s" / "sam.safetensors").write_bytes(b"other")
    with pytest.raises(RecipeError, match=r"did not write \(phi_s/sam.safetensors\)"):
        ToyTrainer(_with_teacher(toy_recipe(run_dir, steps=1), str(foreign)))
    assert foreign.read_bytes() == b"someone else's statistics"


def test_the_statistics_lookup_reads_the_run_folder_only_on_resume(tmp_path):
    """teachers_phis: the run folder's phi_s/ file is this run's own only when it resumes."""
    import radiosharp
    from radiosharp.trainers.common import teachers_phis

    teacher = radiosharp.build_teacher({"family": "dinov2", "size": "tiny"})
    run_dir = tmp_path / "run"
    (run_dir / "phi_s").mkdir(parents=True)
    (run_dir / "phi_s" / "dinov2.safetensors").write_bytes(b"foreign")
    recipe = _with_teacher(toy_recipe(run_dir, steps=1), None)
    cfg = recipe.teachers["dinov2"]
    with pytest.raises(RecipeError, match=r"was not written by this run.*teachers.dinov2.phi_s="):
        teachers_phis({"dinov2": (cfg, teacher)}, recipe, None, run_dir)


def _stats_recipe(tmp_path, **extra) -> Path:
    """``tmp_path/stats.yaml``: a distill recipe (tiny DINOv2, 4 synthetic images) writing to ``tmp_path/run``."""
    recipe = {
        "kind": "distill",
        "output_dir": str(tmp_path / "run"),
        "teachers": {"dinov2": {"size": "tiny"}},
        "data": {"source": "synthetic", "num_images": 4, "size": 64},
        **extra,
    }
    path = tmp_path / "stats.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_stats_then_a_run_in_the_same_folder_uses_them_only_when_named(tmp_path, phis):
    """What ``python -m radiosharp.stats`` wrote into output_dir: named, it is used and kept; unnamed, refused."""
    from radiosharp.stats import main as stats_main

    path = _stats_recipe(tmp_path, stats={"num_images": 4, "batch_size": 2})
    assert stats_main([str(path)]) == 0
    written = tmp_path / "run" / "phi_s" / "dinov2.safetensors"
    assert written.is_file()
    assert stats_main([str(path)]) == 2  # never written over
    data = written.read_bytes()
    named = _with_teacher(toy_recipe(tmp_path / "run", steps=1), str(written))
    ToyTrainer(named).run()
    assert written.read_bytes() == data


def test_stats_refuse_to_write_over_existing_statistics(tmp_path, capsys):
    from radiosharp.stats import main as stats_main

    path = _stats_recipe(tmp_path)
    existing = tmp_path / "run" / "phi_s" / "dinov2.safetensors"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"earlier statistics")
    assert stats_main([str(path)]) == 2
    assert f"{existing} already exists; statistics are never written over" in capsys.readouterr().err
    assert existing.read_bytes() == b"earlier statistics"


def test_viz_out_never_overwrites_its_input_and_an_existing_file_only_with_force(tmp_path, capsys):
    from PIL import Image

    from radiosharp.viz import main as viz_main

    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    original = image.read_bytes()
    base = [str(image), "--teacher", "dinov2", "--size", "tiny"]
    for extra in ([], ["--force"]):
        assert viz_main([*base, "--out", str(image), *extra]) == 2
        assert "is the input image" in capsys.readouterr().err
        # the same file by another name
        assert viz_main([*base, "--out", str(tmp_path / "." / "photo.png"), *extra]) == 2
        assert "is the input image" in capsys.readouterr().err
    assert image.read_bytes() == original
    out = tmp_path / "fig.png"
    out.write_bytes(b"an earlier figure")
    assert viz_main([*base, "--out", str(out)]) == 2
    assert f"--out {out} already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier figure"
    assert viz_main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert viz_main([*base, "--out", str(out), "--force"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.read_bytes() == original


# ----------------------------------------------------------------------------- disk full mid-run


class DiskFiller:
    """Makes the run's writes fail with OSError(ENOSPC) from the ``n``-th write on (the disk stays full).

    Counted writes: every atomic file write of radiosharp (the export, ``DONE``, the recipe,
    a rewritten metrics log), each file Accelerate saves into a checkpoint, and each
    metrics row (the failing row leaves half a line behind, as a full disk does).
    ``log`` names each write in order.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int | None, code: int = errno.ENOSPC) -> None:
        import accelerate.checkpointing as ckpt

        import radiosharp.engine.rundir as rundir
        import radiosharp.export as export

        self.n, self.code, self.count, self.log = n, code, 0, []
        real_atomic, real_save, real_log = export.atomic_write, ckpt.save, rundir.MetricsLog.log

        def atomic_write(path, write):
            self._tick(Path(path).name)
            return real_atomic(path, write)

        def save(obj, f, *args, **kwargs):
            self._tick(f"checkpoint/{Path(f).name}")
            return real_save(obj, f, *args, **kwargs)

        def metrics_log(log_self, step, metrics):
            if not log_self.enabled:
                return
            try:
                self._tick("metrics.jsonl")
            except OSError:
                with open(log_self.path, "ab") as f:
                    f.write(b'{"step": ' + str(step).encode())  # a torn row
                raise
            return real_log(log_self, step, metrics)

        monkeypatch.setattr(export, "atomic_write", atomic_write)
        monkeypatch.setattr(ckpt, "save", save)
        monkeypatch.setattr(rundir.MetricsLog, "log", metrics_log)

    def _tick(self, what: str) -> None:
        self.count += 1
        self.log.append(what)
        if self.n is not None and self.count >= self.n:
            raise OSError(self.code, "No space left on device" if self.code == errno.ENOSPC else "Disk quota exceeded")


DISK_RECIPE = dict(steps=6, checkpoint_every=2, log_every=1, keep_checkpoints=3)


def _count_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    with monkeypatch.context() as m:
        filler = DiskFiller(m, None)
        ToyTrainer(toy_recipe(tmp_path / "count", **DISK_RECIPE), noise=True).run()
    fresh_process()
    return filler.log


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("ACCELERATE_USE_CPU", "true")
        fresh_process()
        ToyTrainer(toy_recipe(out, **DISK_RECIPE), noise=True).run()
        fresh_process()
    return weights(out)


def _full_disk_then_resume(tmp_path, monkeypatch, toy_cli, capsys, n: int, code: int, straight) -> tuple[str, str]:
    """Run the toy CLI with the disk full from write ``n`` on; check the error, the folder, and resume."""
    run_dir = tmp_path / f"run_{n}"
    path = recipe_file(tmp_path / f"r_{n}.yaml", output_dir=run_dir, **DISK_RECIPE)
    with monkeypatch.context() as m:
        m.setattr("_toy_cli.SlowToyTrainer.__init__", _noisy_init)
        filler = DiskFiller(m, n, code)
        assert toy_cli(path) == 2
        failed_on = filler.log[n - 1]
    err = error_line(capsys.readouterr().err)
    reason = "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded"
    assert err.startswith(f"error: disk full ({reason}) while writing "), err
    assert f" in {run_dir}; last good checkpoint: " in err, err
    done = checkpoint_dirs(run_dir) if run_dir.exists() else []
    for ckpt in done:
        assert verify_checkpoint(ckpt) is None, ckpt  # the earlier checkpoints are intact
    assert not list((run_dir / "checkpoints").glob("*.tmp")) if run_dir.exists() else True
    assert not (run_dir / "model.safetensors").exists() or failed_on == "model.json"
    with monkeypatch.context() as m:
        m.setattr("_toy_cli.SlowToyTrainer.__init__", _noisy_init)
        if done:
            assert f"last good checkpoint: {done[-1]} (it and the earlier ones are intact)" in err, err
            assert "continue with resume=true" in err
            assert toy_cli(path, "resume=true") == 0, capsys.readouterr().err[-2000:]
        else:
            assert "last good checkpoint: none" in err and f"after deleting {run_dir}" in err, err
            shutil.rmtree(run_dir, ignore_errors=True)
            assert toy_cli(path) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    assert_same_weights(straight, weights(run_dir))
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 7))
    return failed_on, err


_real_init = ToyTrainer.__init__


def _noisy_init(self, recipe, noise=False, nan_at=()):
    _real_init(self, recipe, noise=True, nan_at=nan_at)


@pytest.mark.parametrize("what", ["recipe.yaml", "metrics.jsonl", "checkpoint/model.safetensors", "DONE", "model.json"])
def test_a_full_disk_is_one_line_and_resume_gives_the_uninterrupted_run(
    tmp_path, monkeypatch, toy_cli, capsys, straight_run, what
):
    """The disk fills at the first write of ``what`` after step 2's checkpoint (the recipe: before any)."""
    log = _count_writes(tmp_path, monkeypatch)
    after = 0 if what == "recipe.yaml" else log.index("DONE") + 1
    n = log.index(what, after) + 1
    failed_on, err = _full_disk_then_resume(tmp_path, monkeypatch, toy_cli, capsys, n, errno.ENOSPC, straight_run)
    assert failed_on == what
    named = {
        "recipe.yaml": "recipe.yaml",
        "metrics.jsonl": "metrics.jsonl",
        "checkpoint/model.safetensors": "checkpoint step_00000004.tmp",
        "DONE": "checkpoint step_00000004.tmp",
        "model.json": "the export (model.safetensors, model.json)",
    }[what]
    assert f"while writing {named} in " in err, err


def test_a_full_quota_is_reported_alike(tmp_path, monkeypatch, toy_cli, capsys, straight_run):
    log = _count_writes(tmp_path, monkeypatch)
    n = log.index("checkpoint/optimizer.bin") + 1
    _full_disk_then_resume(tmp_path, monkeypatch, toy_cli, capsys, n, errno.EDQUOT, straight_run)


@pytest.mark.slow
def test_a_full_disk_at_every_write_of_a_run(tmp_path, monkeypatch, toy_cli, capsys, straight_run):
    log = _count_writes(tmp_path, monkeypatch)
    assert len(log) > 15, log
    seen = set()
    for n in range(1, len(log) + 1):
        failed_on, _ = _full_disk_then_resume(tmp_path, monkeypatch, toy_cli, capsys, n, errno.ENOSPC, straight_run)
        seen.add(failed_on.split("/")[0])
    assert {"recipe.yaml", "metrics.jsonl", "checkpoint", "DONE", "model.safetensors", "model.json"} <= seen


def test_other_os_errors_keep_their_traceback(tmp_path, monkeypatch):
    """Only a full disk or quota becomes DiskFullError; an I/O error is not reworded."""
    import radiosharp.export as export

    def broken(path, write):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(export, "atomic_write", broken)
    with pytest.raises(OSError, match="Input/output error") as info:
        ToyTrainer(toy_recipe(tmp_path / "run", steps=2)).run()
    assert not isinstance(info.value, DiskFullError)


@pytest.fixture
def small_filesystem(tmp_path) -> Iterator[tuple[Path, int]]:
    """A real tmpfs of ``size`` bytes at a fresh folder (needs root: skipped where it cannot be mounted)."""
    if not shutil.which("mount") or not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    size = 400 * 1024
    where = tmp_path / f"small_{uuid.uuid4().hex[:6]}"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where, size
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.subprocess
def test_a_real_small_filesystem_fills_mid_run(small_filesystem, tmp_path, toy_cli, capsys, monkeypatch):
    """Checkpoints of ~100 kB each on a 400 kB tmpfs, none deleted: the disk fills while one is written."""
    where, _ = small_filesystem
    run_dir = where / "run"
    recipe = dict(steps=12, checkpoint_every=1, log_every=1, keep_checkpoints=100)
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, **recipe)
    monkeypatch.setattr("_toy_cli.SlowToyTrainer.__init__", _noisy_init)
    assert toy_cli(path) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: disk full (No space left on device"), err
    assert ") while writing checkpoint step_" in err, err
    done = checkpoint_dirs(run_dir)
    assert done, err
    assert f"last good checkpoint: {done[-1]} (it and the earlier ones are intact)" in err, err
    for ckpt in done:
        assert verify_checkpoint(ckpt) is None
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    # Free space (the filesystem grows), resume, and compare with a run that never stopped.
    grown = subprocess.run(["mount", "-o", "remount,size=8m", str(where)], capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    assert toy_cli(path, "resume=true") == 0, capsys.readouterr().err[-2000:]
    straight = tmp_path / "straight"
    assert toy_cli(recipe_file(tmp_path / "s.yaml", output_dir=straight, **recipe)) == 0
    assert_same_weights(weights(straight), weights(run_dir))


# ------------------------------------------------------------------ kill -9 at random points, corrupt checkpoints

TOY_CLI = Path(__file__).resolve().parent / "_toy_cli.py"
KILL_RECIPE = dict(steps=16, batch_size=8, log_every=1, checkpoint_every=2, keep_checkpoints=2, warmup_steps=2)


def _start(recipe: Path, *overrides: str, **env: str) -> subprocess.Popen:
    import os
    import sys

    from conftest import REPO

    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "true",
        "TOY_NOISE": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(TOY_CLI), str(recipe), *overrides],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen, status: int = 0, timeout: float = 180) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == status, err[-3000:]
    return err


def _wait(condition, proc: subprocess.Popen, timeout: float = 120, what: str = "") -> bool:
    """Wait for ``condition()``; False when the process ended first."""
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The export of the kill tests' recipe run without a stop (in a subprocess, as theirs)."""
    where = tmp_path_factory.mktemp("uninterrupted")
    path = recipe_file(where / "r.yaml", output_dir=where / "run", **KILL_RECIPE)
    _finish(_start(path))
    return weights(where / "run")


def _kill9(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: nothing of the run's own clean-up runs
    proc.communicate(timeout=60)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_random_points_then_resume_equals_the_uninterrupted_run(tmp_path, uninterrupted, seed):
    """Seeded kill -9s: after a random number of logged steps, and inside a checkpoint write
    (files written to ``step_N.tmp``, not yet marked DONE nor renamed), each followed by a resume."""
    import random

    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, **KILL_RECIPE)
    flag = tmp_path / "in_checkpoint"
    total = KILL_RECIPE["steps"]
    while True:  # four kill points, at least one inside a checkpoint write (checkpoints: even steps)
        points = sorted(rng.sample(range(2, total), 4))
        plan = [("mid_checkpoint" if p % 2 == 0 and rng.random() < 0.6 else "steps", p) for p in points]
        if any(how == "mid_checkpoint" for how, _ in plan):
            break
    kills = []
    for how, point in plan:
        resume = ["resume=true"] if checkpoint_dirs(run_dir) else []
        if not resume and run_dir.exists():  # killed before its first checkpoint: start again
            shutil.rmtree(run_dir)
        if how == "mid_checkpoint":
            flag.unlink(missing_ok=True)
            proc = _start(
                path,
                *resume,
                TOY_STEP_SLEEP="0.02",
                RADIOSHARP_TEST_CHECKPOINT_PAUSE="1.0",
                RADIOSHARP_TEST_CHECKPOINT_PAUSE_FILE=str(flag),
            )

            def in_target() -> bool:
                return flag.is_file() and flag.read_text().endswith(f"step_{point:08d}.tmp")

            assert _wait(in_target, proc, what=f"checkpoint {point} half-written"), proc.communicate()[1][-2000:]
            assert (run_dir / "checkpoints" / f"step_{point:08d}.tmp").is_dir()
            _kill9(proc)
            assert f"step_{point:08d}" not in [p.name for p in checkpoint_dirs(run_dir)]
        else:
            proc = _start(path, *resume, TOY_STEP_SLEEP="0.1")
            reached = _wait(lambda: max([0, *(r["step"] for r in read_metrics(run_dir))]) >= point, proc, what="steps")
            assert reached, proc.communicate()[1][-2000:]
            time.sleep(rng.uniform(0, 0.15))  # anywhere inside a step, a log write or a checkpoint
            _kill9(proc)
        kills.append(f"{how} {point}")
    assert len(kills) == len(plan), kills
    # A kill leaves no DONE-less or corrupt checkpoint among the complete ones.
    for ckpt in checkpoint_dirs(run_dir):
        assert verify_checkpoint(ckpt) is None, (ckpt, kills)
    resume = ["resume=true"] if checkpoint_dirs(run_dir) else []
    if not resume:
        shutil.rmtree(run_dir)
    _finish(_start(path, *resume))
    assert_same_weights(uninterrupted, weights(run_dir))
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, KILL_RECIPE["steps"] + 1)), kills
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_files_corrupted_in_the_newest_checkpoint_then_resume_falls_back(tmp_path, uninterrupted, seed):
    """A run killed after its 3rd checkpoint; seeded damage to files of the newest; resume
    warns naming it, starts from the one before, and ends as the run that never stopped."""
    import random

    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    path = recipe_file(tmp_path / "r.yaml", output_dir=run_dir, **{**KILL_RECIPE, "keep_checkpoints": 3})
    proc = _start(path, TOY_STEP_SLEEP="0.05")
    assert _wait(lambda: len(checkpoint_dirs(run_dir)) >= 3, proc, what="3 checkpoints")
    _kill9(proc)
    newest = checkpoint_dirs(run_dir)[-1]
    victims = rng.sample(sorted(p.name for p in newest.iterdir() if p.name != "DONE"), 2)
    for name in victims:
        target = newest / name
        data = target.read_bytes()
        how = rng.choice(["flip", "truncate", "delete", "zero"])
        if how == "flip":
            i = rng.randrange(len(data))
            target.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
        elif how == "truncate":
            target.write_bytes(data[: rng.randrange(len(data))])
        elif how == "delete":
            target.unlink()
        else:
            target.write_bytes(bytes(len(data)))
    err = _finish(_start(path, "resume=true"))
    assert f"checkpoint {newest} is corrupt" in err, err[-3000:]
    assert_same_weights(uninterrupted, weights(run_dir))
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, KILL_RECIPE["steps"] + 1))


# ----------------------------------------------------------------------------- factor 1, a factor too large for memory


def _upsampler_recipe(out: Path, factor: int) -> dict:
    return {
        "kind": "upsampler",
        "output_dir": str(out),
        "teachers": {"dinov2": {"size": "tiny", "upsampler": {"name": "bilinear", "factor": factor}}},
        "data": {"source": "synthetic", "num_images": 8, "size": 64, "seed": 0},
        "stats": {"num_images": 4, "batch_size": 2},
        "train": {"steps": 1, "batch_size": 2},
        "upsampler_training": {"views": {"num_views": 2}, "heldout_images": 0},
    }


@pytest.mark.parametrize("where", ["upsampler", "distill"])
def test_factor_1_is_refused_at_validation_naming_the_valid_factors(tmp_path, capsys, where):
    if where == "upsampler":
        data = _upsampler_recipe(tmp_path / "run", 1)
    else:
        data = {
            "kind": "distill",
            "output_dir": str(tmp_path / "run"),
            "teachers": {"dinov2": {"size": "tiny", "upsampler": {"name": "bilinear", "factor": 1}}},
        }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    assert train_cli.main([str(path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert err == (
        "error: bad value at 'teachers.dinov2.upsampler.factor': factor 1 does not upsample (the teacher's own "
        "features are the factor-1 baseline); valid factors: integers >= 2 (2, 3, 4, ...) (got 1)"
    ), err
    assert not (tmp_path / "run").exists()
    data["teachers"]["dinov2"]["upsampler"]["factor"] = 2
    path.write_text(yaml.safe_dump(data))
    from radiosharp.recipe import load_recipe

    assert load_recipe(path, ["teachers.dinov2.upsampler.factor=3"]).teachers["dinov2"].upsampler.factor == 3
    with pytest.raises(RecipeError, match="factor 1 does not upsample"):
        load_recipe(path, ["teachers.dinov2.upsampler.factor=1"])


def test_the_memory_estimate_refuses_what_cannot_fit_with_the_estimate(monkeypatch):
    from radiosharp import memory

    need = memory.upsampling_bytes(2, 384, (12, 12), 100)
    assert need == 2 * 384 * 1200 * 1200 * 4 * memory.ACTIVATION_MULTIPLE
    with pytest.raises(RecipeError) as info:
        memory.check_upsampling_memory("teachers.x.upsampler.factor", 2, 384, (12, 12), 100, available=2**30)
    msg = str(info.value)
    assert msg.startswith("teachers.x.upsampler.factor: factor 100 needs about 24.7 GiB"), msg
    assert "(2 x 384 x 1200 x 1200 float32, x6 for activations and gradients)" in msg
    assert "more than the memory given (1.0 GiB); lower the factor (factor 20 fits)" in msg
    assert memory.check_upsampling_memory("w", 2, 384, (12, 12), 2, available=2**30) < 2**30
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    memory.check_upsampling_memory("w", 2, 384, (12, 12), 100, available=2**30)  # skipped


def test_available_memory_reads_psutil_or_proc_meminfo(monkeypatch, tmp_path):
    import sys

    from radiosharp import memory

    free, where = memory.available_memory("cpu")
    assert free is not None and free > 0 and where == "the host's available memory"
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       1000 kB\nMemAvailable:    512 kB\n")
    assert memory._meminfo_available(str(info)) == 512 * 1024
    assert memory._meminfo_available() is not None  # this machine's /proc/meminfo
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed: /proc/meminfo
    monkeypatch.setattr(memory, "_meminfo_available", lambda path="/proc/meminfo": 123)
    assert memory.available_memory("cpu") == (123, "the host's available memory")


def test_an_upsampler_run_whose_factor_cannot_fit_is_refused_before_its_statistics(tmp_path, capsys, monkeypatch):
    from radiosharp import memory

    monkeypatch.setattr(memory, "available_memory", lambda device=None: (50 * 2**20, "the host's available memory"))
    computed = []
    import radiosharp.trainers.upsampler as up

    monkeypatch.setattr(up, "teacher_phis", lambda *a, **k: computed.append(a) or None)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_upsampler_recipe(tmp_path / "run", 64)))
    assert train_cli.main([str(path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: teachers.dinov2.upsampler.factor: factor 64 needs about "), err
    assert "more than the host's available memory (0.0 GiB); lower the factor (factor " in err, err
    assert not computed  # refused before the statistics (and the first step)
    assert not (tmp_path / "run").exists()  # and it leaves no folder that would refuse reuse


# ----------------------------------------------------------------------------- bench train says what it needs, up front


def test_bench_train_names_what_the_recipe_needs_before_building_teachers(capsys, monkeypatch):
    """The README's stage-3 command: init_from run, PHI-S files and data are named in one line, exit 2."""
    import radiosharp.builders as builders
    from radiosharp.bench.cli import main as bench_main

    built = []
    monkeypatch.setattr(builders, "build_teacher", lambda *a, **k: built.append(a) or 1 / 0)
    argv = ["train", "recipes/stage3_hires.yaml"]
    for key in ("dfn_clip", "siglip", "dinov2", "sam"):
        argv.append(f"teachers.{key}.size=random")
    for key in ("dfn_clip", "siglip"):
        argv += [f"teachers.{key}.upsampler=featsharp", f"teachers.{key}.upsampler.factor=3"]
    from conftest import REPO

    monkeypatch.chdir(REPO)
    assert bench_main(argv) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: bench train: the recipe needs what is not here: init_from runs/stage2 "), err
    for key in ("dfn_clip", "siglip", "dinov2", "sam"):
        assert f"teachers.{key}.phi_s runs/radio_stats/phi_s/{key}.safetensors" in err
        assert f"teachers.{key}.phi_s=null" in err
    assert "init_from=null" in err and "data (webdataset: " in err
    assert not built  # said before any teacher was built
