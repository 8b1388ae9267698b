"""The one rule for "is this string a run folder or a registry name".

A string names an exported run when it starts with ``run:`` (``run:featsharp`` is the
folder ``featsharp``) or contains a path separator (``runs/featsharp_2x``); anything
else is a registry name. The disk is never consulted, so a folder that happens to be
named like an upsampler cannot change what a recipe or a command line means.
"""

from __future__ import annotations

import os

RUN_PREFIX = "run:"


def run_folder_of(value: str) -> str | None:
    """The run folder ``value`` names, or ``None`` when it is a registry name."""
    if value.startswith(RUN_PREFIX):
        return value[len(RUN_PREFIX) :]
    if "/" in value or os.sep in value:
        return value
    return None


def run_hint(value: str) -> str:
    """What to write instead when ``value`` was meant as a run folder."""
    return f"an exported run folder is written {RUN_PREFIX}{value} (or with a path separator, ./{value})"
