"""Peak memory of an UpsampledTeacher call with and without a memory budget (upsamplers._chunked).

    python scripts/upsampled_memory.py --teacher sam --size random --factor 4 --upsampler featup \
        --budget-mb 256 [--json out.json]

Each mode (unbounded, bounded) runs in its own process, batch 1, random image at ``u x`` the
teacher's native size, under ``torch.no_grad``. Reported per mode:

- ``rss_peak_mb``: the process's peak resident memory (``ru_maxrss``): weights, teacher and upsampler;
- ``rss_before_upsampler_mb``: the resident memory after building the teacher and running it on
  the global view (``ru_maxrss`` then), so the difference is what the upsampling added on top;
- ``upsampler_peak_mb``: the extra memory allocated by tensors during the upsampler call alone
  (CPU: torch.profiler allocation events, CUDA: max_memory_allocated), output included;
- ``output_mb``: the size of the ``[1,C,uh,uw]`` output; ``seconds``: the upsampler call's time;
- ``max_abs_diff`` (bounded): against the unbounded output (from the same seed), and relative to the
  output's largest magnitude (``max_rel_diff``: float32 rounding is ~1e-7 of it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(args: argparse.Namespace) -> dict:
    import radiosharp
    from radiosharp.bench.measure import cuda_peak_bytes, peak_bytes
    from radiosharp.images import resize
    from upsamplers._chunked import chunked_upsample, plan_chunks

    device = torch.device(args.device)
    teacher = radiosharp.build_teacher({"family": args.teacher, "size": args.size}).to(device)
    up = radiosharp.build_upsampler(
        args.upsampler, factor=args.factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
    ).to(device)
    up.eval()
    side = teacher.native_size
    images = torch.rand(1, 3, args.factor * side, args.factor * side, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    with torch.no_grad():
        lowres = teacher(resize(images, (side, side))).features
        featurize = lambda x: teacher(x).features
        budget = args.budget_mb if args.mode == "bounded" else None
        call = lambda: chunked_upsample(up, images, lowres, featurize, max_memory_mb=budget)
        rss_before = _rss_mb()
        start = time.perf_counter()
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rss_after = _rss_mb()
        del out
        peak = cuda_peak_bytes(call, device) if device.type == "cuda" else peak_bytes(call, device)
        out = call()
    record = {
        "mode": args.mode,
        "teacher": f"{args.teacher} ({args.size})",
        "embed_dim": teacher.embed_dim,
        "native_size": side,
        "factor": args.factor,
        "upsampler": args.upsampler,
        "budget_mb": budget,
        "plan": None if budget is None else plan_chunks(up, lowres, max_memory_mb=budget).as_dict(),
        "output_mb": out.numel() * out.element_size() / 2**20,
        "seconds": seconds,
        "rss_before_upsampler_mb": rss_before,
        "rss_peak_mb": rss_after,
        "upsampler_peak_mb": None if peak is None else peak / 2**20,
        "threads": torch.get_num_threads(),
    }
    if args.save:
        torch.save(out.cpu(), args.save)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sam")
    parser.add_argument("--size", default="random")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--upsampler", default="featup")
    parser.add_argument("--budget-mb", type=float, default=256.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--mode", choices=("unbounded", "bounded", "both"), default="both")
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode != "both":
        print(json.dumps(one(args)))
        return 0
    records = []
    tmp = Path(args.json or "upsampled_memory.json").with_suffix(".out.pt")
    for mode in ("unbounded", "bounded"):
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--mode", mode]
        cmd += ["--save", str(tmp.with_name(f"{mode}.{tmp.name}"))]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        records.append(json.loads(res.stdout.strip().splitlines()[-1]))
    a = torch.load(tmp.with_name(f"unbounded.{tmp.name}"))
    b = torch.load(tmp.with_name(f"bounded.{tmp.name}"))
    records[1]["max_abs_diff"] = float((a - b).abs().max())
    records[1]["max_abs_unbounded"] = float(a.abs().max())
    records[1]["max_rel_diff"] = records[1]["max_abs_diff"] / max(records[1]["max_abs_unbounded"], 1e-30)
    for mode in ("unbounded", "bounded"):
        tmp.with_name(f"{mode}.{tmp.name}").unlink()
    text = json.dumps(records, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
