"""Streaming sources (webdataset shards) feed the engine epoch after epoch; resume skips exactly."""

from __future__ import annotations

import itertools

import torch
from torch.utils.data import IterableDataset

from radiosharp.engine import step_loader


class Counting(IterableDataset):
    """Six samples per epoch, in an order that depends on the epoch set before iterating."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(6, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        for i in order:
            yield {"image": torch.full((3, 2, 2), float(i)), "key": f"{self.epoch}/{i}"}


def keys(batches, n):
    return [tuple(b["key"]) for b in itertools.islice(batches, n)]


def test_stream_batches_cycle_epochs_and_resume_skips_exactly():
    straight = keys(step_loader(Counting(), 2, seed=0, start_step=0), 7)
    assert len(straight) == 7
    # 3 batches per epoch; the 4th batch comes from epoch 1 in epoch 1's own order
    assert all(k.startswith("0/") for batch in straight[:3] for k in batch)
    assert all(k.startswith("1/") for batch in straight[3:6] for k in batch)
    assert sorted(k for batch in straight[:3] for k in batch) == [f"0/{i}" for i in range(6)]
    resumed = keys(step_loader(Counting(), 2, seed=0, start_step=4), 3)
    assert resumed == straight[4:7]


def test_no_weight_decay_on_tokens_tables_and_1d_parameters():
    from torch import nn

    from radiosharp.engine import make_optimizer
    from radiosharp.recipe import OptimConfig

    model = nn.Module()
    model.proj = nn.Linear(4, 4)
    model.prefix_tokens = nn.Parameter(torch.zeros(1, 3, 4))
    model.pos_table = nn.Parameter(torch.zeros(1, 4, 5, 5))
    opt = make_optimizer(list(model.named_parameters()), OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.proj.weight)}


def test_resume_refuses_a_changed_recipe_but_allows_a_longer_run(tmp_path):
    import pytest

    from radiosharp.engine import check_resumed_recipe
    from radiosharp.recipe import RecipeError, recipe_to_yaml, validate_recipe

    base = {
        "kind": "featurize",
        "output_dir": str(tmp_path),
        "teachers": {"dinov2": {"size": "tiny"}},
        "train": {"steps": 10},
    }
    (tmp_path / "recipe.yaml").write_text(recipe_to_yaml(validate_recipe(base)))
    longer = validate_recipe({**base, "resume": True, "train": {"steps": 20}})
    check_resumed_recipe(longer, tmp_path)  # allowed: only the length changes
    other_lr = validate_recipe({**base, "resume": True, "train": {"steps": 10, "optim": {"lr": 0.5}}})
    with pytest.raises(RecipeError, match=r"train\.optim\.lr: 0\.0001 -> 0\.5"):
        check_resumed_recipe(other_lr, tmp_path)
    more_teachers = validate_recipe(
        {**base, "resume": True, "teachers": {"dinov2": {"size": "tiny"}, "sam": {"size": "tiny"}}}
    )
    with pytest.raises(RecipeError, match=r"teachers\.sam"):
        check_resumed_recipe(more_teachers, tmp_path)
