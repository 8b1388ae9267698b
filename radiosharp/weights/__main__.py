"""``python -m radiosharp.weights [NAME ...] [--force] [--check] [--requirements]``: convert the packaged real models.

Without names, every known model. Each is converted once into
``$RADIOSHARP_CACHE/weights`` (default ``~/.cache/radiosharp/weights``); a valid
conversion is left alone, a missing or corrupt one is rebuilt. ``--check`` converts
nothing and exits 1 when any file is missing or corrupt.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from radiosharp.weights import all_specs, check_converted, converted_path, ensure_converted
from radiosharp.weights.cache import ConvertedWeightsError


def main(argv: list[str] | None = None) -> int:
    specs = all_specs()
    parser = argparse.ArgumentParser(
        prog="python -m radiosharp.weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(specs)}")
    parser.add_argument("--force", action="store_true", help="convert again even when the file is valid")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any file is unusable")
    parser.add_argument(
        "--requirements",
        action="store_true",
        help="print the pinned packages that hold the models (what set-up installs) and exit",
    )
    args = parser.parse_args(argv)
    if args.requirements:
        print(" ".join(sorted({f"{spec.package}=={spec.version}" for spec in specs.values()})))
        return 0
    unknown = [n for n in args.names if n not in specs]
    if unknown:
        print(f"error: unknown weights {', '.join(unknown)}; valid names: {', '.join(specs)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    failed = False
    for name in args.names or list(specs):
        spec = specs[name]
        if args.check:
            problem = check_converted(spec)
            print(f"{name}: {'ok ' + str(converted_path(spec)) if problem is None else problem}")
            failed |= problem is not None
            continue
        start = time.perf_counter()
        try:
            path, converted = ensure_converted(spec, force=args.force)
        except ConvertedWeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        took = f" in {time.perf_counter() - start:.1f} s" if converted else ""
        print(f"{name}: {'converted' if converted else 'up to date'}{took}: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
