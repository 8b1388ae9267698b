"""What both converters share: reading checkpoints, finding a module's keys, folding the
guidance whitening, and the converted file (safetensors + the build options in its header)."""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from radiosharp.contracts import IMAGENET_MEAN, IMAGENET_STD
from radiosharp.data.errors import first_line

META_KEY = "radiosharp.convert"  # the safetensors header entry holding the build options (JSON)
STATE_DICT_FIELDS = ("state_dict", "model_state", "model", "state")  # Lightning, NVlabs FeatSharp, others


class ConversionError(ValueError):
    """A checkpoint that cannot be read or does not fit a radiosharp upsampler; one line, naming why."""


@dataclass
class Converted:
    """A converted upsampler: registry config (``name`` + options), structural args and our state dict."""

    upsampler: dict[str, Any]
    factor: int
    dim: int
    patch_size: int
    state: dict[str, Tensor]
    source: str
    notes: list[str] = field(default_factory=list)

    def build(self) -> nn.Module:
        """The radiosharp module with these weights loaded strictly (eval mode)."""
        from radiosharp.builders import build_upsampler

        module = build_upsampler(
            dict(self.upsampler), "convert", factor=self.factor, dim=self.dim, patch_size=self.patch_size
        )
        try:
            module.load_state_dict(self.state, strict=True)
        except RuntimeError as err:  # a converter bug, not bad input: say what did not fit
            raise ConversionError(
                f"converted weights do not load into {self.upsampler['name']}: {first_line(err)}"
            ) from None
        return module.eval()


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Mapping[str, Any]:
    """A ``.safetensors`` file or a ``torch.save`` checkpoint (``weights_only`` unless ``trust_pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any failure to parse is bad input
            raise ConversionError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ConversionError(
            f"{path}: holds objects weights_only loading refuses ({first_line(err)}); "
            "if you trust the file, rerun with --trust-pickle"
        ) from None
    except Exception as err:  # noqa: BLE001
        raise ConversionError(f"{path}: not a PyTorch or safetensors checkpoint ({first_line(err)})") from None
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{path}: expected a state dict or a checkpoint mapping, got {type(ckpt).__name__}")
    return ckpt


def tensors_of(ckpt: Mapping[str, Any], marker: re.Pattern[str], what: str) -> dict[str, Tensor]:
    """The state dict inside ``ckpt`` (itself or one of :data:`STATE_DICT_FIELDS`) holding a key ``marker`` matches."""
    for candidate in (ckpt, *(ckpt.get(f) for f in STATE_DICT_FIELDS)):
        if isinstance(candidate, Mapping) and any(isinstance(k, str) and marker.search(k) for k in candidate):
            return {k: v for k, v in candidate.items() if isinstance(v, Tensor)}
    raise ConversionError(f"no {what} in the checkpoint (no key like '{marker.pattern}')")


def find_prefix(state: Mapping[str, Tensor], marker: re.Pattern[str], what: str) -> str:
    """The one prefix before ``marker`` (a regex anchored at the end of a key) in ``state``."""
    prefixes = sorted({k[: m.start()] for k in state if (m := marker.search(k))}, key=len)
    if not prefixes:
        raise ConversionError(f"no {what} in the checkpoint (no key like '{marker.pattern}')")
    if len(prefixes) > 1:
        raise ConversionError(f"several {what}s in the checkpoint, at {', '.join(repr(p) for p in prefixes)}")
    return prefixes[0]


def reject_parametrizations(state: Mapping[str, Tensor], prefix: str) -> None:
    bad = [k for k in state if k.startswith(prefix) and ("parametrizations." in k or "_sn_version" in k)]
    if bad:
        raise ConversionError(f"spectral-reparametrized weights ({bad[0]}) are not supported; save plain weights first")


class KeyReader:
    """Pops the tensors of one module (keys under ``prefix``); :meth:`finish` fails on any left unread."""

    def __init__(self, state: Mapping[str, Tensor], prefix: str, what: str) -> None:
        self.what, self.prefix = what, prefix
        self.left = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def has(self, key: str) -> bool:
        return key in self.left

    def pop(self, key: str, shape: Sequence[int] | None = None) -> Tensor:
        if key not in self.left:
            raise ConversionError(f"{self.what}: missing key '{self.prefix}{key}'")
        value = self.left.pop(key)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ConversionError(
                f"{self.what}: '{self.prefix}{key}' has shape {tuple(value.shape)}, expected {tuple(shape)}"
            )
        return value

    def finish(self) -> None:
        if self.left:
            names = sorted(self.left)
            more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
            raise ConversionError(
                f"{self.what}: unexpected keys {', '.join(self.prefix + n for n in names[:3])}{more}; "
                "this layout is not one radiosharp converts"
            )


def module_keys(
    ckpt: Mapping[str, Any], marker: re.Pattern[str], what: str
) -> tuple[dict[str, Tensor], str, KeyReader]:
    """``(state, prefix, keys)`` of the one module in ``ckpt`` with a key ``marker`` matches:
    its state dict (:func:`tensors_of`), the module's prefix (:func:`find_prefix`, plain weights
    only) and a :class:`KeyReader` of the keys under it."""
    state = tensors_of(ckpt, marker, what)
    prefix = find_prefix(state, marker, what)
    reject_parametrizations(state, prefix)
    return state, prefix, KeyReader(state, prefix, what)


def unconverted_note(state: Mapping[str, Tensor], prefix: str) -> list[str]:
    """The note naming the top-level modules of ``state`` outside ``prefix`` (none: no note)."""
    others = sorted({k.split(".")[0] for k in state if not k.startswith(prefix)})
    return [f"not converted (not part of the upsampler): {', '.join(p + '.*' for p in others)}"] if others else []


def scalar(value: Tensor) -> Tensor:
    """A reference 0-dim (or [1]) scalar as radiosharp's shape-[1] parameter."""
    if value.numel() != 1:
        raise ConversionError(f"expected a scalar parameter, got shape {tuple(value.shape)}")
    return value.detach().reshape(1).clone()


