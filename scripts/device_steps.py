"""Steps of the GPU check that have no command of their own (scripts/device_check.py runs them).

    python scripts/device_steps.py [--dry-run] {environment,attention,memory} --json PATH

- ``environment``: torch / CUDA / device, the versions of the packages the project imports, and
  whether every radiosharp module the check uses imports (the GPU machine has its own torch).
- ``attention``: parity of the neighbourhood-attention backends against the reference kernel,
  forward and backward, fp32 and bf16 (on CUDA), at the JBU and FeatSharp shapes; time per call.
  Backends are read from ``upsamplers._kernels`` (a ``backend`` argument); without one, only the
  reference runs.
- ``memory``: peak memory of an UpsampledTeacher (DINOv2-L ``size: random``, featup, 4x, batch 1)
  unbounded and with ``max_memory_mb`` (CUDA ``max_memory_allocated``; CPU profiler in the dry run),
  time of each, and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(dry: bool) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("torch", "torchvision", "timm", "transformers", "accelerate", "safetensors", "pydantic"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    for name in ("open_clip_torch", "webdataset", "datasets", "deepspeed", "scikit-image", "pyyaml", "tqdm"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    modules = {}
    for name in (
        "radiosharp",
        "upsamplers._chunked",
        "radiosharp.upsampled",
        "radiosharp.bench.cli",
        "radiosharp.train",
    ):
        try:
            importlib.import_module(name)
            modules[name] = "ok"
        except Exception as err:  # noqa: BLE001 - reported
            modules[name] = f"{type(err).__name__}: {err}"
    info: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    info.update(packages=packages, imports=modules)
    return info


def _time(fn, dev: torch.device, repeats: int = 3) -> float:
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def attention(dry: bool) -> dict[str, Any]:
    from upsamplers import _kernels

    dev = device()
    params = inspect.signature(_kernels.neighborhood_attention).parameters
    backends = ["reference"]
    if "backend" in params:
        backends += [b for b in getattr(_kernels, "BACKENDS", ("flex",)) if b not in ("reference", "auto")]
    shapes = {  # (batch, heads, D, Dv, H, W, kernel)
        "jbu": (1, 1, 32, 64 if dry else 384, 16 if dry else 56, 16 if dry else 56, 7),
        "featsharp": (1, 4 if dry else 16, 8 if dry else 48, 8 if dry else 48, 12 if dry else 64, 12 if dry else 64, 5),
    }
    dtypes = [torch.float32] + ([torch.bfloat16] if dev.type == "cuda" else [])
    rows = []
    for shape_name, (b, n, d, dv, h, w, k) in shapes.items():
        g = torch.Generator().manual_seed(0)
        q, kk = (torch.randn(b, n, d, h, w, generator=g) for _ in range(2))
        v = torch.randn(b, n, dv, h, w, generator=g)
        bias = torch.randn(n, k * k, generator=g)
        for dtype in dtypes:
            inputs = [t.to(dev, dtype) for t in (q, kk, v)] + [bias.to(dev, dtype)]
            ref_out = ref_grads = None
            for backend in backends:
                row: dict[str, Any] = {"shape": shape_name, "dtype": str(dtype), "backend": backend}
                try:
                    if "v" in inspect.signature(_kernels.resolve_backend).parameters:  # what runs: a fallback says so
                        ran = _kernels.resolve_backend(backend, inputs[0], v=inputs[2], kernel_size=k)
                        row["ran"], row["why"] = ran
                    leaves = [t.detach().requires_grad_(True) for t in inputs]
                    kw = {} if backend == "reference" or "backend" not in params else {"backend": backend}
                    call = lambda: _kernels.neighborhood_attention(*leaves[:3], k, leaves[3], scale=d**-0.5, **kw)  # noqa: B023
                    out = call()
                    grads = torch.autograd.grad(out.float().square().sum(), leaves)
                    row["fwd_s"] = _time(lambda: call().detach(), dev)  # noqa: B023
                    if ref_out is None:
                        ref_out, ref_grads = out.detach().float(), [x.float() for x in grads]
                    else:
                        row["max_abs_diff"] = float((out.detach().float() - ref_out).abs().max())
                        row["grad_max_abs_diff"] = max(
                            float((a.float() - r).abs().max()) for a, r in zip(grads, ref_grads)
                        )
                    row["status"] = "ok"
                except Exception as err:  # noqa: BLE001 - reported
                    row["status"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
                rows.append(row)
    return {"device": str(dev), "backends": backends, "rows": rows}


def memory(dry: bool) -> dict[str, Any]:
    import radiosharp
    from radiosharp.bench.measure import peak_bytes
    from radiosharp.images import resize
    from radiosharp.upsampled import UpsampledTeacher
    from upsamplers._chunked import plan_chunks

    dev = device()
    teacher = radiosharp.build_teacher({"family": "dinov2", "size": "tiny" if dry else "random"}).to(dev)
    factor, budget = 4, 8.0 if dry else 512.0
    up = radiosharp.build_upsampler("featup", factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size)
    side = teacher.native_size
    images = torch.rand(1, 3, factor * side, factor * side, generator=torch.Generator().manual_seed(0)).to(dev)
    rows, outs = [], {}
    for label, mb in (("unbounded", None), ("bounded", budget)):
        model = UpsampledTeacher(teacher, up, max_memory_mb=mb).to(dev).eval()
        with torch.no_grad():
            outs[label] = model(images).features.float().cpu()
            seconds = _time(lambda: model(images), dev, repeats=2)  # noqa: B023
            peak = peak_bytes(lambda: model(images).features, dev)  # noqa: B023
            lowres = teacher(resize(images, (side, side))).features
        plan = None if mb is None else plan_chunks(up, lowres, max_memory_mb=mb).as_dict()
        rows.append(
            {
                "mode": label,
                "budget_mb": mb,
                "seconds": seconds,
                "peak_mb": None if peak is None else peak / 2**20,
                "plan": plan,
            }
        )
    return {
        "device": str(dev),
        "teacher": f"dinov2 ({'tiny' if dry else 'random'}, C={teacher.embed_dim}, {side} px)",
        "factor": factor,
        "upsampler": "featup",
        "output_mb": outs["unbounded"].numel() * 4 / 2**20,
        "peak": "CUDA max_memory_allocated above the allocation before the call"
        if dev.type == "cuda"
        else "CPU profiler allocation events",
        "rows": rows,
        "max_abs_diff": float((outs["unbounded"] - outs["bounded"]).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("environment", "attention", "memory"))
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    result = {"environment": environment, "attention": attention, "memory": memory}[args.step](args.dry_run)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2)[:3000])
    failed = args.step == "environment" and any(v != "ok" for v in result["imports"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
