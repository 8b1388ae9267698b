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

``size: tiny`` towers use open_clip's ``SimpleTokenizer``, whose BPE vocabulary ships
inside the open_clip package, so they work offline.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from radiosharp.contracts import FrozenModule, seeded
from teachers._common import hub_offline, load_state_strict, missing_weights

TEXT_PREFIXES = ("text.", "text_model.", "text_tower.encoder.")  # CustomTextCLIP, SiglipModel, teacher.state_dict()
TINY_CONTEXT = 16  # tokens per prompt for tiny towers (real models: 77 CLIP, 64 SigLIP)
# Tiny text dims: width 32, 2 heads of 16, 2 blocks; the output width is the teacher's summary_dim.
TINY_TEXT = dict(width=32, heads=2, layers=2)
TOKENIZER_FIELDS = ("hf_tokenizer_name", "tokenizer_kwargs", "tokenizer_mode")

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
            raise ValueError(f"{self.name}: encode_text takes integer token ids [K, L] "
                             f"(from tokenize(list of str)), got {shape}")
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            return self.run_encoder(tokens.to(device).long())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode_text(tokens)

    def extra_repr(self) -> str:
        return f"name={self.name}, output_dim={self.output_dim}"


class HFTextTower(TextTower):
    """A transformers ``SiglipTextModel``: the pooled output is the text head's projection."""

    def run_encoder(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=tokens).pooler_output


# ----------------------------------------------------------------------------- tokenizers


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(bpe_path: str, context_length: int) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(bpe_path=bpe_path, context_length=context_length)


def simple_tokenizer_path(family: str) -> str:
    """The CLIP BPE vocabulary inside the open_clip package; a clear error when it is missing."""
    from open_clip import tokenizer as oc_tokenizer

    path = Path(oc_tokenizer.default_bpe())
    if not path.is_file():
        raise FileNotFoundError(
            f"{family}: the text tokenizer's BPE vocabulary {path} is missing from the open_clip package; "
            f"reinstall it (`pip install --force-reinstall open_clip_torch`)"
        )
    return str(path)


def simple_tokenizer(family: str, context_length: int = TINY_CONTEXT) -> Tokenizer:
    """open_clip's CLIP BPE tokenizer from the vocabulary file inside the package (offline)."""
    return _simple_tokenizer(simple_tokenizer_path(family), context_length)


