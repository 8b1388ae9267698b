"""``python -m radiosharp.convert KIND CKPT --out DIR_OR_FILE``: a reference checkpoint as a radiosharp upsampler.

KIND ``featup-jbu``: FeatUp's released JBU stack (mhamilton723/FeatUp); ``featsharp``: an
NVlabs FeatSharp training checkpoint (its ``featsharp`` or ``jbu_stack`` upsampler). The
output is one safetensors file (``DIR/upsampler.safetensors`` when ``--out`` is a
folder) holding our state dict and, in its header, the build options;
``radiosharp.convert.load_converted(path)`` rebuilds the module. Bad input (a missing
file, an unknown kind, a layout that does not fit) is a one-line error with exit code
2, before anything is written; the file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.convert import KINDS, ConversionError, Converted, load_checkpoint, save_converted
from radiosharp.data.errors import first_line

OUT_FILE = "upsampler.safetensors"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2 (argparse prints the usage too)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def out_path(out: str) -> Path:
    """``--out``: a ``.safetensors`` file, else a folder that gets ``upsampler.safetensors``."""
    path = Path(out)
    return path if path.suffix == ".safetensors" and not path.is_dir() else path / OUT_FILE


def convert(args: argparse.Namespace) -> Converted:
    ckpt = load_checkpoint(args.ckpt, trust_pickle=args.trust_pickle)
    common = dict(
        patch_size=args.patch_size, guidance_mean=args.guidance_mean, guidance_std=args.guidance_std, source=args.ckpt
    )
    if args.kind == "featup-jbu":
        if args.type is not None or args.factor is not None or args.dim is not None:
            raise ConversionError(
                "--type/--factor/--dim apply to kind featsharp only (featup-jbu reads them from the weights)"
            )
        return KINDS["featup-jbu"](ckpt, **common)
    return KINDS["featsharp"](ckpt, ups_type=args.type, factor=args.factor, dim=args.dim, **common)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m radiosharp.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=list(KINDS), help="the reference implementation the checkpoint comes from")
    parser.add_argument("ckpt", help="the checkpoint (torch.save file or .safetensors)")
    parser.add_argument("--out", required=True, help="output .safetensors file, or a folder")
    parser.add_argument(
        "--patch-size", type=int, default=None, help="the teacher's patch size (default: from the checkpoint, else 14)"
    )
    parser.add_argument(
        "--type", default=None, help="featsharp: NVlabs upsampler type (default: the checkpoint's upsample_args)"
    )
    parser.add_argument(
        "--factor", type=int, default=None, help="featsharp: upsampling factor (default: from the checkpoint)"
    )
    parser.add_argument(
        "--dim", type=int, default=None, help="featsharp jbu_stack: the feature width (not in its weights)"
    )
    parser.add_argument(
        "--guidance-mean", type=float, nargs=3, default=list(IMAGENET_MEAN), metavar=("R", "G", "B"),
        help="the reference's guidance whitening (default ImageNet, radiosharp's own; else folded into the weights)",
    )  # fmt: skip
    parser.add_argument("--guidance-std", type=float, nargs=3, default=list(IMAGENET_STD), metavar=("R", "G", "B"))
    parser.add_argument(
        "--trust-pickle", action="store_true", help="load the checkpoint with full unpickling (only for trusted files)"
    )
    args = parser.parse_args(argv)
    try:
        converted = convert(args)
        path = out_path(args.out)
        if path.exists() and not path.is_file():
            raise ConversionError(f"--out: {path} exists and is not a file")
        save_converted(path, converted)
    except (ConversionError, ValueError, OSError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    options = {k: v for k, v in converted.upsampler.items() if k != "name"}
    print(f"converted {converted.source}")
    print(
        f"  -> {converted.upsampler['name']} x{converted.factor}, dim {converted.dim}, "
        f"patch {converted.patch_size}: {json.dumps(options)}"
    )
    for note in converted.notes:
        print(f"  note: {note}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
