"""Launching a run: processes, devices, precision and DeepSpeed.

:func:`make_accelerator` builds the run's Accelerator from the recipe and the launcher's
environment. On a machine without a GPU, start several processes with
``torchrun --nproc_per_node N``: they join one gloo group (``accelerate launch --cpu``
starts a single process). :func:`resolve_precision` and :func:`run_precision` say at
which reduced precision a run computes; :func:`deepspeed_config` completes the
recipe's ``deepspeed:`` block from its ``train`` section.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from radiosharp.recipe import Recipe, RecipeError

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "deepspeed_config",
    "launched_world_size",
    "make_accelerator",
    "plain_accelerator",
    "resolve_precision",
    "run_precision",
]


def resolve_precision(setting: str, cuda: bool | None = None) -> str:
    """``auto`` -> bf16 on a GPU that supports it, else full precision; fp16 needs a GPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise RecipeError(
            "train.mixed_precision=fp16 needs a CUDA GPU (its loss scaler does not run "
            "on a CPU); use 'auto', 'bf16' or 'no'"
        )
    return setting


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, ``accelerate launch``, MPI) started."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def _env_flag(name: str) -> bool:
    """An on/off environment variable as Accelerate reads them (1/true/yes/on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y", "on")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _has_accelerator() -> bool:
    current = getattr(torch, "accelerator", None)
    if current is not None and hasattr(current, "is_available"):
        return bool(current.is_available())
    return torch.cuda.is_available()


def deepspeed_config(recipe: Recipe, world: int) -> dict[str, Any]:
    """The recipe's ``deepspeed:`` block, checked and completed from ``train``.

    Batch sizes, gradient accumulation and clipping come from the recipe (no
    dataloader is handed to Accelerate, so its "auto" values could not be filled, and
    an unset clipping would become Accelerate's default of 1.0). Only ZeRO stages 0-2
    are supported: under ZeRO-3 every process holds a slice of the weights and the
    single-process export would save a partial model.
    """
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError(
            "the recipe has a 'deepspeed:' block but the deepspeed package is not installed: "
            "pip install radiosharp[deepspeed] (or drop the 'deepspeed:' block to train with DDP)"
        )
    ds = dict(recipe.deepspeed or {})
    stage = int((ds.get("zero_optimization") or {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise RecipeError(
            f"deepspeed.zero_optimization.stage={stage} is not supported; use 0, 1 or 2 "
            "(ZeRO-2 shards optimizer state and gradients, enough for ViT-L/H students)"
        )
    if stage > 0 and recipe.train.optim.name == "lamb":
        raise RecipeError(
            f"train.optim.name=lamb cannot run under deepspeed.zero_optimization.stage={stage}: "
            "ZeRO hands the optimizer flat shards of many layers, and LAMB's per-layer trust "
            "ratio would be taken over those shards; use train.optim.name=adamw (or nadam, sgd), "
            "or ZeRO stage 0"
        )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise RecipeError(
                f"deepspeed.{key} is not supported: the optimizer and its schedule come from "
                "train.optim, so that DDP and DeepSpeed runs of one recipe train alike"
            )
    train = recipe.train
    micro = train.batch_size // train.grad_accum // max(world, 1)
    ds.setdefault("train_micro_batch_size_per_gpu", max(micro, 1))
    ds.setdefault("gradient_accumulation_steps", train.grad_accum)
    ds.setdefault("train_batch_size", max(micro, 1) * train.grad_accum * max(world, 1))
    ds.setdefault("gradient_clipping", float(train.optim.grad_clip or 0.0))
    return ds


def make_accelerator(recipe: Recipe, find_unused_parameters: bool = False) -> Accelerator:
    """The run's Accelerator; ``find_unused_parameters`` is passed on to DDP.

    On a machine without a GPU, processes started by ``torchrun`` are only joined into
    one gloo group when Accelerate is told ``cpu=True``; without it every process would
    silently train alone and all of them would write the same run folder. Accelerate
    turns DeepSpeed off under ``cpu=True``, so a DeepSpeed run on CPUs (DeepSpeed's own
    CPU accelerator) asks for the gloo backend instead.
    """
    world = launched_world_size()
    on_cpu = _on_cpu()
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs

    precision = resolve_precision(recipe.train.mixed_precision, cuda=torch.cuda.is_available() and not on_cpu)
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    kwargs: dict[str, Any] = {"mixed_precision": precision, "gradient_accumulation_steps": recipe.train.grad_accum}
    if recipe.train.compile != "no":
        kwargs["dynamo_backend"] = recipe.train.compile.upper()  # Accelerate compiles the model in prepare()
    launcher_ds = _env_flag("ACCELERATE_USE_DEEPSPEED")
    if launcher_ds and not recipe.deepspeed:
        raise RecipeError(
            "the launcher asks for DeepSpeed (accelerate launch --use_deepspeed) but the recipe has "
            "no 'deepspeed:' block; add one (as recipes/stage3_hires_zero2.yaml does) or launch "
            "without --use_deepspeed"
        )
    if recipe.deepspeed:
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, world))
        if "LOCAL_RANK" not in os.environ:
            # Started without a launcher: a group of one, as `torchrun --nproc_per_node 1`
            # would set up (DeepSpeed would otherwise look for MPI).
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if on_cpu:
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
            os.environ.pop("ACCELERATE_USE_CPU", None)  # it would make Accelerate drop DeepSpeed
    elif on_cpu:
        kwargs["cpu"] = True
    accelerator = Accelerator(kwargs_handlers=handlers, **kwargs)
    if not launcher_ds:
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)  # set by Accelerate for this run only
    if recipe.deepspeed and accelerator.distributed_type != "DEEPSPEED":
        raise RuntimeError(f"the recipe asks for DeepSpeed but Accelerate set up {accelerator.distributed_type}")
    if accelerator.num_processes != world:
        raise RuntimeError(
            f"the launcher started {world} processes but Accelerate joined "
            f"{accelerator.num_processes}; each would train alone on the same run folder"
        )
    return accelerator


def _on_cpu() -> bool:
    """Whether this run is on CPUs: ``accelerate launch --cpu`` / ACCELERATE_USE_CPU, or no GPU."""
    on_cpu = _env_flag("ACCELERATE_USE_CPU") or not _has_accelerator()
    if on_cpu:
        # What DeepSpeed would detect anyway (Accelerate imports it when installed), said
        # before Accelerate is imported so that it does not warn about a missing GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return on_cpu


def plain_accelerator() -> Accelerator:
    """An Accelerator for work outside a training loop (statistics): its processes are
    joined as a training run's are (gloo on CPUs), without mixed precision or DeepSpeed."""
    cpu = _on_cpu()
    from accelerate import Accelerator

    return Accelerator(cpu=cpu)


def run_precision(accelerator: Any) -> str:
    """The run's reduced precision: "bf16", "fp16" or "no".

    Under DeepSpeed Accelerate reports "no" (DeepSpeed casts the model itself), so the
    DeepSpeed config's ``bf16`` / ``fp16`` blocks are read instead.
    """
    if accelerator is None:
        return "no"
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        config = plugin.deepspeed_config
        for name in ("bf16", "fp16"):
            if (config.get(name) or {}).get("enabled") is True:
                return name
        return "no"
    return str(accelerator.mixed_precision)
