"""The training engine shared by every kind of run.

One :class:`Trainer` owns the run folder, the Accelerator, the optimizer, the LR
schedule, logging, checkpoints and resume. A kind of run subclasses it and fills in
``build`` (models, data) and ``train_step`` (one micro-batch -> loss + metrics).

Determinism and resume: the samples of step ``s`` depend only on ``(seed, s)``
(:class:`StepBatchSampler`), the learning rate is a pure function of ``s``, and
Accelerate's state saving stores model, optimizer and RNG states. So a run resumed
from step ``s`` draws the same batches and the same random numbers as one that never
stopped. Several processes split each global batch between them, so a step under
``accelerate launch`` sees the same samples as one process with the same global batch.
On a machine without a GPU, start several processes with ``torchrun --nproc_per_node N``
(they join one gloo group; ``accelerate launch --cpu`` starts a single process).

Random numbers: every process seeds its RNGs with ``seed`` before ``build`` (so all
processes build the same model), then with ``seed + process_index`` (so processes draw
different dropout masks and jitters). The DataLoader draws its worker seed from its own
generator, never from the global RNG, so creating it after a resume leaves the restored
RNG states untouched.

Run folders: a fresh run refuses a folder that already holds a run, before writing
anything; a checkpoint is written to ``step_N.tmp``, marked ``DONE`` and renamed, so a
crash mid-save leaves the earlier checkpoints as they were; a resumed run drops the
metrics rows logged after its checkpoint (they are logged again).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from radiosharp.recipe import OptimConfig, Recipe, RecipeError, recipe_to_yaml

CHECKPOINTS = "checkpoints"


# ----------------------------------------------------------------------------- data order


class StepBatchSampler(Sampler[list[int]]):
    """Batches whose content is a pure function of ``(seed, step)``.

    The dataset is walked in epochs, each a fresh permutation seeded by
    ``seed + epoch``; the global batch of step ``s`` is positions
    ``[s*B, (s+1)*B)`` of that endless walk, and process ``rank`` of ``world`` takes
    every ``world``-th sample of it. ``start_step`` skips ahead without touching data.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, start_step: int = 0,
                 num_steps: int | None = None, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("the data source is empty")
        if global_batch % world != 0:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
        self.n, self.batch, self.seed = num_samples, global_batch, seed
        self.start, self.num_steps = start_step, num_steps
        self.rank, self.world, self.shuffle = rank, world, shuffle
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm_cache = {epoch: torch.randperm(self.n, generator=g)}
            else:
                self._perm_cache = {epoch: torch.arange(self.n)}
        return self._perm_cache[epoch]

    def global_batch_indices(self, step: int) -> list[int]:
        out = []
        for pos in range(step * self.batch, (step + 1) * self.batch):
            epoch, i = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[i]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while self.num_steps is None or step < self.start + self.num_steps:
            yield self.global_batch_indices(step)[self.rank :: self.world]
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return self.num_steps


def step_loader(dataset: Dataset, global_batch: int, seed: int, start_step: int, rank: int = 0,
                world: int = 1, num_workers: int = 0, shuffle: bool = True) -> DataLoader:
    """An endless DataLoader over ``dataset`` following :class:`StepBatchSampler`.

    The loader gets its own seeded generator: without one, ``iter(loader)`` draws the
    workers' base seed from the global torch RNG, which would shift every random
    number of a resumed run against the run that never stopped.
    """
    from radiosharp.data.loader import collate_skip_bad

    if isinstance(dataset, IterableDataset):
        return stream_batches(dataset, global_batch // world, start_step, num_workers)
    sampler = StepBatchSampler(len(dataset), global_batch, seed, start_step, None, rank, world, shuffle)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start_step * 7919 + rank)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, generator=generator,
                      collate_fn=collate_skip_bad, persistent_workers=num_workers > 0)


def stream_batches(dataset: IterableDataset, local_batch: int, start_step: int, num_workers: int = 0
                   ) -> Iterator[dict[str, Any] | None]:
    """Endless batches from a streaming source (webdataset shards), epoch after epoch.

    The source splits its shards between processes and workers itself and is seeded
    per epoch (``set_epoch``), so its order is reproducible; resuming at step ``s``
    re-reads and drops the first ``s`` batches (exact, at the price of reading them).
    """
    from radiosharp.data.loader import collate_skip_bad

    loader = DataLoader(dataset, batch_size=local_batch, num_workers=num_workers,
                        collate_fn=collate_skip_bad, drop_last=True)
    epoch, produced = 0, 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            produced += 1
            if produced > start_step:
                yield batch
        if empty:
            raise RuntimeError("the streaming data source yielded no batch in a whole epoch "
                               f"(fewer than {local_batch} samples per process?)")
        epoch += 1


