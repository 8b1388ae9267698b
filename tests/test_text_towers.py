"""Text towers of the CLIP-like teachers (``text: true``) and zero-shot classification.

Teachers: prompts encode to ``[K, summary_dim]``, equal to the library's own
``encode_text`` (open_clip CLIP / CustomTextCLIP, transformers SiglipModel) from the
same weights file or hub cache, seeded and frozen; missing tokenizers / weights fail
clearly. Students: an export stores the teachers' build configs (never their weights)
and ``load_student(run, text_towers=True)`` rebuilds the towers. Zero-shot runs on
both and is skipped, with its reason, without a tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fake_hub_repo
from safetensors import safe_open
from safetensors.torch import save_file

from radiosharp.eval.features import FeatureStore
from radiosharp.eval.task import EvalContext
from radiosharp.recipe import TeacherConfig
from radiosharp.registry import STUDENTS, TASKS, TEACHERS
from radiosharp.student_io import load_student, save_student, teacher_build_config
from teachers._weights import MissingWeightsError, WeightsMismatchError

CASES = {"dfn_clip": ("dfn_clip", {}), "siglip-open_clip": ("siglip", {}), "siglip-hf": ("siglip", {"source": "hf"})}
PROMPTS = ["a photo of a dog.", "a photo of a cat.", "a red square"]
# The tiny towers, as the builders make them (see teachers/dfn_clip.py, teachers/siglip.py).
TINY_CLIP_VISION = {"image_size": 112, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14}
TINY_CLIP_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_SIGLIP_TEXT = {
    **TINY_CLIP_TEXT,
    "mlp_ratio": 3.7362,
    "no_causal_mask": True,
    "proj_bias": True,
    "pool_type": "last",
    "norm_kwargs": {"eps": 1e-6},
}


def tiny(case: str, **extra):
    family, options = CASES[case]
    return TEACHERS.build(family, size="tiny", **options, **extra)


def images(batch: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def save(path: Path, state: dict) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def text_teachers() -> dict:
    return {case: tiny(case, text=True) for case in CASES}


# ----------------------------------------------------------------------------- teachers


@pytest.mark.parametrize("case", CASES)
def test_prompts_encode_to_the_summary_space(text_teachers, case):
    teacher = text_teachers[case]
    tokens = teacher.tokenize(PROMPTS)
    assert tokens.dtype == torch.long and tokens.shape == (3, 16)
    text = teacher.encode_text(tokens)
    assert text.shape == (3, teacher.summary_dim) and torch.isfinite(text).all()
    assert (text[0] - text[2]).abs().max() > 1e-4  # different prompts, different embeddings
    x = images(2)
    assert teacher(x).summary.shape[1] == text.shape[1]
    # the text option adds a tower; the vision tower is the one built without it
    assert torch.equal(teacher(x).features, tiny(case)(x).features)


@pytest.mark.parametrize("case", CASES)
def test_text_tower_is_seeded_frozen_and_keeps_the_global_rng(text_teachers, case):
    before = torch.get_rng_state()
    again, other = tiny(case, text=True), tiny(case, text=True, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    teacher = text_teachers[case]
    tokens = teacher.tokenize(PROMPTS)
    assert torch.equal(teacher.encode_text(tokens), again.encode_text(tokens))
    assert (teacher.encode_text(tokens) - other.encode_text(tokens)).abs().max() > 1e-4
    assert not any(p.requires_grad for p in teacher.text_tower.parameters())
    teacher.train()
    assert not teacher.text_tower.training
    assert teacher.encode_text(tokens).grad_fn is None


def test_teachers_without_a_text_tower_expose_none():
    for teacher in (tiny("dfn_clip"), TEACHERS.build("dinov2", size="tiny")):
        assert teacher.encode_text is None and teacher.tokenize is None and teacher.text_tower is None


def test_bad_tokens_name_the_expected_input(text_teachers):
    teacher = text_teachers["dfn_clip"]
    with pytest.raises(ValueError, match=r"integer token ids \[K, L\]"):
        teacher.encode_text(torch.rand(2, 16))
    with pytest.raises(TypeError, match="list of strings"):
        teacher.tokenize([1, 2])


def tiny_open_clip(custom_text: bool):
    """open_clip's own CLIP (DFN layout) / CustomTextCLIP (SigLIP text layout) at the tiny dims."""
    from open_clip.model import CLIP, CustomTextCLIP

    torch.manual_seed(0)
    if custom_text:
        return CustomTextCLIP(48, TINY_CLIP_VISION, TINY_SIGLIP_TEXT).eval()
    return CLIP(24, TINY_CLIP_VISION, TINY_CLIP_TEXT, quick_gelu=True).eval()


