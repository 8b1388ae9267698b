"""Recipes: validation errors name the key, names list the choices, base + overrides merge."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from radiosharp.recipe import RecipeError, load_recipe, recipe_to_yaml, validate_recipe
from radiosharp.train import main as train_main


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {
    "kind": "featurize",
    "teachers": {"dinov2": {"size": "tiny"}, "clip": {"family": "dfn_clip", "size": "tiny"}},
    "data": {"source": "synthetic", "num_images": 4, "size": 112},
}


def test_valid_recipe_and_family_defaults_to_key(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", BASE))
    assert recipe.teachers["dinov2"].family == "dinov2"
    assert recipe.teachers["clip"].family == "dfn_clip"
    assert recipe.teachers["clip"].options == {"size": "tiny"}
    assert recipe.name == "r"


def test_unknown_top_level_key_names_it(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'trian'"):
        load_recipe(write(tmp_path / "r.yaml", {**BASE, "trian": {"steps": 3}}))


def test_unknown_nested_key_names_dotted_path(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'train\.optim\.lrr'"):
        load_recipe(write(tmp_path / "r.yaml", {**BASE, "train": {"optim": {"lrr": 1}}}))


def test_unknown_builder_option_names_dotted_path_and_valid_keys(tmp_path):
    bad = {**BASE, "teachers": {"dinov2": {"size": "tiny", "sise": 3}}}
    with pytest.raises(RecipeError, match=r"unknown key 'teachers\.dinov2\.sise'.*valid keys:.*size"):
        load_recipe(write(tmp_path / "r.yaml", bad))


def test_bad_teacher_name_lists_valid_names(tmp_path):
    bad = {**BASE, "teachers": {"dino": {"size": "tiny"}}}
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path / "r.yaml", bad))
    msg = str(err.value)
    assert "unknown teacher 'dino'" in msg and "teachers.dino.family" in msg
    for name in ("dfn_clip", "dinov2", "sam", "siglip"):
        assert name in msg


def test_bad_data_source_and_upsampler_list_valid_names(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown data source 'synthetik'.*synthetic"):
        load_recipe(write(tmp_path / "r.yaml", {**BASE, "data": {"source": "synthetik"}}))
    bad = {**BASE, "teachers": {"dinov2": {"size": "tiny", "upsampler": "featshrp"}}}
    with pytest.raises(RecipeError, match=r"unknown upsampler 'featshrp'.*featsharp"):
        load_recipe(write(tmp_path / "r.yaml", bad))


def test_bad_value_and_missing_kind(tmp_path):
    with pytest.raises(RecipeError, match=r"train\.steps"):
        load_recipe(write(tmp_path / "r.yaml", {**BASE, "train": {"steps": "many"}}))
    with pytest.raises(RecipeError, match="valid kinds: featurize, upsampler, distill"):
        validate_recipe({"teachers": {}})
    with pytest.raises(RecipeError, match="kind"):
        validate_recipe({"kind": "destill"})


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "parent.yaml", {**BASE, "seed": 3, "train": {"steps": 50, "optim": {"lr": 0.1}}})
    child = write(
        tmp_path / "sub" / "child.yaml", {"base": "../parent.yaml", "train": {"steps": 7}, "data": {"num_images": 8}}
    )
    recipe = load_recipe(child)
    assert recipe.seed == 3  # inherited
    assert recipe.train.steps == 7  # child wins
    assert recipe.train.optim.lr == 0.1  # nested key kept by the deep merge
    assert recipe.data.source == "synthetic" and recipe.data.options["num_images"] == 8

    recipe = load_recipe(
        child,
        [
            "train.steps=9",
            "train.optim.lr=2e-3",
            "teachers.dinov2.upsampler=featsharp",
            "teachers.dinov2.upsampler.factor=3",
            "name=x",
        ],
    )
    assert recipe.train.steps == 9 and recipe.train.optim.lr == pytest.approx(2e-3)
    up = recipe.teachers["dinov2"].upsampler
    assert up.name == "featsharp" and up.factor == 3 and up.run is None
    assert recipe.name == "x" and recipe.run_dir == Path("runs/x")


def test_upsampler_string_is_a_run_path_when_it_looks_like_one(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", BASE), ["teachers.dinov2.upsampler=runs/up_dinov2"])
    assert recipe.teachers["dinov2"].upsampler.run == "runs/up_dinov2"


def test_inheritance_loop_and_missing_base(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml", "kind": "featurize"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(RecipeError, match="loops"):
        load_recipe(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", {"base": "nope.yaml", "kind": "featurize"})
    with pytest.raises(RecipeError, match="not found.*nope.yaml"):
        load_recipe(tmp_path / "c.yaml")


def test_bad_override_syntax(tmp_path):
    with pytest.raises(RecipeError, match="dotted.key=value"):
        load_recipe(write(tmp_path / "r.yaml", BASE), ["train.steps"])
    with pytest.raises(RecipeError, match=r"'data\.source' is a value, not a section"):
        load_recipe(write(tmp_path / "r.yaml", BASE), ["data.source.x=1"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", BASE), ["teachers.dinov2.upsampler=featup"])
    again = validate_recipe(yaml.safe_load(recipe_to_yaml(recipe)))
    assert again == recipe


def test_train_cli_reports_bad_key_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "r.yaml", {**BASE, "output_dir": str(tmp_path / "run"), "bogus": 1})
    assert train_main([str(path)]) == 2
    assert "unknown key 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_all_shipped_recipes_validate():
    root = Path(__file__).resolve().parents[1] / "recipes"
    paths = sorted(root.rglob("*.yaml"))
    assert paths, "no recipes shipped"
    for path in paths:
        if path.name.startswith("_"):
            continue  # fragments meant only as a base
        load_recipe(path)


def test_overrides_index_into_lists(tmp_path):
    data = {
        **BASE,
        "kind": "distill",
        "distill": {
            "partitions": [{"name": "low", "size": 128, "batch_size": 4}, {"name": "hi", "size": 256, "batch_size": 4}]
        },
    }
    path = write(tmp_path / "r.yaml", data)
    recipe = load_recipe(path, ["distill.partitions.1.size=320"])
    assert recipe.distill["partitions"][1]["size"] == 320 and recipe.distill["partitions"][0]["size"] == 128
    with pytest.raises(RecipeError, match=r"'distill\.partitions\.2' needs an index below 2"):
        load_recipe(path, ["distill.partitions.2.size=3"])


def test_mixed_precision_no_survives_yaml(tmp_path):
    """A bare `no` is YAML for false; as a precision it means "no" (file and override alike)."""
    path = tmp_path / "r.yaml"
    path.write_text("kind: featurize\ntrain:\n  mixed_precision: no\n")
    assert load_recipe(path).train.mixed_precision == "no"
    assert load_recipe(write(tmp_path / "b.yaml", BASE), ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(RecipeError, match=r"train.mixed_precision.*'no', 'bf16', 'fp16' or 'auto'"):
        load_recipe(write(tmp_path / "b.yaml", BASE), ["train.mixed_precision=yes"])