def next_readable(batches: Iterator[dict[str, Any] | None], limit: int = 100) -> dict[str, Any]:
    """The next batch that has at least one readable sample.

    ``collate_skip_bad`` gives ``None`` for a micro-batch whose every sample was bad;
    this process then takes its share of the next one, so that every process still
    runs the same number of forward/backward passes (DDP stays in step). Such a step is
    no longer a pure function of ``(seed, step)``; the skip log says when it happens.
    """
    for _ in range(limit):
        batch = next(batches)
        if batch is not None:
            return batch
    raise RuntimeError(f"{limit} micro-batches in a row had no readable sample: the data source "
                       "is unreadable (see the skipped-sample warnings above)")


# ----------------------------------------------------------------------------- schedule


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Linear warm-up to ``optim.lr``, then cosine decay to ``optim.lr * min_lr_ratio``."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, total - optim.warmup_steps)
    t = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


NO_DECAY_NAMES = ("token", "pos", "table", "debias", "alibi", "tap_", "register")


def make_optimizer(params: list[torch.nn.Parameter] | list[tuple[str, torch.nn.Parameter]],
                   optim: OptimConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer; no weight decay on biases, norms, 1-D parameters, and on
    learned tokens, position tables and de-bias buffers (named ones: ``NO_DECAY_NAMES``),
    which decay would pull toward zero for no benefit. Pass ``named_parameters()`` so
    names can be read; bare parameters fall back to the 1-D rule alone.
    """
    named = [item if isinstance(item, tuple) else ("", item) for item in params]
    named = [(n, p) for n, p in named if p.requires_grad]

    def decays(name: str, p: torch.nn.Parameter) -> bool:
        leaf = name.lower()
        return p.ndim >= 2 and not any(key in leaf for key in NO_DECAY_NAMES)

    decay = [p for n, p in named if decays(n, p)]
    no_decay = [p for n, p in named if not decays(n, p)]
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)
    if optim.name == "nadam":
        return torch.optim.NAdam(groups, lr=optim.lr, betas=optim.betas, decoupled_weight_decay=True)
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.betas[0])
    if optim.name == "lamb":
        try:
            from timm.optim import Lamb
        except ImportError as err:  # pragma: no cover - timm is a dependency
            raise RecipeError("optimizer 'lamb' needs timm") from err
        return Lamb(groups, lr=optim.lr, betas=optim.betas)
    raise RecipeError(f"unknown optimizer '{optim.name}'")


# ----------------------------------------------------------------------------- run folder


def _checkpoint_step(path: Path) -> int | None:
    """``N`` for a folder named ``step_N``; None for anything else (``step_N.tmp`` included)."""
    name = path.name
    if not name.startswith("step_") or not name[5:].isdigit():
        return None
    return int(name[5:])


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first.

    Complete means renamed from ``step_N.tmp`` to ``step_N`` and holding ``DONE``: a
    ``.tmp`` folder is half-written even when its ``DONE`` is already there (a crash
    between marking and renaming).
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir()
            if p.is_dir() and _checkpoint_step(p) is not None and (p / "DONE").is_file()]
    return sorted(done, key=_checkpoint_step)  # type: ignore[arg-type,return-value]


RUN_MARKERS = ("recipe.yaml", "metrics.jsonl", "model.safetensors")


# What a resumed run may change: how long it runs and how it logs, never what it trains.
RESUMABLE_CHANGES = ("resume", "train.steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.num_workers", "wandb.")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def check_resumed_recipe(recipe: Recipe, run_dir: Path) -> None:
    """A resumed run must be the run it resumes: only length and logging may change.

    Anything else (teachers, student, data, optimizer, ...) would make the checkpoint
    load into a different model or silently change the training. Allowed changes are
    printed and recorded when the run writes its recipe again.
    """
    import yaml

    saved_path = run_dir / "recipe.yaml"
    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    now = _flatten(recipe.model_dump(mode="json"))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    blocked = [k for k in changed if not any(k == a or k.startswith(a) for a in RESUMABLE_CHANGES)]
    if blocked:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in blocked[:4])
        raise RecipeError(
            f"resume=true but the recipe differs from the one {run_dir} was started with ({shown}"
            f"{' ...' if len(blocked) > 4 else ''}); a resumed run may change only "
            f"{', '.join(a.rstrip('.') for a in RESUMABLE_CHANGES[1:])}")
    allowed = [k for k in changed if k != "resume"]
    if allowed:
        print("resuming with changes: " + ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in allowed))


def prepare_run_dir(recipe: Recipe) -> Path:
    """Check that the run folder may be used; never clobber an earlier run.

    Called before anything is written. A folder that only holds what
    ``python -m radiosharp.stats`` wrote (``phi_s/``) is free for a fresh run.
    """
    run_dir = recipe.run_dir
    if recipe.resume:
        if not checkpoint_dirs(run_dir):
            raise RecipeError(f"resume=true but {run_dir} has no complete checkpoint to resume from "
                              f"(looked for {run_dir / CHECKPOINTS}/step_N/DONE); drop resume=true "
                              "to start a fresh run")
        check_resumed_recipe(recipe, run_dir)
        return run_dir
    if not run_dir.exists():
        return run_dir
    done = checkpoint_dirs(run_dir)
    if done:
        raise RecipeError(
            f"{run_dir} already holds a run (last checkpoint {done[-1].name}); pass resume=true to "
            f"continue it, or choose another output_dir (output_dir=runs/new_name)"
        )
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if found:
        raise RecipeError(
            f"{run_dir} already holds a run ({', '.join(found)}) with no checkpoint to resume from; "
            f"choose another output_dir (output_dir=runs/new_name) or delete {run_dir}"
        )
    return run_dir


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors to wandb if enabled."""

    def __init__(self, path: Path, enabled: bool, wandb_run: Any = None) -> None:
        self.path, self.enabled, self.wandb = path, enabled, wandb_run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop the rows logged after ``last_step``: a resumed run logs those steps again."""
    from radiosharp.export import atomic_write_bytes

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    if len(keep) != len(lines):
        atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _start_wandb(recipe: Recipe, run_dir: Path) -> Any:
    if not recipe.wandb.enabled:
        return None
    try:
        import wandb
    except ImportError:
        print("wandb is not installed (pip install radiosharp[wandb]); logging to metrics.jsonl only",
              file=sys.stderr)
        return None
    mode = recipe.wandb.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(project=recipe.wandb.project, name=recipe.name, dir=str(run_dir), mode=mode,
                      config=recipe.model_dump(mode="json"), resume="allow")


# ----------------------------------------------------------------------------- trainer


def resolve_precision(setting: str, cuda: bool | None = None) -> str:
    """``auto`` -> bf16 on a GPU that supports it, else full precision; fp16 needs a GPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if setting == "fp16" and not cuda:
        raise RecipeError("train.mixed_precision=fp16 needs a CUDA GPU (its loss scaler does not run "
                          "on a CPU); use 'auto', 'bf16' or 'no'")
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
        raise RecipeError("the recipe has a 'deepspeed:' block but the deepspeed package is not installed: "
                          "pip install radiosharp[deepspeed] (or drop the 'deepspeed:' block to train with DDP)")
    ds = dict(recipe.deepspeed or {})
    stage = int((ds.get("zero_optimization") or {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise RecipeError(f"deepspeed.zero_optimization.stage={stage} is not supported; use 0, 1 or 2 "
                          "(ZeRO-2 shards optimizer state and gradients, enough for ViT-L/H students)")
    if stage > 0 and recipe.train.optim.name == "lamb":
        raise RecipeError(f"train.optim.name=lamb cannot run under deepspeed.zero_optimization.stage={stage}: "
                          "ZeRO hands the optimizer flat shards of many layers, and LAMB's per-layer trust "
                          "ratio would be taken over those shards; use train.optim.name=adamw (or nadam, sgd), "
                          "or ZeRO stage 0")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise RecipeError(f"deepspeed.{key} is not supported: the optimizer and its schedule come from "
                              "train.optim, so that DDP and DeepSpeed runs of one recipe train alike")
    train = recipe.train
    micro = train.batch_size // train.grad_accum // max(world, 1)
    ds.setdefault("train_micro_batch_size_per_gpu", max(micro, 1))
    ds.setdefault("gradient_accumulation_steps", train.grad_accum)
    ds.setdefault("train_batch_size", max(micro, 1) * train.grad_accum * max(world, 1))
    ds.setdefault("gradient_clipping", float(train.optim.grad_clip or 0.0))
    return ds


def make_accelerator(recipe: Recipe, find_unused_parameters: bool = False):
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
    launcher_ds = _env_flag("ACCELERATE_USE_DEEPSPEED")
    if launcher_ds and not recipe.deepspeed:
        raise RecipeError("the launcher asks for DeepSpeed (accelerate launch --use_deepspeed) but the recipe has "
                          "no 'deepspeed:' block; add one (as recipes/stage3_hires_zero2.yaml does) or launch "
                          "without --use_deepspeed")
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
        raise RuntimeError(f"the launcher started {world} processes but Accelerate joined "
                           f"{accelerator.num_processes}; each would train alone on the same run folder")
    return accelerator


def _on_cpu() -> bool:
    """Whether this run is on CPUs: ``accelerate launch --cpu`` / ACCELERATE_USE_CPU, or no GPU."""
    on_cpu = _env_flag("ACCELERATE_USE_CPU") or not _has_accelerator()
    if on_cpu:
        # What DeepSpeed would detect anyway (Accelerate imports it when installed), said
        # before Accelerate is imported so that it does not warn about a missing GPU.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return on_cpu


def plain_accelerator():
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


class TrainState:
    """The counters Accelerate checkpoints beside model and optimizer."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class Trainer:
    """Owns the loop; subclasses provide ``build`` and ``train_step``.

    ``build`` must set ``self.model`` (the trainable nn.Module whose state is
    checkpointed) and ``self.dataset``; it may set ``self.frozen`` modules that are
    moved to the device but neither checkpointed nor optimized.

    ``find_unused_parameters``: set True in a subclass whose steps leave some trainable
    parameters without a gradient (e.g. a teacher's head in a partition it does not
    teach); DDP then looks for them each step instead of hanging or failing.
    """

    kind = "base"
    find_unused_parameters: bool = False

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.run_dir = prepare_run_dir(recipe)
        self.accelerator = make_accelerator(recipe, self.find_unused_parameters)
        self.micro_batch = self._micro_batch()
        self.state = TrainState()
        self.model: torch.nn.Module
        self.dataset: Dataset

    # -- to implement
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def export(self) -> None:
        """Write the run's exported model (``model.safetensors`` + ``model.json``)."""

    def log_extra(self, step: int) -> dict[str, float]:
        """Metrics computed every ``log_every`` steps beside the loss (optional)."""
        return {}

    # -- the loop
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _micro_batch(self) -> int:
        """The global micro-batch (all processes); checked before anything is written."""
        train, world = self.recipe.train, self.accelerator.num_processes
        if train.batch_size % train.grad_accum != 0:
            raise RecipeError(f"train.batch_size {train.batch_size} is not divisible by "
                              f"train.grad_accum {train.grad_accum}")
        micro = train.batch_size // train.grad_accum
        if micro % world != 0:
            raise RecipeError(f"train.batch_size / train.grad_accum = {micro} samples per micro-step cannot be "
                              f"split evenly between {world} processes; make train.batch_size a multiple of "
                              f"{train.grad_accum * world}")
        return micro

    def _write_recipe(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "recipe.yaml").write_text(recipe_to_yaml(self.recipe))

    def save_checkpoint(self) -> Path:
        """Save to ``step_N.tmp``, mark it done, then rename: a crash leaves the last good one."""
        acc = self.accelerator
        root = self.run_dir / CHECKPOINTS
        final = root / f"step_{self.state.step:08d}"
        tmp = root / f"step_{self.state.step:08d}.tmp"
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob("step_*.tmp"):  # this one, or left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if self.is_main:
            (tmp / "DONE").write_text(str(self.state.step))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoint_dirs(self.run_dir)[: -self.recipe.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self) -> None:
        """Model, optimizer, RNG states and step from the last complete checkpoint."""
        last = checkpoint_dirs(self.run_dir)[-1]
        self.accelerator.load_state(str(last))
        if self.is_main:
            truncate_metrics(self.run_dir, self.state.step)
        self.accelerator.wait_for_everyone()
        self.accelerator.print(f"resumed {self.run_dir} at step {self.state.step} from {last.name}")

    def step_autocast(self) -> contextlib.AbstractContextManager:
        """Autocast at the run's reduced precision (bf16/fp16) for a step's forward work.

        Accelerate autocasts only the prepared model's forward, and under DeepSpeed not
        even that (DeepSpeed only casts the weights). Frozen teachers, upsampled targets
        and losses run outside the model, so the whole step is autocast here and every
        trainer stays precision-agnostic.
        """
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run_precision(self.accelerator))
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=dtype)

    def set_lr(self, step: int) -> float:
        lr = lr_at(step, self.recipe.train.steps, self.recipe.train.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run(self) -> Path:
        from tqdm.auto import tqdm

        from accelerate.utils import set_seed

        recipe, acc = self.recipe, self.accelerator
        set_seed(recipe.seed)  # the same model on every process
        self.build()
        self.optimizer = make_optimizer(list(self.model.named_parameters()), recipe.train.optim)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        for module in getattr(self, "frozen", []):
            module.to(acc.device)
        set_seed(recipe.seed, device_specific=True)  # different random numbers per process
        acc.register_for_checkpointing(self.state)
        if recipe.resume:
            self.load_checkpoint()
        self._write_recipe()  # on resume: records the allowed changes (check_resumed_recipe)
        wandb_run = _start_wandb(recipe, self.run_dir) if self.is_main else None
        log = MetricsLog(self.run_dir / "metrics.jsonl", self.is_main, wandb_run)

        start = self.state.step
        loader = step_loader(self.dataset, self.micro_batch, recipe.seed, start * recipe.train.grad_accum,
                             acc.process_index, acc.num_processes, recipe.train.num_workers)
        batches = iter(loader)
        total = recipe.train.steps
        bar = tqdm(total=total, initial=start, desc=f"{self.kind} {recipe.name}", disable=not self.is_main,
                   dynamic_ncols=True)
        window_t, window_n = time.perf_counter(), 0
        # Logged values are means over the steps since the last log (not the last step alone).
        window_sum: dict[str, torch.Tensor] = {}
        window_count: dict[str, int] = {}
        self.model.train()
        while self.state.step < total:
            step = self.state.step
            lr = self.set_lr(step)
            # Metrics stay on the device until a log step: reading them every micro-step
            # would make the host wait for the device each time.
            metrics_sum: dict[str, torch.Tensor] = {}
            for _ in range(recipe.train.grad_accum):
                batch = next_readable(batches)
                window_n += len(batch["image"]) * acc.num_processes
                with acc.accumulate(self.model):
                    with self.step_autocast():
                        loss, metrics = self.train_step(batch, step)
                    acc.backward(loss)
                    if acc.sync_gradients and recipe.train.optim.grad_clip and not recipe.deepspeed:
                        acc.clip_grad_norm_(self.model.parameters(), recipe.train.optim.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in {"loss": loss, **metrics}.items():
                    v = torch.as_tensor(v, device=acc.device).detach().float() / recipe.train.grad_accum
                    metrics_sum[k] = metrics_sum[k] + v if k in metrics_sum else v
            self.state.step += 1
            done = self.state.step
            for k, v in metrics_sum.items():
                window_sum[k] = window_sum[k] + v if k in window_sum else v
                window_count[k] = window_count.get(k, 0) + 1
            if done % recipe.train.log_every == 0 or done == total:
                reduced = {k: acc.reduce(v / window_count[k], "mean").item() for k, v in sorted(window_sum.items())}
                window_sum, window_count = {}, {}
                elapsed = time.perf_counter() - window_t
                reduced.update(lr=lr, images_per_s=window_n / max(elapsed, 1e-9))
                reduced.update(self.log_extra(done))
                log.log(done, reduced)
                bar.set_postfix(loss=f"{reduced['loss']:.4g}", img_s=f"{reduced['images_per_s']:.1f}")
                window_t, window_n = time.perf_counter(), 0
            bar.update(1)
            every = recipe.train.checkpoint_every
            if (every and done % every == 0) or done == total:
                self.save_checkpoint()
        bar.close()
        acc.wait_for_everyone()
        if self.is_main:
            self.export()
        acc.wait_for_everyone()
        if wandb_run is not None:
            wandb_run.finish()
        return self.run_dir

    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def exported_model(self) -> torch.nn.Module:
        """The module to export, in float32.

        Under DeepSpeed bf16/fp16 the module holds rounded weights; the float32 master
        weights live in the (ZeRO-sharded) optimizer state, so they are read back from
        the last checkpoint, which every run writes at its end, into a float32 copy.
        """
        model = self.unwrapped()
        if not self.recipe.deepspeed or all(p.dtype == torch.float32 for p in model.parameters()):
            return model
        import copy

        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        master = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dirs(self.run_dir)[-1]))
        names = {name for name, _ in model.named_parameters()}
        if not names <= set(master):
            raise RuntimeError(f"the DeepSpeed checkpoint lacks the float32 weights of {sorted(names - set(master))}")
        full = copy.deepcopy(model).float()
        full.load_state_dict({k: v for k, v in master.items() if k in names}, strict=False)
        return full
