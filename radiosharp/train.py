"""``python -m radiosharp.train RECIPE [dotted.key=value ...]`` (also under ``accelerate launch``).

Loads and validates the recipe, then runs the trainer for its ``kind``:
``featurize`` (teacher features + PCA images), ``upsampler`` (multi-view training of
a feature upsampler) or ``distill`` (the RADIO student).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from radiosharp.cli_logging import show_library_log
from radiosharp.recipe import KINDS, Recipe, RecipeError, load_recipe

TRAINERS = {
    "featurize": "radiosharp.trainers.featurize",
    "upsampler": "radiosharp.trainers.upsampler",
    "distill": "radiosharp.trainers.distill",
}


def run_recipe(recipe: Recipe) -> Path:
    """Run a validated recipe; returns the run folder."""
    module_name = TRAINERS.get(recipe.kind)
    if module_name is None:  # pragma: no cover - the schema restricts kind
        raise RecipeError(f"unknown kind '{recipe.kind}'; valid kinds: {', '.join(KINDS)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise RecipeError(f"kind '{recipe.kind}' is not implemented yet") from None
        raise
    return module.run(recipe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="a YAML recipe (see recipes/)")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted.key=value overrides, e.g. train.steps=10"
    )
    args = parser.parse_args(argv)
    show_library_log()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = run_recipe(recipe)
    except (RecipeError, FileNotFoundError, ValueError) as err:
        # Bad input (a recipe value a builder rejects, an unreadable file): one line, exit 2.
        # RADIOSHARP_DEBUG=1 shows the traceback.
        if os.environ.get("RADIOSHARP_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
