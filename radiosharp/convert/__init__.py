"""Checkpoints of the reference implementations as radiosharp upsamplers.

``python -m radiosharp.convert KIND CKPT --out DIR_OR_FILE`` (see ``__main__``), or from
Python::

    from radiosharp.convert import convert_featup_jbu, load_checkpoint, load_converted, save_converted

    converted = convert_featup_jbu(load_checkpoint("dinov2_jbu_stack_cocostuff.ckpt"))
    save_converted("featup_dinov2.safetensors", converted)
    upsampler = load_converted("featup_dinov2.safetensors")  # build_upsampler(...) + strict load_state_dict

Kinds: ``featup-jbu`` (FeatUp's released JBU stack -> ``featup`` with
``pre_upsample=bicubic, fixup=true, border=reflect``; :mod:`radiosharp.convert.featup`)
and ``featsharp`` (NVlabs FeatSharp -> ``featsharp`` with a reflect-bordered,
ascending-order ``featup`` base; :mod:`radiosharp.convert.featsharp`). A converted file
is a safetensors state dict whose header entry ``radiosharp.convert`` (JSON) holds the
registry config (``upsampler``: name + every build option), ``factor``, ``dim`` and
``patch_size``. Anything a converter cannot represent is a :class:`ConversionError`
naming it.
"""

from radiosharp.convert._common import (
    ConversionError,
    Converted,
    load_checkpoint,
    load_converted,
    read_converted,
    save_converted,
)
from radiosharp.convert.featsharp import convert_featsharp
from radiosharp.convert.featup import convert_featup_jbu

KINDS = {"featup-jbu": convert_featup_jbu, "featsharp": convert_featsharp}

__all__ = [
    "KINDS",
    "ConversionError",
    "Converted",
    "convert_featsharp",
    "convert_featup_jbu",
    "load_checkpoint",
    "load_converted",
    "read_converted",
    "save_converted",
]
