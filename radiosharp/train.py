"""``python -m radiosharp.train RECIPE [dotted.key=value ...]`` (also under ``accelerate launch``).

Loads and validates the recipe, then runs the trainer for its ``kind``:
``featurize`` (teacher features + PCA images), ``upsampler`` (multi-view training of
a feature upsampler) or ``distill`` (the RADIO student).

Bad input is reported as ``error: <one line>`` on stderr with exit status 2 (no
traceback; ``RADIOSHARP_DEBUG=1`` shows it): a recipe or settings error, a data error
(:class:`~radiosharp.data.errors.DataError`: a folder that cannot be opened, a file
that cannot be used as configured, also when it is only read mid-run), a missing file,
and any ``ValueError`` raised while the run is set up (a value a builder or a data
source refuses). A plain ``ValueError`` raised inside the training loop is a bug, not
bad input: it keeps its traceback.

A run that cannot go on (:class:`~radiosharp.engine.errors.RunError`: a non-finite
loss or gradient, a run folder another process writes, no intact checkpoint to resume
from) is reported the same way, exit 2. SIGTERM or Ctrl-C stop the run after its
current step with a checkpoint; the message gives the command that continues it, and
the exit status is 143 (SIGTERM) or 130 (SIGINT), as for a process ended by that
signal. Ctrl-C outside the training steps (while teachers are built, say) exits 130
with one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path

from radiosharp.cli_logging import show_library_log
from radiosharp.data.errors import DataError, one_line
from radiosharp.engine.errors import RunError, RunStopped
from radiosharp.recipe import KINDS, Recipe, RecipeError, load_recipe
from radiosharp.registry import BadOptionError, UnknownNameError

# Bad input wherever it is raised (a bad mask is only seen when the loop reads it), and
# runs that cannot go on (RunError), also from inside the loop.
INPUT_ERRORS = (RecipeError, DataError, UnknownNameError, BadOptionError, FileNotFoundError, RunError)

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


def raised_in_training_loop(err: BaseException) -> bool:
    """Whether ``err`` was raised inside :meth:`radiosharp.engine.trainer.Trainer.loop` (the training steps)."""
    trainer = sys.modules.get("radiosharp.engine.trainer")
    if trainer is None:
        return False
    loop = trainer.Trainer.loop.__code__
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is loop:
            return True
        tb = tb.tb_next
    return False


def is_input_error(err: BaseException) -> bool:
    """Bad input to report as one line: see the module doc."""
    if isinstance(err, INPUT_ERRORS):
        return True
    return isinstance(err, ValueError) and not raised_in_training_loop(err)


def resume_command(recipe: str, overrides: list[str]) -> str:
    """The command that continues a stopped run: the same recipe and overrides, plus ``resume=true``."""
    kept = [o for o in overrides if o.split("=", 1)[0].strip() != "resume"]
    return shlex.join(["python", "-m", "radiosharp.train", recipe, *kept, "resume=true"])


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
    except RunStopped as err:
        print(f"{err}\nresume with: {resume_command(args.recipe, args.overrides)}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        if os.environ.get("RADIOSHARP_DEBUG"):
            raise
        print("error: interrupted outside the training steps (this launch wrote no checkpoint)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RunError) as err:
        # Bad input (see the module doc): one line, exit 2. RADIOSHARP_DEBUG=1 shows the traceback.
        if not is_input_error(err) or os.environ.get("RADIOSHARP_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
