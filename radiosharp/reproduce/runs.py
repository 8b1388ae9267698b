"""Train (or reuse) the runs a reproduction needs: PHI-S statistics and upsampler runs.

A run folder that finished with the same resolved recipe is reused as it is; one that
stopped part-way continues from its last checkpoint; anything else in the way is a
leftover of this command's own folders and is started again.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from pathlib import Path

from torch import nn

from radiosharp.recipe import Recipe, load_recipe, recipe_to_yaml
from radiosharp.reproduce.plan import RECIPES, Plan

log = logging.getLogger(__name__)
CHECKPOINT_DONE = "checkpoints/*/DONE"


def _finished(run_dir: Path, recipe: Recipe, marker: str) -> bool:
    recorded = run_dir / "recipe.yaml"
    if not (run_dir / marker).is_file() or not recorded.is_file():
        return False
    return recorded.read_text() == recipe_to_yaml(recipe)


def run_once(recipe_file: str, overrides: list[str], marker: str = "model.json") -> tuple[Path, float]:
    """Run ``recipe_file`` with ``overrides`` unless it already finished; (run folder, seconds spent)."""
    from radiosharp.train import run_recipe

    recipe = load_recipe(RECIPES / recipe_file, overrides)
    run_dir = recipe.run_dir
    if _finished(run_dir, recipe, marker):
        log.info("reusing %s", run_dir)
        return run_dir, 0.0
    if run_dir.exists():
        from radiosharp.engine.errors import RunLockedError
        from radiosharp.engine.runlock import lock_holder

        holder = lock_holder(run_dir)  # never resume or delete a folder another process writes
        if holder is not None:
            raise RunLockedError(holder)
        if any(run_dir.glob(CHECKPOINT_DONE)):
            recipe = load_recipe(RECIPES / recipe_file, [*overrides, "resume=true"])
        else:
            shutil.rmtree(run_dir)
    start = time.perf_counter()
    run_recipe(recipe)
    return run_dir, time.perf_counter() - start


def stats_file(plan: Plan) -> Path:
    """PHI-S statistics of the plan's teacher (computed once, reused by every upsampler run)."""
    from radiosharp.stats import compute_stats

    out = plan.out / "stats"
    overrides = [
        f"output_dir={out}",
        f"teachers.dinov2.native_size={plan.native_size}",
        f"data.size={plan.native_size}",
        f"stats.num_images={plan.stats_images}",
    ]
    recipe = load_recipe(RECIPES / "stats.yaml", overrides)
    if _finished(out, recipe, "phi_s/dinov2.safetensors"):
        return out / "phi_s" / "dinov2.safetensors"
    if out.exists():
        shutil.rmtree(out)
    paths = compute_stats(recipe)
    (out / "recipe.yaml").write_text(recipe_to_yaml(recipe))  # what _finished compares next time
    return paths["dinov2"]


@functools.lru_cache(maxsize=2)
def _teacher(native_size: int) -> nn.Module:
    from radiosharp.builders import build_teacher

    cfg = load_recipe(RECIPES / "stats.yaml").teachers["dinov2"].build_config()
    return build_teacher({**cfg, "native_size": native_size}, "reproduce teacher")


def plan_teacher(plan: Plan, native_size: int | None = None) -> nn.Module:
    """The reproduction's real teacher, built once per input size and shared by every run
    loaded around it (``load_upsampled_teacher(run, teacher=...)``)."""
    return _teacher(native_size or plan.native_size)


# methods of a comparison that are a registered upsampler with options
METHOD_OVERRIDES = {
    "featsharp_jafar": ["teachers.dinov2.upsampler.name=featsharp", "teachers.dinov2.upsampler.base={name: jafar}"]
}
# the objectives' settings in a comparison: MSE in PHI-S space for all (as multiview), AnyUp's
# downsampling term for crop_hires, two crops per image (AnyUp takes 4; the CPU budget)
OBJECTIVE_OVERRIDES = {
    "multiview": [],
    "low_to_high": ["upsampler_training.objective=low_to_high"],
    "crop_hires": ["upsampler_training.objective={name: crop_hires, consistency: 0.1, crops: 2}"],
    "hires_teacher": ["upsampler_training.objective=hires_teacher"],
}


def upsampler_run_name(method: str, factor: int, seed: int, debias: bool = True, objective: str = "multiview") -> str:
    trained_by = "" if objective == "multiview" else f"_{objective}"
    return f"{method}{trained_by}_{factor}x_seed{seed}{'' if debias else '_nodebias'}"


def upsampler_run(
    plan: Plan, method: str, factor: int, seed: int, debias: bool = True, objective: str = "multiview"
) -> Path:
    """The finished upsampler run of ``method`` at ``factor`` with ``seed`` (trained if needed)."""
    phi_s = stats_file(plan)
    size = factor * plan.native_size
    out = plan.out / "upsamplers" / upsampler_run_name(method, factor, seed, debias, objective)
    overrides = [
        f"output_dir={out}",
        f"name={out.name}",
        f"seed={seed}",
        *METHOD_OVERRIDES.get(method, [f"teachers.dinov2.upsampler.name={method}"]),
        f"teachers.dinov2.upsampler.factor={factor}",
        f"teachers.dinov2.phi_s={phi_s}",
        f"data.size={size}",
        f"eval_data.size={size}",
        f"upsampler_training.debias={str(debias).lower()}",
        *OBJECTIVE_OVERRIDES[objective],
        *plan.upsampler_overrides(),
    ]
    run_dir, seconds = run_once("upsampler.yaml", overrides, marker="heldout.json")
    if seconds:
        print(f"  trained {run_dir} in {seconds:.0f} s", flush=True)
    return run_dir