def test_dfn_clip_towers_equal_open_clip_from_a_whole_clip_file(tmp_path):
    clip = tiny_open_clip(custom_text=False)
    path = save(tmp_path / "clip.safetensors", clip.state_dict())
    teacher = tiny("dfn_clip", seed=5, weights=str(path), text=True)
    tokens = teacher.tokenize(PROMPTS)
    x = images(2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_text(tokens), clip.encode_text(tokens))
        torch.testing.assert_close(teacher(x).summary, clip.encode_image(teacher.normalize(x)))
    # a teacher.state_dict() file (model.*, text_tower.encoder.*) round-trips both towers
    again = tiny("dfn_clip", seed=7, text=True, weights=str(save(tmp_path / "t.safetensors", teacher.state_dict())))
    assert torch.equal(again.encode_text(tokens), teacher.encode_text(tokens))


def test_siglip_open_clip_text_tower_reads_the_text_keys(tmp_path):
    custom = tiny_open_clip(custom_text=True)
    vision = tiny("siglip-open_clip", seed=3)
    state = {f"visual.trunk.{k}": v for k, v in vision.model.state_dict().items()}
    state.update({k: v for k, v in custom.state_dict().items() if k.startswith("text.")})
    state["logit_scale"] = torch.ones(())
    teacher = tiny("siglip-open_clip", seed=9, text=True, weights=str(save(tmp_path / "siglip.safetensors", state)))
    tokens = teacher.tokenize(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_text(tokens), custom.encode_text(tokens))
    x = images(1)
    assert torch.equal(teacher(x).summary, vision(x).summary)


def tiny_siglip_model():
    """A whole transformers ``SiglipModel`` with the tiny ``siglip-hf`` towers' configs (its own seeded weights)."""
    from transformers import SiglipConfig, SiglipModel

    towers = tiny("siglip-hf", text=True)
    text, vision = towers.text_tower.encoder.config.to_dict(), towers.model.config.to_dict()
    torch.manual_seed(0)
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


def test_siglip_hf_towers_equal_transformers_from_a_whole_model_file(tmp_path):
    model = tiny_siglip_model()
    teacher = tiny("siglip-hf", seed=4, text=True, weights=str(save(tmp_path / "m.safetensors", model.state_dict())))
    tokens = teacher.tokenize(PROMPTS)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_text(tokens), model.get_text_features(input_ids=tokens).pooler_output)
        image = model.get_image_features(pixel_values=teacher.normalize(x)).pooler_output
    torch.testing.assert_close(teacher(x).summary, image)


