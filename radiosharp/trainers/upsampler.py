"""``kind: upsampler``: train a feature upsampler with one of the objectives.

The recipe names one teacher whose ``upsampler`` section says what to train
(``{name: featsharp, factor: 2, ...}``); ``upsampler_training`` holds the objective
(``multiview`` by default: FeatUp's consistency; ``low_to_high``, ``crop_hires``,
``hires_teacher``: see :mod:`radiosharp.objectives.config`), the views and the
downsampler. Features are compared in the teacher's PHI-S space: the statistics
file named by ``teachers.<key>.phi_s``, or, when none is given, statistics computed
at the start of the run over ``stats.num_images`` images and kept in the run folder.

Every ``train.log_every`` steps the loss and the batch's fidelity, TV, CRF and MMD
are logged (``metrics.jsonl``, progress bar). The run exports the upsampled teacher
(``model.safetensors`` + ``model.json``, loadable with
``radiosharp.load_upsampled_teacher``) and the attention downsampler
(``downsampler.safetensors``; multi-view runs only: the other objectives train none),
then scores the result on ``heldout_images`` images of
``eval_data`` with views seeded by ``heldout_seed`` (``heldout.json``): runs that
differ only in the upsampler are scored on the same images and views. The held-out
views are brought down twice: by the run's downsampler (``fidelity``, ...; a fixed
antialiased resize when the run trained none) and always by the fixed resize
(``fixed_fidelity``, ...), the scale on which runs of different objectives compare.

Training-free upsamplers (``bilinear``, ...) can be "trained" too: only the de-bias
buffer and the downsampler learn, which makes them the fair baseline of a comparison.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from radiosharp.builders import build_dataset, build_teacher, build_upsampler
from radiosharp.data.first import NoImagesError, first_images
from radiosharp.engine.trainer import Trainer
from radiosharp.memory import check_upsampling_memory
from radiosharp.multiview.fidelity import fidelity_eval, quality_metrics
from radiosharp.multiview.views import ViewConfig
from radiosharp.objectives.config import ObjectiveConfig, ObjectiveError, check_objective
from radiosharp.objectives.step import objective_step
from radiosharp.recipe import Recipe, RecipeError, validate_section
from radiosharp.trainers.common import teacher_phis

log = logging.getLogger(__name__)


class UpsamplerTrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: str | None = None  # key in `teachers`; default: the only teacher
    objective: ObjectiveConfig = ObjectiveConfig()
    views: ViewConfig = ViewConfig()
    downsampler_kernel: int = Field(default=7, ge=1)
    debias: bool = True
    heldout_images: int = Field(default=16, ge=0)  # images of eval_data for the final fidelity
    heldout_seed: int = 1234


def parse_section(recipe: Recipe) -> UpsamplerTrainingConfig:
    """The recipe's ``upsampler_training`` section, checked against the recipe's teachers."""
    cfg = validate_section("upsampler_training", UpsamplerTrainingConfig, recipe.upsampler_training)
    keys = list(recipe.teachers)
    if not keys:
        raise RecipeError(
            "kind: upsampler needs a teacher: add one under 'teachers' with an upsampler, "
            "e.g. teachers: {dinov2: {upsampler: {name: featsharp, factor: 2}}}"
        )
    if cfg.teacher is None:
        if len(keys) != 1:
            raise RecipeError(
                f"kind: upsampler trains one teacher's upsampler; recipe has {keys}: set upsampler_training.teacher"
            )
        cfg.teacher = keys[0]
    if cfg.teacher not in recipe.teachers:
        raise RecipeError(f"upsampler_training.teacher '{cfg.teacher}' is not in teachers; valid: {', '.join(keys)}")
    up_cfg = recipe.teachers[cfg.teacher].upsampler
    if up_cfg is None:
        raise RecipeError(
            f"teachers.{cfg.teacher}.upsampler is not set; say what to train, "
            "e.g. upsampler: {name: featsharp, factor: 2}"
        )
    if up_cfg.run is not None:
        raise RecipeError(
            f"teachers.{cfg.teacher}.upsampler.run: kind: upsampler trains a new upsampler; "
            "give its name and factor instead of a run"
        )
    return cfg


class MultiViewModel(nn.Module):
    """What trains: the upsampler, the de-bias buffer and (multi-view only) the attention downsampler.

    The frozen teacher lives inside ``upsampled`` but outside the module tree, so it is
    neither checkpointed, optimized nor wrapped by DDP.
    """

    def __init__(
        self, upsampled: nn.Module, downsampler: nn.Module | None, objective: ObjectiveConfig | None = None
    ) -> None:
        super().__init__()
        self.upsampled = upsampled  # an UpsampledTeacher whose inner teacher is not a submodule
        self.downsampler = downsampler
        self.objective = objective or ObjectiveConfig()

    def forward(
        self, images: torch.Tensor, views: ViewConfig, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return objective_step(self.upsampled, images, self.objective, views, self.downsampler, generator)


class UpsamplerTrainer(Trainer):
    kind = "upsampler"

    def build(self) -> None:
        from radiosharp.debias import Debias
        from radiosharp.downsampler import AttentionDownsampler
        from radiosharp.upsampled import UpsampledTeacher

        recipe = self.recipe
        self.section = parse_section(recipe)
        key = self.section.teacher
        cfg = recipe.teachers[key]
        up_cfg = cfg.upsampler
        factor = up_cfg.factor or 2
        self.dataset = build_dataset(recipe.data)
        teacher = build_teacher(cfg, f"teachers.{key}")
        # before the statistics and the first step: a factor that cannot fit is refused with the estimate
        check_upsampling_memory(
            f"teachers.{key}.upsampler.factor",
            self.micro_batch // self.accelerator.num_processes,
            teacher.embed_dim,
            (teacher.feature_grid, teacher.feature_grid),
            factor,
            self.accelerator.device,
        )
        objective = self.section.objective
        try:  # before the statistics: nothing is written for a recipe that cannot work
            check_objective(objective, teacher.native_size, teacher.patch_size, factor)
        except ObjectiveError as err:
            raise RecipeError(f"upsampler_training.{err}") from None
        phi_s = teacher_phis(key, cfg, teacher, recipe, self.dataset, self.run_dir, self.accelerator)
        upsampler = build_upsampler(
            up_cfg, f"teachers.{key}.upsampler", factor=factor, dim=teacher.embed_dim, patch_size=teacher.patch_size
        )
        debias = Debias(teacher.embed_dim, teacher.feature_grid) if self.section.debias else None
        upsampled = UpsampledTeacher(teacher, upsampler, debias, phi_s)
        multiview = objective.name == "multiview"
        downsampler = AttentionDownsampler(teacher.embed_dim, self.section.downsampler_kernel) if multiview else None
        self.model = MultiViewModel(upsampled, downsampler, objective)
        # the upsampler's own build_config (every option, defaults included) goes into the export
        self.export_config = {"teacher": cfg.build_config()}

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"].to(self.accelerator.device)
        loss, extra = self.model(images, self.section.views)
        metrics: dict[str, float] = {}
        if (step + 1) % self.recipe.train.log_every == 0 or step + 1 == self.recipe.train.steps:
            metrics = quality_metrics(extra)
        return loss, metrics

    def export(self) -> None:
        from radiosharp.export import save_state_dict
        from radiosharp.upsampled import save_upsampler

        model = self.exported_model()
        save_upsampler(self.run_dir, model.upsampled, self.export_config)
        if model.downsampler is not None:
            save_state_dict(
                self.run_dir / "downsampler.safetensors",
                model.downsampler.state_dict(),
                {"kernel_size": str(self.section.downsampler_kernel)},
            )
        if self.section.heldout_images:
            result = heldout_fidelity(model, self.recipe, self.section)
            (self.run_dir / "heldout.json").write_text(json.dumps(result, indent=2))
            log.info("held-out: %s", ", ".join(f"{k} {v:.4g}" for k, v in result.items()))


@torch.no_grad()
def heldout_fidelity(
    model: MultiViewModel, recipe: Recipe, section: UpsamplerTrainingConfig, batch_size: int = 4
) -> dict[str, float]:
    """Multi-view metrics over held-out images with fixed views (same for every upsampler).

    Images come from ``eval_data`` (default: the training source with a different
    seed when it takes one); views are drawn from a generator seeded by
    ``heldout_seed``, so runs that differ only in the upsampler see the same images
    and views. The run's trained downsampler brings the features down.
    """
    data_cfg = recipe.eval_data
    if data_cfg is None:
        options = dict(recipe.data.options)
        if "seed" in recipe.data.registry.options(recipe.data.source):
            options["seed"] = int(options.get("seed", 0)) + 1
        data_cfg = {"source": recipe.data.source, **options}
    dataset = build_dataset(data_cfg, "eval_data")
    device = next(model.parameters()).device
    try:
        images = first_images(dataset, section.heldout_images).to(device)
    except NoImagesError:
        raise RecipeError("eval_data: the held-out data source gave no images") from None

    def scores(downsampler: nn.Module | None) -> dict[str, float]:
        generator = torch.Generator().manual_seed(section.heldout_seed)  # the same views every time
        return fidelity_eval(model.upsampled, images, generator, section.views, downsampler, batch_size)

    fixed = scores(None)
    own = fixed if model.downsampler is None else scores(model.downsampler)
    return {**own, **{f"fixed_{k}": v for k, v in fixed.items()}}


def run(recipe: Recipe) -> Path:
    return UpsamplerTrainer(recipe).run()
