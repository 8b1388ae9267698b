"""Eval settings: the ``eval:`` section of a run's ``recipe.yaml``, or the default suite.

Keys (all optional)::

    eval:
      tasks:                    # task name -> builder options (a list of names = default options)
        knn: {k: 20}
        semseg: {steps: 300, seeds: 3}
        depth: {}
      suite: nyud               # without tasks: a declared task suite (SUITES below; default: "default")
      image_size: 224           # input side; default: the featurizer's native_size, else the data
                                # size, rounded to a multiple of its patch size
      batch_size: 16            # feature extraction batch
      summary: auto             # student global vector: auto/backbone (mean-pooled) or a teacher name
      dense: auto               # student dense map: auto/backbone or a teacher's adaptor features
      data: {source: synthetic, ...}      # default train data of every task
      val_data: {source: synthetic, ...}  # default val data (null: seeded split of data)

Without ``tasks`` a declared suite runs (``suite``, default ``default``): knn, semseg and
depth on the synthetic benchmark (train seed 0 / val seed 1, small counts), plus fidelity
for upsampler runs. The suites (:data:`SUITES`):

- ``default``: knn, semseg, depth (+ fidelity for upsampler runs);
- ``nyud``: semseg, depth, normals, the NYUD-v2 multi-task set of Maninis et al. 2019 and
  the FeatSharp paper's MTL table without its edge task (radiosharp has no edge probe);
- ``dense``: semseg, depth, normals, keypoints (the upsampler papers' dense probes);
- ``radio``: knn, zeroshot, semseg, depth (the summary and dense probes of RADIO's tables).

Every key is checked before a model loads, and an unknown one is named by its full
dotted path: settings keys (``eval.nonsense``) when the section is read, task names and
options (``eval.tasks.knn.kk``), option values a task builder refuses, and every data
config's source and options (``eval.data.colour``, ``eval.tasks.knn.val_data.colour``)
by :func:`select_tasks`. Errors are :class:`EvalError` (the CLI's one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from radiosharp.recipe import RecipeError, validate_section
from radiosharp.registry import TASKS, BadOptionError, UnknownNameError

DEFAULT_DATA = {"source": "synthetic", "num_images": 64, "size": 112, "seed": 0}
DEFAULT_VAL_DATA = {"source": "synthetic", "num_images": 32, "size": 112, "seed": 1}
DEFAULT_TASKS = ("knn", "semseg", "depth")
UPSAMPLER_TASKS = ("fidelity",)
SUITES: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TASKS,
    "nyud": ("semseg", "depth", "normals"),
    "dense": ("semseg", "depth", "normals", "keypoints"),
    "radio": ("knn", "zeroshot", "semseg", "depth"),
}


def suite_tasks(suite: str, run_kind: str = "student") -> tuple[str, ...]:
    """The task names of a declared suite (``default`` adds fidelity for upsampler runs);
    EvalError naming the valid suites for an unknown one."""
    if suite not in SUITES:
        raise EvalError(f"eval suite '{suite}' is not valid; valid: {', '.join(SUITES)}")
    extra = UPSAMPLER_TASKS if suite == "default" and run_kind == "upsampler" else ()
    return SUITES[suite] + extra


class EvalError(ValueError):
    """A problem with a run or its eval settings; the message names it (CLI exit 2)."""


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, dict[str, Any]] | None = None
    suite: str = "default"
    image_size: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    summary: str = "auto"
    dense: str = "auto"
    data: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_DATA))
    val_data: dict[str, Any] | None = Field(default_factory=lambda: dict(DEFAULT_VAL_DATA))

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, value: str) -> str:
        if value not in SUITES:
            raise ValueError(f"'{value}' is not a suite; valid: {', '.join(SUITES)}")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _names_to_dict(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {name: {} for name in value}
        if isinstance(value, dict):
            return {name: dict(opts or {}) for name, opts in value.items()}
        return value

    def task_options(self, run_kind: str, suite: str | None = None) -> dict[str, dict[str, Any]]:
        """Task name -> options: ``suite``'s tasks when given (options from ``tasks`` where it
        configures them), else the configured tasks, else the settings' suite for ``run_kind``."""
        configured = {k: dict(v) for k, v in (self.tasks or {}).items()}
        if suite is None and self.tasks is not None:
            return configured
        return {name: configured.get(name, {}) for name in suite_tasks(suite or self.suite, run_kind)}

    def context(self) -> dict[str, Any]:
        """The settings every task result depends on (a change invalidates cached results), and the
        radiosharp version that computed them (a new version recomputes: its probes may differ)."""
        from radiosharp._version import __version__

        return {**self.model_dump(mode="json", exclude={"tasks", "suite"}), "radiosharp": __version__}


