"""The GPU check's steps (run by scripts/device_check.sh; see its header). Writes $OUT/device_report.{json,md}.

Every step runs in its own subprocess with a time limit, so one failing or hanging step is recorded
(status, seconds, the tail of its output) and the next one still runs. ``--dry-run`` runs every step
at tiny size on the CPU (what tests/test_device_check.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TAIL = 4000  # characters of each step's output kept in the report
# every test module is collected (a module that cannot import there is reported, the others still run)
GPU_TEST_ARGS = ["--continue-on-collection-errors", "-o", "addopts=", "tests"]


def _env(dry: bool) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_step(name: str, cmd: list[str], out: Path, dry: bool, timeout: int) -> dict[str, Any]:
    """One step as a subprocess: status ok / failed / timeout, its seconds and output tail; a JSON file it
    wrote (``<out>/<name>.json``) is attached as ``result``."""
    start = time.perf_counter()
    print(f"[device_check] {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(dry), capture_output=True, text=True, timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        status, rc = "timeout", None
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
    seconds = time.perf_counter() - start
    step: dict[str, Any] = {"name": name, "status": status, "returncode": rc, "seconds": round(seconds, 2)}
    step["command"] = cmd
    step["output_tail"] = output[-TAIL:]
    result = out / f"{name}.json"
    if result.exists():
        try:
            step["result"] = json.loads(result.read_text())
        except json.JSONDecodeError:
            pass
    print(f"[device_check] {name}: {status} in {seconds:.1f} s", flush=True)
    return step


def stage3_recipe(out: Path, dry: bool) -> Path:
    """A stage-3 distillation recipe: a hi-res partition taught through FeatSharp 3x (untrained: the cost
    does not depend on the weights), ``size: random`` teachers on the GPU, tiny ones in the dry run, bf16."""
    size = "tiny" if dry else "random"
    recipe = {
        "kind": "distill",
        "output_dir": str(out / "bench_train_run"),
        "teachers": {"dinov2": {"size": size, "upsampler": {"name": "featsharp", "factor": 3}}},
        "student": {"name": "radio", "size": "tiny" if dry else "real"},
        "data": {"source": "synthetic", "num_images": 16 if dry else 64, "size": 128 if dry else 1344, "seed": 0},
        "distill": {
            "partitions": [
                {"name": "low", "size": 112 if dry else 448, "batch_size": 2 if dry else 8},
                {"name": "hi", "size": 336 if dry else 1344, "batch_size": 2 if dry else 4, "upsample": True},
            ]
        },
        "train": {
            "steps": 2,
            "batch_size": 4 if dry else 12,  # the sum of the partitions' batch sizes
            "log_every": 1,
            "mixed_precision": "no" if dry else "bf16",
            "optim": {"lr": 1e-4, "warmup_steps": 1},
        },
    }
    path = out / "stage3_recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def steps(out: Path, dry: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s); the limits sum to 465 s, inside the wrapper's 470 s and 8 minutes."""
    py = sys.executable
    teacher = "{family: dinov2, size: tiny}" if dry else "{family: dinov2, size: random}"
    factors = ["2"] if dry else ["2", "3", "4"]
    reps = ["--repeats", "1", "--warmup", "0"] if dry else ["--repeats", "3", "--warmup", "1"]
    precision = ["--precision", "fp32"] if dry else ["--precision", "bf16"]
    check = [py, str(REPO / "scripts" / "device_steps.py")] + (["--dry-run"] if dry else [])
    return [
        ("environment", [*check, "environment", "--json", str(out / "environment.json")], 30),
        ("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *GPU_TEST_ARGS], 120),
        ("attention_parity", [*check, "attention", "--json", str(out / "attention_parity.json")], 45),
        (
            "bench_attention",  # reference vs flex vs triton, fwd and fwd+bwd, timed round-robin
            [py, "-m", "radiosharp.bench", "attention", *(["--tiny"] if dry else []), *precision]
            + ["--repeats", "1" if dry else "3", "--warmup", "1"]
            + ["--json", str(out / "bench_attention.json")],
            40,
        ),
        ("upsampled_memory", [*check, "memory", "--json", str(out / "upsampled_memory.json")], 60),
        (
            "bench_upsample",
            [py, "-m", "radiosharp.bench", "upsample", "--teacher", teacher, "--factors", *factors, "--no-train"]
            + [*reps, *precision, "--json", str(out / "bench_upsample.json")],
            90,
        ),
        (
            "bench_train",
            [py, "-m", "radiosharp.bench", "train", str(stage3_recipe(out, dry)), "--steps", "1" if dry else "3"]
            + ["--warmup", "0" if dry else "1", "--stats-images", "4", "--json", str(out / "bench_train.json")],
            80,
        ),
    ]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Device check ({'dry run, CPU' if report['dry_run'] else 'GPU'})",
        "",
        f"{report['host']}, python {report['python']}, started {report['started']}, {report['seconds']:.0f} s.",
        "",
        "| step | status | seconds |",
        "|:---|:---|---:|",
    ]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} |" for s in report["steps"]]
    for s in report["steps"]:
        lines += ["", f"## {s['name']} ({s['status']})", ""]
        if "result" in s:
            lines += ["```json", json.dumps(s["result"], indent=1)[:6000], "```"]
        else:
            lines += ["```", s["output_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN") == "1")
    parser.add_argument("--out", default=os.environ.get("OUT") or "device_out")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # each step's own JSON goes to a work folder: only the two report files land in $OUT
    work = Path(tempfile.mkdtemp(prefix="radiosharp-device-check-"))
    start = time.perf_counter()
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "host": platform.node(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps": [],
    }
    for name, cmd, timeout in steps(work, args.dry_run):
        if args.only and name not in args.only:
            continue
        # the dry run is not bound by the 8 minutes, and a shared CPU can be slow: 3x the limits
        step = run_step(name, cmd, work, args.dry_run, timeout * (3 if args.dry_run else 1))
        if name == "gpu_tests" and step["returncode"] == 5:  # pytest: no test collected (none marked gpu)
            step["status"] = "ok"
            step["note"] = "no test marked gpu was collected"
        report["steps"].append(step)
        report["seconds"] = time.perf_counter() - start
        (out / "device_report.json").write_text(json.dumps(report, indent=2))
        (out / "device_report.md").write_text(markdown(report))
    report["seconds"] = time.perf_counter() - start
    (out / "device_report.json").write_text(json.dumps(report, indent=2))
    (out / "device_report.md").write_text(markdown(report))
    print(f"[device_check] wrote {out / 'device_report.json'} and {out / 'device_report.md'}")
    return 0 if all(s["status"] == "ok" for s in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
