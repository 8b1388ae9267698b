"""Shared test set-up and the helpers several test modules use (test modules never import each other)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import radiosharp
from radiosharp.contracts import Teacher, TeacherOutput
from radiosharp.engine import checkpoint_dirs
from radiosharp.export import load_state_dict
from radiosharp.recipe import Recipe
from radiosharp.trainers.distill import DistillTrainer


def fresh_process() -> None:
    """Forget Accelerate's process-wide state, so the next run builds its Accelerator anew
    as a new process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state(monkeypatch):
    """A fresh Accelerate state per test, on the CPU even where a GPU is present."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    fresh_process()
    yield
    fresh_process()


def fake_hub_repo(cache: Path, repo_id: str) -> Path:
    """A Hugging Face cache entry for ``repo_id`` (refs/main -> one snapshot); returns the snapshot."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture(scope="module")
def phis(tmp_path_factory) -> dict[str, str]:
    """PHI-S statistics of the tiny teachers, computed once (what python -m radiosharp.stats writes)."""
    from radiosharp.stats import teacher_moments

    out = tmp_path_factory.mktemp("phi_s")
    data = radiosharp.build_dataset({"source": "synthetic", "num_images": 16, "size": 128, "seed": 5})
    paths = {}
    for key in ("dfn_clip", "dinov2", "sam"):
        teacher = radiosharp.build_teacher({"family": key, "size": "tiny"})
        paths[key] = str(teacher_moments(teacher, data, 16, 8).save(out / f"{key}.safetensors"))
    return paths


def base_recipe(out: Path, phis: dict[str, str], **sections: Any) -> dict[str, Any]:
    """Two tiny teachers, one 64 px partition (a 4x4 student grid vs the teachers' 8x8)."""
    recipe = {
        "kind": "distill",
        "output_dir": str(out),
        "teachers": {
            "dfn_clip": {"size": "tiny", "phi_s": phis["dfn_clip"]},
            "dinov2": {"size": "tiny", "phi_s": phis["dinov2"]},
        },
        "student": {"name": "radio", "size": "tiny"},
        "data": {"source": "synthetic", "num_images": 48, "size": 128, "seed": 0},
        "distill": {"partitions": [{"name": "low", "size": 64, "batch_size": 4}]},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "log_every": 1,
            "optim": {"lr": 2e-3, "warmup_steps": 2, "weight_decay": 0.0},
        },
    }
    recipe.update(sections)
    return recipe


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def stage3_recipe(out: Path, phis: dict[str, str]) -> dict[str, Any]:
    """A low 64 px partition and a hi 96 px one (6x6 student grid) where DFN CLIP is upsampled 2x."""
    recipe = base_recipe(out, phis)
    recipe["teachers"]["dfn_clip"]["upsampler"] = {"name": "bilinear", "factor": 2}
    recipe["distill"] = {
        "partitions": [
            {"name": "low", "size": 64, "batch_size": 2},
            {"name": "hi", "size": 96, "batch_size": 2, "upsample": True},
        ]
    }
    recipe["train"]["steps"] = 2
    return recipe


REPO = Path(__file__).resolve().parents[1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(run_dir / "model.safetensors")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max():.3g}"
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


class Killed(RuntimeError):
    """Stands for a killed process: raised by a killable trainer as step ``kill_at`` begins."""


class KillableTrainer(DistillTrainer):
    """A distillation trainer killed (:class:`Killed`) as step ``kill_at`` begins (None: never)."""

    kill_at: int | None = None

    def train_step(self, batch, step):
        if step == self.kill_at:
            raise Killed(step)
        return super().train_step(batch, step)


def kill_and_resume(trainer_cls: type[KillableTrainer], recipe: Callable[..., Recipe], run_dir: Path) -> None:
    """Run ``recipe("killed")`` (checkpointing every 3 steps, into ``run_dir``) until it is
    killed as step 4 begins, leaving step 3's checkpoint; then resume it with
    ``recipe("killed", resume=True)`` as a new process would: a fresh Accelerate state and
    another global RNG (the checkpoint must restore the run's own)."""
    killed = trainer_cls(recipe("killed"))
    killed.kill_at = 4
    with pytest.raises(Killed):
        killed.run()
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step_00000003"]
    fresh_process()
    torch.manual_seed(12345)
    trainer_cls(recipe("killed", resume=True)).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The command that starts ``args`` on ``nproc`` local processes (a free port each time)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *args,
    ]


@pytest.fixture(scope="session")
def real_weights():
    """``real_weights(name)``: the converted file of a packaged real model (converted once if needed)."""
    from radiosharp.weights import ensure_converted, get_spec

    return lambda name: ensure_converted(get_spec(name))[0]


class PatchTeacher(Teacher):
    """A patch-embedding conv and nothing else (purely patch-local)."""

    name = "patch"
    patch_size = 4
    native_size = 16
    embed_dim = 8
    summary_dim = 6

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Conv2d(3, self.embed_dim, self.patch_size, self.patch_size)
        self.head = nn.Linear(self.embed_dim, self.summary_dim)
        self.freeze()

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        features = self.embed(pixels)
        return TeacherOutput(self.head(features.mean((2, 3))), features)


def lowres_of(teacher: Teacher, images: torch.Tensor) -> torch.Tensor:
    return teacher(
        torch.nn.functional.interpolate(
            images, size=(teacher.native_size,) * 2, mode="bilinear", align_corners=False, antialias=True
        )
    ).features


class PixelTeacher(Teacher):
    """A teacher whose 'features' are its 4x4-pooled pixels (consistent under any warp)."""

    name, patch_size, native_size, embed_dim, summary_dim = "pixels", 4, 32, 3, None

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(None, torch.nn.functional.avg_pool2d(pixels, 4))


@pytest.fixture
def toy_cli(monkeypatch):
    """``toy_cli(recipe_path, *overrides) -> status``: the train CLI with the toy kind
    (``tests/_toy_cli.py``), in this process."""
    import radiosharp.train as train_cli

    monkeypatch.setitem(train_cli.TRAINERS, "distill", "_toy_cli")

    def call(*argv: str) -> int:
        fresh_process()
        return train_cli.main([str(a) for a in argv])

    return call