def word_tokenizer(snapshot: Path) -> None:
    """A tiny offline transformers tokenizer (whitespace words) saved into ``snapshot``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "a", "photo", "of", "dog.", "cat.", "red", "square"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>").save_pretrained(snapshot)


def test_real_siglip_hf_text_comes_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_siglip_model()
    snapshot = fake_hub_repo(tmp_path, "test/tiny-siglip")
    model.save_pretrained(snapshot)
    options = dict(source="hf", size="real", model="test/tiny-siglip", native_size=112, cache_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError, match="text tokenizer of 'test/tiny-siglip'.*size: tiny"):
        TEACHERS.build("siglip", text=True, **options)
    word_tokenizer(snapshot)
    teacher = TEACHERS.build("siglip", text=True, **options)
    tokens = teacher.tokenize(["A photo of a DOG.", "a red square"])
    assert tokens.shape == (2, 16) and tokens[0, :5].tolist() == [2, 3, 4, 2, 5]  # lowercased, padded to 16
    with torch.no_grad():
        expected = model.get_text_features(input_ids=tokens).pooler_output
    torch.testing.assert_close(teacher.encode_text(tokens), expected)
    tower = TEACHERS.get("siglip").build_text_tower(text=True, **options)
    assert torch.equal(tower.encode_text(tokens), teacher.encode_text(tokens))


def write_open_clip_repo(cache: Path, repo_id: str, clip, text_cfg: dict) -> None:
    snapshot = fake_hub_repo(cache, repo_id)
    model_cfg = {"embed_dim": 24, "quick_gelu": True, "vision_cfg": TINY_CLIP_VISION, "text_cfg": text_cfg}
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    save(snapshot / "open_clip_model.safetensors", clip.state_dict())


def test_real_dfn_clip_text_comes_from_the_hub_cache(tmp_path, monkeypatch):
    import open_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = tiny_open_clip(custom_text=False)
    write_open_clip_repo(tmp_path, "test/tiny-clip", clip, TINY_CLIP_TEXT)
    teacher = TEACHERS.build(
        "dfn_clip", size="real", model="hf-hub:test/tiny-clip", native_size=112, cache_dir=str(tmp_path), text=True
    )
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=16)(PROMPTS)
    assert torch.equal(teacher.tokenize(PROMPTS), tokens)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_text(tokens), clip.encode_text(tokens))
    # an open_clip model whose HF tokenizer is not cached: the error names it
    write_open_clip_repo(tmp_path, "test/clip-hf-tok", clip, {**TINY_CLIP_TEXT, "hf_tokenizer_name": "test/no-tok"})
    with pytest.raises(MissingWeightsError, match=r"text tokenizer of 'hf-hub:test/clip-hf-tok' \(test/no-tok\)"):
        TEACHERS.build(
            "dfn_clip",
            size="real",
            model="hf-hub:test/clip-hf-tok",
            native_size=112,
            cache_dir=str(tmp_path),
            text=True,
        )
    # ... and once cached, that tokenizer is used, padded to the context length
    tokenizer_repo = fake_hub_repo(tmp_path, "test/no-tok")
    word_tokenizer(tokenizer_repo)
    (tokenizer_repo / "config.json").write_text('{"model_type": "bert"}')  # AutoTokenizer reads it first
    tower = TEACHERS.get("dfn_clip").build_text_tower(
        size="real", model="hf-hub:test/clip-hf-tok", cache_dir=str(tmp_path)
    )
    assert tower.tokenize(["a red square"])[0, :4].tolist() == [2, 7, 8, 0]


def test_missing_vocab_weights_and_text_keys_fail_clearly(tmp_path, monkeypatch):
    import open_clip.tokenizer

    monkeypatch.setattr(open_clip.tokenizer, "default_bpe", lambda: str(tmp_path / "gone.txt.gz"))
    with pytest.raises(FileNotFoundError, match="BPE vocabulary .*gone.txt.gz.*reinstall"):
        tiny("dfn_clip", text=True)
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="ViT-H-14-378-quickgelu.*teachers.dfn_clip.weights"):
        TEACHERS.get("dfn_clip").build_text_tower(size="real", text=True, cache_dir=str(tmp_path))
    visual_only = {f"visual.{k}": v for k, v in tiny("dfn_clip").model.state_dict().items()}
    path = save(tmp_path / "visual.safetensors", visual_only)
    with pytest.raises(WeightsMismatchError, match=r"\(text tower\).*missing keys: .*positional_embedding"):
        tiny("dfn_clip", weights=str(path), text=True)
    tiny("siglip-hf").model.save_pretrained(fake_hub_repo(tmp_path, "test/vision-only"))
    with pytest.raises(ValueError, match="without a text tower; `text: true` needs a whole SigLIP model"):
        TEACHERS.build("siglip", source="hf", size="real", model="test/vision-only", cache_dir=str(tmp_path), text=True)


# ----------------------------------------------------------------------------- zero-shot


def synthetic(seed: int) -> dict:
    return {"source": "synthetic", "num_images": 12, "size": 112, "num_classes": 4, "seed": seed}


def context(featurizer, data: dict) -> EvalContext:
    store = FeatureStore(featurizer, batch_size=12, progress=False)
    return EvalContext(featurizer, store, data, data, "teacher", progress=False)


def test_zeroshot_runs_on_a_teacher_with_a_text_tower(text_teachers):
    teacher = text_teachers["dfn_clip"]
    ctx = context(teacher, synthetic(0))
    task = TASKS.build("zeroshot", templates=["a photo of a {}."])
    result = task.run(ctx)
    assert result["status"] == "ok", result
    top1 = result["metrics"]["top1"]["mean"]
    # the same prediction by hand: cosine between image summaries and class prompts
    feats = ctx.features.get(synthetic(0), dense=False)
    prompts = [f"a photo of a {name}." for name in feats.class_names]
    text = F.normalize(teacher.encode_text(teacher.tokenize(prompts)), dim=-1)
    pred = (F.normalize(feats.vectors, dim=-1) @ text.T).argmax(1)
    assert 0.0 <= top1 <= 1.0
    assert top1 == pytest.approx((pred == feats.labels).float().mean().item())


def test_zeroshot_is_skipped_without_a_text_tower():
    result = TASKS.build("zeroshot").run(context(tiny("dfn_clip"), synthetic(0)))
    assert result["status"] == "skipped" and "no text tower" in result["reason"]


# ----------------------------------------------------------------------------- students


STUDENT_TEACHERS = {"clip": {"feature_dim": 64, "summary_dim": 24}, "dino": {"feature_dim": 32, "summary_dim": 32}}
TEACHER_CONFIGS = {
    "clip": {
        "family": "dfn_clip",
        "size": "tiny",
        "seed": 2,
        "text": True,
        "summary_weight": 2.0,
        "upsampler": {"name": "bilinear"},
        "phi_s": None,
    },
    "dino": {"family": "dinov2", "size": "tiny"},
}


@pytest.fixture(scope="module")
def exported_student(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("student_run")
    student = STUDENTS.build("radio", teachers=STUDENT_TEACHERS, size="tiny")
    save_student(run, student, teacher_configs=TEACHER_CONFIGS)
    return run


def test_export_stores_teacher_build_configs_but_no_teacher_weights(exported_student):
    stored = json.loads((exported_student / "model.json").read_text())["config"]["teacher_configs"]
    assert stored == {
        "clip": {"family": "dfn_clip", "size": "tiny", "seed": 2, "text": True},
        "dino": {"family": "dinov2", "size": "tiny"},
    }
    with safe_open(str(exported_student / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "text" in k or k.startswith("model.")]
    plain = load_student(exported_student)
    assert plain.text_towers == {}
    # a recipe's TeacherConfig is stored the same way as a mapping
    recipe_cfg = TeacherConfig(family="dfn_clip", size="tiny", seed=2, text=True, upsampler="bilinear")
    assert teacher_build_config(recipe_cfg) == stored["clip"]


def test_load_student_rebuilds_the_text_towers(exported_student, tmp_path):
    student = load_student(exported_student, text_towers=True)
    assert list(student.text_towers) == ["clip"]
    assert set(student.state_dict()) == set(load_student(exported_student).state_dict())
    reference = TEACHERS.build("dfn_clip", size="tiny", seed=2, text=True)
    tokens = reference.tokenize(PROMPTS)
    assert torch.equal(student.text_towers["clip"].encode_text(tokens), reference.encode_text(tokens))
    # a re-export keeps the teacher configs it was loaded with
    save_student(tmp_path, student)
    assert list(load_student(tmp_path, text_towers=True).text_towers) == ["clip"]
    # zero-shot on the student's CLIP adaptor summary
    ctx = context(student, synthetic(1))
    result = TASKS.build("zeroshot").run(ctx)
    assert result["status"] == "ok", result
    assert 0.0 <= result["metrics"]["top1"]["mean"] <= 1.0


def test_text_tower_requests_that_cannot_be_met_fail_clearly(exported_student):
    with pytest.raises(
        ValueError,
        match="'dino' \\(family 'dinov2'\\) has no text tower; families with one: dfn_clip, open_clip, siglip",
    ):
        load_student(exported_student, text_towers=["dino"])
    with pytest.raises(ValueError, match="no teacher config for 'nope'.*stored: clip, dino"):
        load_student(exported_student, text_towers="nope")
    student = load_student(exported_student)
    wrong = TEACHERS.get("siglip").build_text_tower(size="tiny")  # 48-d, the clip head is 24-d
    with pytest.raises(
        ValueError, match="text tower of 'clip' gives 48-d embeddings but the summary head 'clip' is 24-d"
    ):
        student.attach_text_towers({"clip": wrong})
    with pytest.raises(ValueError, match="no summary head 'siglip'.*teachers with one: clip, dino"):
        student.attach_text_towers({"siglip": wrong})
