"""The ``radiosharp`` console script: ``radiosharp COMMAND ...`` runs ``python -m radiosharp.COMMAND ...``.

Each command is the ``main(argv)`` of its module, so both forms take the same arguments
and return the same exit codes.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("radiosharp.train", "train one recipe (upsampler, distillation, featurize)"),
    "stats": ("radiosharp.stats.cli", "PHI-S statistics of a recipe's teachers"),
    "eval": ("radiosharp.eval.cli", "probe tasks on frozen features and the MTL gain"),
    "viz": ("radiosharp.viz.cli", "PCA pictures of teacher and upsampled features"),
    "bench": ("radiosharp.bench.cli", "speed and memory, measured side by side"),
    "reproduce": ("radiosharp.reproduce.__main__", "train and measure what docs/results.md reports"),
    "weights": ("radiosharp.weights.__main__", "convert the packaged real teachers' weights"),
    "convert": ("radiosharp.convert.__main__", "import FeatUp / NVlabs FeatSharp upsampler checkpoints"),
    "demo": ("radiosharp.demo", "the whole loop at CPU scale"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: radiosharp COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "radiosharp COMMAND --help shows a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        from radiosharp._version import __version__

        print(f"radiosharp {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