def resolved_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A task's options with its builder's defaults filled in, as JSON (what a cached result is keyed by:
    a changed default recomputes the result, as a changed option does)."""
    import json

    params = TASKS.options(name)
    full = {key: p.default for key, p in params.items() if p.default is not p.empty and p.kind is not p.VAR_KEYWORD}
    full.update(options)
    return json.loads(json.dumps(full, default=str))


def read_run_settings(run_dir: str | Path) -> EvalSettings:
    """The ``eval:`` section of ``run_dir/recipe.yaml`` (defaults when absent)."""
    path = Path(run_dir) / "recipe.yaml"
    section: Any = {}
    if path.is_file():
        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise EvalError(f"{path}: not valid YAML: {err}") from None
        section = (recipe.get("eval") if isinstance(recipe, dict) else None) or {}
    return parse_settings(section, where=str(path))


def parse_settings(section: Any, where: str = "eval") -> EvalSettings:
    if not isinstance(section, dict):
        raise EvalError(f"{where}: 'eval' must be a mapping, got {type(section).__name__}")
    try:
        return validate_section("eval", EvalSettings, section)
    except RecipeError as err:
        raise EvalError(f"{where}: {err}") from None


def select_tasks(
    options: dict[str, dict[str, Any]], only: list[str] | None, settings: EvalSettings | None = None
) -> dict[str, dict[str, Any]]:
    """Restrict to ``only`` (names outside the configured set run with default options),
    and check every name, option and option value against the task registry; with
    ``settings``, also every data config the tasks will open (:func:`check_data_configs`)."""
    if only:
        options = {name: options.get(name, {}) for name in only}
    for name, opts in options.items():
        where = f"eval.tasks.{name}"
        try:
            TASKS.get(name, "eval.tasks")
            TASKS.check_options(name, opts, where)
        except (UnknownNameError, BadOptionError) as err:
            raise EvalError(str(err)) from None
        try:
            TASKS.build(name, where, **opts)  # builders only store their options: values fail here, not mid-run
        except (ValueError, TypeError) as err:
            raise EvalError(f"{where}: {err}") from None
    if settings is not None:
        check_data_configs(settings, options)
    return options


def check_data_configs(settings: EvalSettings, tasks: dict[str, dict[str, Any]]) -> None:
    """Check the source name and option keys of every data config: ``eval.data``, ``eval.val_data``
    and each task's ``data`` / ``val_data``; EvalError with the key's dotted path."""
    from radiosharp.registry import DATASETS

    configs: list[tuple[str, Any]] = [("eval.data", settings.data), ("eval.val_data", settings.val_data)]
    for name, opts in tasks.items():
        configs += [
            (f"eval.tasks.{name}.{key}", opts[key]) for key in ("data", "val_data") if opts.get(key) is not None
        ]
    for where, cfg in configs:
        if cfg is None:
            continue
        if isinstance(cfg, str):  # a bare source name, as build_dataset takes it
            cfg = {"source": cfg}
        if not isinstance(cfg, dict) or "source" not in cfg:
            raise EvalError(
                f"{where}: expected a mapping with a 'source' (e.g. {{source: image_folder, root: ...}}), got {cfg!r}"
            )
        try:
            DATASETS.get(cfg["source"], f"{where}.source")
            DATASETS.check_options(cfg["source"], [k for k in cfg if k != "source"], where)
        except (UnknownNameError, BadOptionError) as err:
            raise EvalError(str(err)) from None