def _first_line(err: Exception, limit: int = 200) -> str:
    """Libraries' tokenizer errors can list hundreds of classes; keep the gist."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[:limit] + " ..."


def open_clip_tokenizer(family: str, model: str, text_cfg: dict[str, Any], cache_dir: str | None) -> Tokenizer:
    """The tokenizer ``open_clip.get_tokenizer(model)`` would give, from the config already read.

    Same choice as open_clip: the config's ``hf_tokenizer_name`` (a transformers tokenizer,
    from the cache first; none cached is a MissingWeightsError naming it), open_clip's own
    SigLIP vocabularies for built-in SigLIP names without one, else CLIP's BPE (shipped in
    the package) at the config's context length. Built from our config rather than by
    ``get_tokenizer`` itself, because that one re-fetches the config and ignores
    ``HF_HUB_OFFLINE`` set after import.
    """
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    repo = text_cfg.get("hf_tokenizer_name")
    if repo:
        try:
            return HFTokenizer(repo, context_length=context_length, cache_dir=cache_dir,
                               tokenizer_mode=text_cfg.get("tokenizer_mode"), local_files_only=hub_offline(), **kwargs)
        except (OSError, ValueError) as err:
            raise missing_weights(family, f"the text tokenizer of '{model}' ({repo})", repo, cache_dir,
                                  _first_line(err)) from err
    if not model.startswith("hf-hub:") and "siglip" in model.lower():
        try:
            return open_clip.get_tokenizer(model, context_length=context_length)
        except (OSError, ValueError) as err:  # its SentencePiece vocabulary is downloaded on first use
            raise missing_weights(family, f"the SigLIP text tokenizer of '{model}'", None, cache_dir,
                                  _first_line(err)) from err
    return SimpleTokenizer(bpe_path=simple_tokenizer_path(family), context_length=context_length, **kwargs)


class PaddedHFTokenizer:
    """A transformers tokenizer padded to the fixed length SigLIP was trained with.

    SigLIP pools the LAST position and never masks padding, so prompts must be padded
    to ``max_length`` exactly as in training; texts are lowercased as SigLIP's
    training text was (open_clip's ``canonicalize`` and SigLIP 2's tokenizer do too).
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer([t.lower() for t in texts], padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")
        return batch["input_ids"]


def hf_tokenizer(family: str, model_id: str, max_length: int, cache_dir: str | None) -> Tokenizer:
    """The transformers tokenizer of ``model_id`` (cache first), padded to ``max_length``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, cache_dir=cache_dir, local_files_only=hub_offline())
    except (OSError, ValueError) as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(family, f"the text tokenizer of '{model_id}'", repo, cache_dir, _first_line(err)) from err
    return PaddedHFTokenizer(tokenizer, max_length)


# ----------------------------------------------------------------------------- weights


def _top_level(name: str) -> str:
    return name.split(".", 1)[0]


def select_module_state(state: dict[str, torch.Tensor], module: nn.Module, prefixes: Sequence[str] = ()
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
        chosen = {k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and _top_level(k[len(prefix):]) in tops}
        hits = len(own & set(chosen))
        if hits > best_hits:
            best, best_hits = chosen, hits
    return best


def load_text_state(encoder: nn.Module, state: dict[str, torch.Tensor], family: str, source: str) -> None:
    """Strictly load the text tower's part of ``state`` into ``encoder`` (errors name the keys)."""
    load_state_strict(encoder, select_module_state(state, encoder, TEXT_PREFIXES), family, f"{source} (text tower)")


# ----------------------------------------------------------------------------- open_clip towers


def open_clip_text_encoder(family: str, model: str, config: dict[str, Any], quick_gelu: bool,
                           output_dim: int, tiny: bool) -> nn.Module:
    """open_clip's ``TextTransformer`` for ``config`` (tiny: the same flags at tiny dims).

    Build it under ``seeded(seed)`` for reproducible tiny weights.
    """
    from open_clip.model import _build_text_tower

    text_cfg = dict(config.get("text_cfg") or {})
    if not text_cfg:
        raise ValueError(f"{family}: open_clip model '{model}' has no text tower config (text_cfg)")
    if text_cfg.get("hf_model_name"):
        raise ValueError(f"{family}: '{model}' has a Hugging Face text encoder ({text_cfg['hf_model_name']}); "
                         "only open_clip TextTransformer towers are supported with `text: true`")
    for key in TOKENIZER_FIELDS:  # the tokenizer's business, not the tower's
        text_cfg.pop(key, None)
    if tiny:  # tiny towers read open_clip's own BPE tokens (pad 0, end-of-text = the highest id)
        text_cfg.update(TINY_TEXT, context_length=TINY_CONTEXT, vocab_size=simple_tokenizer(family).vocab_size)
        text_cfg.pop("pad_id", None)
        text_cfg.pop("eos_id", None)
    return _build_text_tower(output_dim, text_cfg, quick_gelu=quick_gelu)


def open_clip_text_tokenizer(family: str, model: str, config: dict[str, Any], size: str,
                             cache_dir: str | None) -> Tokenizer:
    """The tokenizer of an open_clip text tower: offline BPE for tiny, ``get_tokenizer(model)`` for real.

    Builders ask for it before building any tower, so a missing tokenizer fails fast.
    """
    if size == "tiny":
        return simple_tokenizer(family)
    return open_clip_tokenizer(family, model, config.get("text_cfg") or {}, cache_dir)


def open_clip_text_tower(family: str, model: str, config: dict[str, Any], quick_gelu: bool, output_dim: int,
                         size: str, seed: int, state: dict[str, torch.Tensor] | None, source: str,
                         tokenizer: Tokenizer) -> TextTower:
    """The text tower of an open_clip teacher.

    ``state``: the whole-model weights (already read for the vision tower), or None for
    seeded random tiny weights.
    """
    if size == "tiny":
        with seeded(seed):
            encoder = open_clip_text_encoder(family, model, config, quick_gelu, output_dim, tiny=True)
    else:
        encoder = open_clip_text_encoder(family, model, config, quick_gelu, output_dim, tiny=False)
    if state is not None:
        load_text_state(encoder, state, family, source)
    return TextTower(encoder, tokenizer, output_dim, family)
