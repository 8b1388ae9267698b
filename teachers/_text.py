"""Text towers of the CLIP-like teachers (``text: true``), for zero-shot classification.

A :class:`TextTower` pairs a frozen text encoder with its tokenizer::

    tokens = tower.tokenize(["a photo of a dog.", ...])   # LongTensor [K, L]
    text = tower.encode_text(tokens)                        # [K, output_dim]

``output_dim`` is the teacher's ``summary_dim`` and the text embedding lives in the
same space as the teacher's summary (CLIP: both projected; SigLIP: the text head and
the image attention pool), so ``cos(summary, text)`` is the model's image-text
score. Neither side is L2-normalised here, as with open_clip's
``encode_text(normalize=False)``: the zero-shot task normalises.

Weights come from the same file / pretrained tag as the vision tower. Inside a
whole-model file the text tower is found by key layout:

- open_clip CLIP (DFN): top-level ``token_embedding``, ``positional_embedding``,
  ``transformer``, ``ln_final``, ``text_projection`` (next to ``visual.*``);
- open_clip CustomTextCLIP (SigLIP): ``text.*``;
- transformers ``SiglipModel``: ``text_model.*``;
- a ``teacher.state_dict()``: ``text_tower.encoder.*``.

The libraries' towers and tokenizers are in ``teachers/_open_clip.py`` and
``teachers/_transformers.py``; :func:`text_tower_builder` gives a family's builder
the ``build_text_tower`` that builds the text tower alone.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from radiosharp.contracts import FrozenModule
from teachers._weights import load_state_strict

TEXT_PREFIXES = ("text.", "text_model.", "text_tower.encoder.")  # CustomTextCLIP, SiglipModel, teacher.state_dict()
TINY_CONTEXT = 16  # tokens per prompt for tiny towers (real models: 77 CLIP, 64 SigLIP)
# Tiny text dims: width 32, 2 heads of 16, 2 blocks; the output width is the teacher's summary_dim.
TINY_TEXT = dict(width=32, heads=2, layers=2)

Tokenizer = Callable[[list[str]], torch.Tensor]


class TextTower(FrozenModule):
    """A frozen text encoder plus its tokenizer (see the module docstring).

    ``encode_text`` runs without autograd and moves the tokens to the encoder's device,
    so a tower left on the CPU (a student's, see ``students/radio.py``) still answers
    tokens made anywhere.
    """

    def __init__(self, encoder: nn.Module, tokenizer: Tokenizer, output_dim: int, name: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.output_dim = int(output_dim)
        self.name = name
        self.freeze()

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``[K, L]`` (long) of ``K`` prompts, padded/truncated to the tower's length."""
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{self.name}: tokenize takes a list of strings, got {type(texts).__name__}")
        return torch.as_tensor(self.tokenizer(list(texts))).long()

    def run_encoder(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder's pooled, projected output (open_clip ``TextTransformer``)."""
        return self.encoder(tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[K, output_dim]`` text embeddings (not normalised) of token ids ``[K, L]``."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(
                f"{self.name}: encode_text takes integer token ids [K, L] (from tokenize(list of str)), got {shape}"
            )
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            return self.run_encoder(tokens.to(device).long())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text(tokens)

    def extra_repr(self) -> str:
        return f"name={self.name}, output_dim={self.output_dim}"


def first_line(err: Exception, limit: int = 200) -> str:
    """Libraries' tokenizer errors can list hundreds of classes; keep the gist."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[:limit] + " ..."


# ----------------------------------------------------------------------------- weights


def _top_level(name: str) -> str:
    return name.split(".", 1)[0]


def select_module_state(
    state: dict[str, torch.Tensor], module: nn.Module, prefixes: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """The part of a whole-model ``state`` that belongs to ``module`` (one tower of several).

    Under each candidate prefix (and none) only keys whose first component is one of the
    module's own top-level names count, so other towers (``visual.*``, ``text_model.*``),
    ``logit_scale`` ... are left out; the prefix with the most matching keys wins. Inside
    the tower every key must then match (``load_state_strict``).
    """
    own = set(module.state_dict())
    tops = {_top_level(k) for k in own}
    best: dict[str, torch.Tensor] = {}
    best_hits = -1
    for prefix in ("", *prefixes):
        chosen = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and _top_level(k[len(prefix) :]) in tops
        }
        hits = len(own & set(chosen))
        if hits > best_hits:
            best, best_hits = chosen, hits
    return best


def load_text_state(encoder: nn.Module, state: dict[str, torch.Tensor], family: str, source: str) -> None:
    """Strictly load the text tower's part of ``state`` into ``encoder`` (errors name the keys)."""
    load_state_strict(encoder, select_module_state(state, encoder, TEXT_PREFIXES), family, f"{source} (text tower)")


# ----------------------------------------------------------------------------- builders


def text_tower_builder(
    teacher_builder: Callable[..., Any],
) -> Callable[[Callable[..., TextTower]], Callable[..., TextTower]]:
    """Make the decorated function ``teacher_builder.build_text_tower``.

    That is only the text tower of ``teacher_builder(**same options, text=True)`` (no
    vision tower built), what ``load_student(run, text_towers=True)`` uses to give a
    student its teacher's text tower. It takes the teacher builder's options, with the
    same defaults (its signature is the builder's), and hands every one of them, by
    name, to the decorated function.
    """
    signature = inspect.signature(teacher_builder)

    def decorate(build: Callable[..., TextTower]) -> Callable[..., TextTower]:
        @functools.wraps(build)
        def build_text_tower(*args: Any, **kwargs: Any) -> TextTower:
            options = signature.bind(*args, **kwargs)
            options.apply_defaults()
            return build(**options.arguments)

        build_text_tower.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation=inspect.signature(build).return_annotation
        )
        teacher_builder.build_text_tower = build_text_tower  # type: ignore[attr-defined]
        return build_text_tower

    return decorate
