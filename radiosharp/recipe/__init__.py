"""YAML recipes: one file is one run.

``load_recipe(path, overrides)`` reads the file, follows ``base:`` (relative to the
file that names it), applies ``dotted.key=value`` overrides (values parsed as YAML),
and validates the result into a typed :class:`Recipe`. Every problem is a
:class:`RecipeError` whose message names the dotted key and the valid choices.

Sections that configure a plug-in (a teacher, an upsampler, a student, a data
source, an eval task) hold the plug-in's ``name``/``family`` plus the keyword
arguments of its registered builder; keys the builder does not take are errors.

One module per step: :mod:`~radiosharp.recipe.schema` (the sections and their checks),
:mod:`~radiosharp.recipe.files` (unique-key YAML, ``base:`` chains),
:mod:`~radiosharp.recipe.overrides` (``dotted.key=value``) and
:mod:`~radiosharp.recipe.loading` (validation, one-line errors, ``load_recipe``); every
name is importable from ``radiosharp.recipe`` itself.
"""

from __future__ import annotations

from radiosharp.recipe.files import DuplicateKeyError, UniqueKeyLoader, deep_merge, read_recipe_dict, safe_load_unique
from radiosharp.recipe.loading import load_recipe, recipe_to_yaml, validate_recipe, validate_section
from radiosharp.recipe.overrides import apply_override
from radiosharp.recipe.schema import (
    KINDS,
    NON_NETWORK_OPTIONS,
    DataConfig,
    Kind,
    OptimConfig,
    PluginConfig,
    Recipe,
    RecipeError,
    StatsConfig,
    Strict,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    UpsamplerConfig,
    WandbConfig,
    resolved_teacher_options,
)

__all__ = [
    "DataConfig",
    "DuplicateKeyError",
    "KINDS",
    "Kind",
    "NON_NETWORK_OPTIONS",
    "OptimConfig",
    "PluginConfig",
    "Recipe",
    "RecipeError",
    "StatsConfig",
    "Strict",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "UniqueKeyLoader",
    "UpsamplerConfig",
    "WandbConfig",
    "apply_override",
    "deep_merge",
    "load_recipe",
    "read_recipe_dict",
    "recipe_to_yaml",
    "resolved_teacher_options",
    "safe_load_unique",
    "validate_recipe",
    "validate_section",
]
