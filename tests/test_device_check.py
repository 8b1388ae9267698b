"""The GPU check (scripts/device_check.sh) in its dry run: every step at tiny size on the CPU.

The run hides the packages the GPU machine does not have (open_clip, webdataset, datasets,
deepspeed) behind an import blocker, so a step that would need one there fails here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABSENT_ON_DEVICE = ("open_clip", "webdataset", "datasets", "deepspeed")
BLOCKER = f"""
import importlib.abc, importlib.util, sys
ABSENT = {ABSENT_ON_DEVICE!r}
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
        return None
sys.meta_path.insert(0, _Absent())
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name.split(".")[0] in ABSENT else _find_spec(name, package)
importlib.util.find_spec = find_spec
"""
STEPS = [
    "environment",
    "gpu_tests",
    "attention_parity",
    "bench_attention",
    "upsampled_memory",
    "bench_upsample",
    "bench_train",
]


@pytest.mark.subprocess
@pytest.mark.slow
def test_dry_run_exercises_every_step_and_writes_the_report(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_check.sh"), "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert (out / "device_report.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_report.json").read_text())
    assert report["dry_run"] is True
    assert [s["name"] for s in report["steps"]] == STEPS
    failed = {s["name"]: s["output_tail"][-1500:] for s in report["steps"] if s["status"] != "ok"}
    assert not failed, failed
    assert proc.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["device_report.json", "device_report.md"]
    results = {s["name"]: s.get("result") for s in report["steps"]}
    env_result = results["environment"]
    assert env_result["cuda_available"] is False and all(v == "ok" for v in env_result["imports"].values())
    assert all(env_result["packages"][name] is not None for name in ("torch", "pydantic"))
    memory = results["upsampled_memory"]
    assert [r["mode"] for r in memory["rows"]] == ["unbounded", "bounded"] and memory["max_abs_diff"] < 1e-5
    assert all(r["status"] == "ok" for r in results["attention_parity"]["rows"])
    ran = {r["backend"]: r["ran"] for r in results["attention_parity"]["rows"]}
    assert ran["triton"] == "reference" and ran["reference_tiled"] == "reference_tiled"  # no CUDA: it says so
    status = {(r["backend"], r["phase"]): r["status"] for r in results["bench_attention"]["rows"]}
    assert status[("reference", "fwd+bwd")] == "ok" and status[("triton", "fwd")] == "n/a"
    assert results["bench_upsample"]["rows"] and results["bench_train"]["images_per_s"] > 0
    text = (out / "device_report.md").read_text()
    assert text.startswith("# Device check (dry run, CPU)") and "| bench_train | ok |" in text


def test_device_wheels_target_and_ignored_folders():
    makefile = (REPO / "Makefile").read_text()
    assert "device-wheels:" in makefile and "--only-binary=:all:" in makefile and "pydantic-core" in makefile
    ignored = (REPO / ".gitignore").read_text().split()
    assert "device_wheels/" in ignored and "device_out/" in ignored
    script = (REPO / "scripts" / "device_check.sh").read_text()
    assert "--no-index" in script and "DRY_RUN" in script