def fold_guidance(
    weight: Tensor, bias: Tensor, mean: Sequence[float], std: Sequence[float], first: int = 0
) -> tuple[Tensor, Tensor]:
    """A 1x1 conv on guidance whitened with ``mean``/``std`` rewritten for ImageNet-whitened guidance.

    radiosharp's guidance is ``g = (x - m0) / s0`` (ImageNet); the reference's is
    ``g' = (x - m1) / s1 = a g + c`` with ``a = s0 / s1``, ``c = (m0 - m1) / s1``, so
    ``W' g' + b' = (W' a) g + (b' + W' c)``. The guidance is input channels
    ``first .. first+3`` of the conv. Exact (pooling commutes with a per-channel affine map).
    """
    m0, s0 = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    m1, s1 = torch.tensor(list(mean), dtype=torch.float64), torch.tensor(list(std), dtype=torch.float64)
    if torch.equal(m0, m1) and torch.equal(s0, s1):
        return weight, bias
    a, c = s0 / s1, (m0 - m1) / s1
    w = weight.detach().to(torch.float64).clone()
    cols = w[:, first : first + 3, 0, 0]
    new_bias = bias.detach().to(torch.float64) + cols @ c
    w[:, first : first + 3, 0, 0] = cols * a
    return w.to(weight.dtype), new_bias.to(bias.dtype)


def is_default_guidance(mean: Sequence[float], std: Sequence[float]) -> bool:
    return tuple(map(float, mean)) == IMAGENET_MEAN and tuple(map(float, std)) == IMAGENET_STD


def save_converted(path: str | os.PathLike, converted: Converted) -> Path:
    """Build + strictly load (so only a valid conversion is written), then write atomically."""
    from radiosharp._version import __version__
    from radiosharp.export import save_state_dict

    module = converted.build()
    config = dict(getattr(module, "build_config", None) or converted.upsampler)
    meta = {
        "upsampler": config,
        "factor": converted.factor,
        "dim": converted.dim,
        "patch_size": converted.patch_size,
        "source": converted.source,
        "radiosharp": __version__,
    }
    path = Path(path)
    save_state_dict(path, module.state_dict(), metadata={META_KEY: json.dumps(meta)})
    return path


def read_converted(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(meta, state)`` of a converted file; ``meta`` has ``upsampler`` (name + options), factor, dim, patch_size."""
    from safetensors import safe_open

    from radiosharp.export import load_state_dict

    path = Path(path)
    state = load_state_dict(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if META_KEY not in header:
        raise ConversionError(f"{path}: not a radiosharp.convert output (no '{META_KEY}' header entry)")
    return json.loads(header[META_KEY]), state


def load_converted(path: str | os.PathLike) -> nn.Module:
    """Rebuild a converted file: ``build_upsampler(meta["upsampler"], factor=, dim=, patch_size=)`` + strict load."""
    from radiosharp.builders import build_upsampler

    meta, state = read_converted(path)
    module = build_upsampler(
        dict(meta["upsampler"]), "convert", factor=meta["factor"], dim=meta["dim"], patch_size=meta["patch_size"]
    )
    module.load_state_dict(state, strict=True)
    return module.eval()
