"""``python -m radiosharp.stats RECIPE [dotted.key=value ...]``: PHI-S statistics per teacher.

Streams ``stats.num_images`` images of the recipe's ``data`` through every teacher
of ``teachers`` (resized to the teacher's ``native_size``, or to ``stats.image_size``)
and accumulates the feature mean and covariance in float64. Under
``accelerate launch`` each process takes every ``world``-th image and the moments
are summed across processes. Writes ``{run_dir}/phi_s/{teacher_key}.safetensors``
(``mean``, ``cov``, ``count`` + metadata), the file a recipe's
``teachers.<key>.phi_s`` points at. Every recipe problem is reported before
anything is computed or written.
"""

from __future__ import annotations

import argparse
import sys

from radiosharp.phis import FeatureMoments
from radiosharp.recipe import RecipeError, load_recipe
from radiosharp.stats.compute import compute_stats
from radiosharp.stats.moments import mean_eigenvalue

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.stats", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="a YAML recipe whose teachers and data to use")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. stats.num_images=1024")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        paths = compute_stats(recipe)
    except (RecipeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        for key, path in paths.items():
            m = FeatureMoments.load(path)
            print(f"{key}: {path}  (C={m.dim}, vectors={m.num_vectors}, mean eigenvalue={mean_eigenvalue(m):.6g})")
    return 0
