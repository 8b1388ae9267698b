"""``zeroshot``: CLIP-style zero-shot classification, when the featurizer has a text tower.

A featurizer offers a text tower by having ``encode_text(tokens) -> [K,Ds]`` plus a
``tokenize(list[str])`` (or ``tokenizer``) callable — a CLIP teacher, or an upsampled
teacher whose inner ``teacher`` has them — or, for a student, a mapping
``text_towers = {teacher name: tower}`` whose adaptor summary ``summary[name]`` lives
in that tower's embedding space. Anything else is skipped with the reason recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from radiosharp.eval.features import AUTO
from radiosharp.eval.metrics import top1_accuracy
from radiosharp.eval.task import EvalContext, EvalTask, TaskSkipped
from radiosharp.registry import TASKS


def _tokenizer(obj: Any) -> Callable | None:
    for attr in ("tokenize", "tokenizer"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return fn
    return None


def find_text_tower(featurizer: Any, adaptor: str | None) -> tuple[Any, str]:
    """``(tower, summary source)``; raises TaskSkipped with the reason when there is none."""
    towers = getattr(featurizer, "text_towers", None)
    if towers:
        if adaptor is None:
            adaptor = next(iter(towers))
        if adaptor not in towers:
            raise TaskSkipped(f"zeroshot: adaptor '{adaptor}' has no text tower; valid: {', '.join(towers)}")
        return towers[adaptor], adaptor
    for obj in (featurizer, getattr(featurizer, "teacher", None)):
        if obj is not None and callable(getattr(obj, "encode_text", None)) and _tokenizer(obj) is not None:
            return obj, AUTO
    raise TaskSkipped(
        "zeroshot: the featurizer has no text tower (needs encode_text + tokenize, "
        "or a student with text_towers for a CLIP adaptor)"
    )


TEMPLATE_SETS = ("openai", "simple")


def prompt_templates(templates: str | Sequence[str]) -> list[Callable[[str], str]]:
    """The prompt templates: a preset name, or format strings with one ``{}`` for the class name.

    Presets come from open_clip's zero-shot metadata: ``openai``, the 80 ImageNet prompts of the
    CLIP paper (the ensemble open_clip's and RADIO's ImageNet zero-shot evals use), and
    ``simple``, open_clip's 7-prompt subset."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"templates '{templates}' is not valid; valid: {', '.join(TEMPLATE_SETS)} or a list")
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        chosen = OPENAI_IMAGENET_TEMPLATES if templates == "openai" else SIMPLE_IMAGENET_TEMPLATES
        return list(chosen)
    out = []
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"a prompt template needs exactly one '{{}}' for the class name, got {template!r}")
        out.append(template.format)
    if not out:
        raise ValueError("templates is empty; give a preset (openai, simple) or format strings")
    return out


@torch.no_grad()
def class_embeddings(tower: Any, class_names: Sequence[str], templates: str | Sequence[str]) -> torch.Tensor:
    """[K,Ds] L2-normalised text embeddings, averaged over the prompt templates (:func:`prompt_templates`)."""
    tokenize = _tokenizer(tower)
    per_template = []
    for template in prompt_templates(templates):
        tokens = tokenize([template(name) for name in class_names])
        per_template.append(F.normalize(tower.encode_text(tokens).float().cpu(), dim=-1))
    return F.normalize(torch.stack(per_template).mean(0), dim=-1)


class ZeroShotTask(EvalTask):
    name = "zeroshot"
    metrics = {"top1": True}

    def __init__(self, data: dict[str, Any] | None, adaptor: str | None, templates: str | Sequence[str]) -> None:
        prompt_templates(templates)  # a bad preset or template fails when the settings are read
        self.data, self.adaptor = data, adaptor
        self.templates = templates if isinstance(templates, str) else list(templates)

    def evaluate(self, ctx: EvalContext) -> dict[str, list[float]]:
        tower, summary = find_text_tower(ctx.featurizer, self.adaptor)
        data = self.data or ctx.default_val_data or ctx.default_data
        feats = ctx.features.get(data, dense=False, summary=summary)
        labels = feats.require("labels", self.name, data)
        if not feats.class_names:
            raise TaskSkipped(f"zeroshot: the data {dict(data)} has no class names (.classes / .class_names)")
        text = class_embeddings(tower, feats.class_names, self.templates)
        if text.shape[1] != feats.vectors.shape[1]:
            raise ValueError(
                f"zeroshot: text embeddings have {text.shape[1]} dims but the image summary "
                f"has {feats.vectors.shape[1]}; pick the CLIP adaptor with adaptor=<name>"
            )
        pred = (F.normalize(feats.vectors, dim=-1) @ text.T).argmax(1)
        return {"top1": [top1_accuracy(pred, labels)]}


@TASKS.register("zeroshot")
def build_zeroshot(
    data: dict[str, Any] | None = None, adaptor: str | None = None, templates: str | Sequence[str] = "openai"
) -> ZeroShotTask:
    """Zero-shot top-1 on labelled ``data`` with class names (default: the val data): cosine of the
    image summary to each class's text embedding averaged over ``templates`` (default the CLIP
    paper's 80 ImageNet prompts, as RADIO's suite runs it; ``simple``: 7; or format strings)."""
    return ZeroShotTask(data, adaptor, templates)
