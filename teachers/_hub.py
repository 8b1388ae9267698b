"""Weights that are not a local file: the Hugging Face hub cache, downloads, and the error
that says how to provide them (:func:`missing_weights`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from teachers._weights import MissingWeightsError


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE``), read now rather than at import."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_cache(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def missing_weights(
    family: str, what: str, repo_id: str | None, cache_dir: str | None, why: str = ""
) -> MissingWeightsError:
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


def url_weights_file(
    family: str, what: str, url: str, folder: Path, download: Callable[[str, str], Any] = torch.hub.download_url_to_file
) -> str:
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
