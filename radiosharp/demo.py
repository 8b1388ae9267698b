"""``python -m radiosharp.demo``: the whole loop at CPU scale, from a fresh clone.

1. featurize: every teacher family on the packaged photographs -> PCA pictures (the
   real DINOv2-S/14 and VGG16-HED; tiny random DFN CLIP, SigLIP and SAM)
2. PHI-S statistics of the two real teachers on training-photo crops
3. three upsamplers for DINOv2-S/14 (bilinear, featup, featsharp) trained by multi-view
   consistency, scored on held-out photos
4. the student from both real teachers: stage 1 -> stage 2 -> stage 3 twice (DINOv2's
   hi-res targets via bilinear and via featsharp)
5. ``eval mtl`` of the featsharp student against the bilinear one
6. the upsampler figure (``python -m radiosharp.viz``) on the held-out astronaut, with
   DINOv2 itself run on the 2x input as the real hi-res reference
7. the upsampler mode of eval (``python -m radiosharp.eval upsample``): the teacher alone
   and with each demo upsampler, segmentation, normals and keypoint probes, metric-vs-factor
   plots (``recipes/demo/_eval_upsample.yaml``)

Everything lands in ``runs/demo/`` (cleared first). Each step prints its time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "demo"
OUT = Path("runs/demo")


class Steps:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, title: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        print(f"\n=== {title}", flush=True)
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        if isinstance(result, int) and not isinstance(result, bool) and result != 0:
            raise SystemExit(f"demo step '{title}' failed (exit code {result})")
        self.times.append((title, time.perf_counter() - t0))
        print(f"--- {title}: {self.times[-1][1]:.1f} s", flush=True)
        return result

    def summary(self) -> str:
        width = max(len(t) for t, _ in self.times)
        lines = [f"{t:<{width}}  {s:7.1f} s" for t, s in self.times]
        lines.append(f"{'total':<{width}}  {sum(s for _, s in self.times):7.1f} s")
        return "\n".join(lines)


def train(recipe: str, *overrides: str) -> Path:
    from radiosharp.recipe import load_recipe
    from radiosharp.train import run_recipe

    return run_recipe(load_recipe(RECIPES / recipe, list(overrides)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="do not clear runs/demo first")
    args = parser.parse_args(argv)
    from radiosharp.cli_logging import show_library_log
    from radiosharp.weights import unusable_real_weights

    show_library_log()

    problem = unusable_real_weights()  # before anything is cleared or run
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if OUT.exists() and not args.keep:
        shutil.rmtree(OUT)
    steps = Steps()
    steps.run("1. featurize: all teacher families on the photos -> PCA", train, "featurize.yaml")
    from radiosharp.stats import main as stats_main

    steps.run("2. PHI-S statistics", stats_main, [str(RECIPES / "stats.yaml")])
    for name in ("bilinear", "featup", "featsharp"):
        steps.run(f"3. upsampler: {name}", train, f"upsampler_{name}.yaml")
    steps.run("4a. student stage 1", train, "stage1.yaml")
    steps.run("4b. student stage 2", train, "stage2.yaml")
    for name in ("bilinear", "featsharp"):
        steps.run(
            f"4c. student stage 3, hi-res teachers via {name}",
            train,
            "stage3_hires.yaml",
            f"teachers.dinov2.upsampler=runs/demo/up_{name}",
            f"name=stage3_{name}",
            f"output_dir=runs/demo/stage3_{name}",
        )
    from radiosharp.eval.cli import main as eval_main

    steps.run(
        "5. eval mtl: featsharp student vs bilinear student",
        eval_main,
        ["mtl", "runs/demo/stage3_featsharp", "--baseline", "runs/demo/stage3_bilinear"],
    )
    from radiosharp.viz import main as viz_main

    steps.run(
        "6. upsampler figure",
        viz_main,
        [
            "photo:astronaut",
            "--teacher",
            "runs/demo/up_bilinear",
            "--upsampler",
            "runs/demo/up_featup",
            "runs/demo/up_featsharp",
            "--hires-reference",
            "--out",
            "runs/demo/figure.png",
        ],
    )
    steps.run(
        "7. eval upsample: the probes on the teacher and each upsampler",
        eval_main,
        [
            "upsample",
            "--teacher",
            "runs/demo/up_bilinear",
            "--upsampler",
            "bilinear",
            "runs/demo/up_featup",
            "runs/demo/up_featsharp",
            "--factors",
            "1",
            "2",
            "--settings",
            str(RECIPES / "_eval_upsample.yaml"),
            "--out",
            "runs/demo/upsample_eval",
        ],
    )
    print("\n=== timings\n" + steps.summary())
    print(f"\nMTL report: {OUT / 'stage3_featsharp' / 'eval' / 'mtl_report.md'}")
    print(f"PCA pictures: {OUT / 'featurize' / 'viz'}; upsampler figure: {OUT / 'figure.png'}")
    print(f"upsampler mode: {OUT / 'upsample_eval' / 'upsample_report.md'} (and its *_vs_factor.png plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
