"""RADIO as a teacher: NVlabs RADIO / C-RADIO through torch.hub, or a radiosharp student run.

- ``summary`` = RADIO's backbone summary: the summary (class) tokens of the teachers it
  was trained with, concatenated (``RadioOutput.summary``, e.g. 3 x 1280 for RADIOv2.5-H),
  or, with ``adaptor: NAME``, that teacher adaptor's summary.
- ``features`` = the backbone's patch tokens (after its final norm and, for models that
  ship one, RADIO's feature normalizer), ``[B, C, H/p, W/p]``; with ``adaptor``, that
  adaptor's features.

RADIO takes images in [0, 1] and applies its own input conditioner (mean/std), so this
teacher's ``normalize`` is the identity. Any multiple of the patch size works (RADIO's
CPE); ``native_size`` defaults to the model's preferred resolution.

Sources:

- ``hub`` (real): ``torch.hub.load(repo, "radio_model", version=...)`` with ``repo``
  ``NVlabs/RADIO`` (or a local clone of it) and ``version`` one of RADIO's names
  (``radio_v2.5-l``, ``c-radio_v3-l``, ...) or ``weights:`` a local RADIO checkpoint
  (``*.pth.tar``, read by RADIO's own hub code, which unpickles its training args: use
  checkpoints from NVIDIA only). Both the hub code and the checkpoint come from the
  torch.hub cache (``torch.hub.get_dir()``) when present, else are downloaded.
- ``run`` (real): ``model:`` a radiosharp student run folder (``model.safetensors`` +
  ``model.json``): our own RADIO-style student as a teacher.

``size: tiny`` (either source) is our own RADIO student (``students/radio.py``) at tiny
dims with two summary tokens, seeded: it runs the same code as ``source: run``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from radiosharp.contracts import TeacherOutput
from radiosharp.registry import STUDENTS, TEACHERS
from teachers._contract import (
    FINAL_LAYER,
    SIZES,
    FrozenTeacher,
    WeightOptions,
    check_choice,
    check_layer,
    resolve_native_size,
)
from teachers._hub import missing_weights

FAMILY = "radio"
SOURCES = ("hub", "run")
DEFAULT_REPO = "NVlabs/RADIO"
DEFAULT_VERSION = "radio_v2.5-l"
TINY_NATIVE = 128
RUN_NATIVE = 512  # a student run does not record the size it was trained at
# The tiny student's "teachers": two summary tokens (as RADIO has one per teacher) and heads.
TINY_TEACHERS = {"clip": {"feature_dim": 48, "summary_dim": 24}, "dino": {"feature_dim": 32, "summary_dim": 32}}
IDENTITY_MEAN, IDENTITY_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

log = logging.getLogger(__name__)


def _check_adaptor_layer(adaptor: str | None, layer: int) -> None:
    if adaptor is not None and layer != FINAL_LAYER:
        raise ValueError(f"{FAMILY}: adaptor '{adaptor}' reads the last block; use layer: -1 with an adaptor")


class StudentRadioTeacher(FrozenTeacher):
    """A radiosharp RADIO student (``students/radio.py``) used as a frozen teacher."""

    name = FAMILY

    def __init__(self, student: nn.Module, native_size: int, adaptor: str | None = None, layer: int = -1) -> None:
        super().__init__(IDENTITY_MEAN, IDENTITY_STD)  # the student applies its own mean/std
        _check_adaptor_layer(adaptor, layer)
        names = list(student.teacher_names)
        if adaptor is not None and adaptor not in names:
            raise ValueError(f"{FAMILY}: no adaptor '{adaptor}'; the student's adaptors: {', '.join(names)}")
        self.model = student
        self.adaptor = adaptor
        self.patch_size = int(student.patch_size)
        self.native_size = native_size
        self.num_blocks = check_layer(FAMILY, layer, len(student.blocks)) + 1
        final = self.num_blocks == len(student.blocks)
        if adaptor is None:
            self.embed_dim = int(student.embed_dim)
            self.summary_dim = student.num_summary_tokens * self.embed_dim if final else None
        else:
            heads = student.adaptors[adaptor]
            self.embed_dim = int(heads.features.final[-1].out_features)
            self.summary_dim = student.summary_dims[adaptor]

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        if self.adaptor is not None:
            out = self.model(pixels)
            return TeacherOutput(out.summary.get(self.adaptor), out.features[self.adaptor])
        tokens, (rows, cols) = self.model.forward_tokens(pixels, num_blocks=self.num_blocks)
        patches = tokens[:, self.model.num_prefix_tokens :]
        features = patches.transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)
        summary = None if self.summary_dim is None else tokens[:, : self.model.num_summary_tokens].flatten(1)
        return TeacherOutput(summary, features)


class HubRadioTeacher(FrozenTeacher):
    """A frozen NVlabs ``RADIOModel`` from torch.hub (its input conditioner applies mean/std)."""

    name = FAMILY

    def __init__(self, model: nn.Module, native_size: int, adaptor: str | None = None, layer: int = -1) -> None:
        super().__init__(IDENTITY_MEAN, IDENTITY_STD)
        _check_adaptor_layer(adaptor, layer)
        self.model = model
        self.adaptor = adaptor
        self.patch_size = int(model.patch_size)
        self.native_size = native_size
        blocks = list(model.blocks or [])
        self.block_index = check_layer(FAMILY, layer, len(blocks))
        self.final_layer = self.block_index == len(blocks) - 1
        with torch.no_grad():  # the output widths (an adaptor's are known only by running it)
            probe = self.extract(torch.zeros(1, 3, 2 * self.patch_size, 2 * self.patch_size))
        self.embed_dim = int(probe.features.shape[1])
        self.summary_dim = None if probe.summary is None else int(probe.summary.shape[-1])

    def extract(self, pixels: torch.Tensor) -> TeacherOutput:
        if not self.final_layer:
            (features,) = self.model.forward_intermediates(
                pixels,
                indices=[self.block_index],
                norm=True,
                stop_early=True,
                output_fmt="NCHW",
                intermediates_only=True,
            )
            return TeacherOutput(None, features)
        out = self.model(pixels, feature_fmt="NCHW")
        if isinstance(out, dict):
            out = out[self.adaptor or "backbone"]
        summary, features = out[0], out[1]
        return TeacherOutput(summary, features)


def load_hub_radio(repo: str, version: str, adaptor: str | None) -> nn.Module:
    """``torch.hub.load(repo, "radio_model", version=...)``: RADIO's code and weights, cache first."""
    local = Path(repo).is_dir()
    what = f"RADIO '{version}' from torch.hub '{repo}'"
    try:
        return torch.hub.load(
            repo,
            "radio_model",
            version=version,
            progress=False,
            adaptor_names=[adaptor] if adaptor else None,
            source="local" if local else "github",
            skip_validation=True,
            trust_repo=True,
        )
    except (OSError, RuntimeError) as err:  # no network, no cached code or checkpoint
        raise missing_weights(
            FAMILY,
            what,
            None,
            str(Path(torch.hub.get_dir())),
            f"{type(err).__name__}: {err}"
            + (
                ""
                if local
                else "; clone https://github.com/NVlabs/RADIO where there is internet and set `repo:` to the clone, "
                "and its checkpoint as `weights:`"
            ),
        ) from err


def _tiny_student(seed: int) -> nn.Module:
    return STUDENTS.build("radio", size="tiny", teachers=TINY_TEACHERS, seed=seed)


def _run_student(run: str) -> nn.Module:
    from radiosharp.student_io import load_student

    if not (Path(run) / "model.json").is_file():
        raise FileNotFoundError(f"{FAMILY}: source: run needs `model:` a student run folder with model.json; got {run}")
    return load_student(run)


@TEACHERS.register(FAMILY)
def build_radio_teacher(
    common: WeightOptions,
    source: Literal["hub", "run"] = "hub",
    model: str = DEFAULT_VERSION,
    repo: str = DEFAULT_REPO,
    adaptor: str | None = None,
    layer: int = -1,
) -> FrozenTeacher:
    """RADIO (``teachers.<key>.family: radio``) as a frozen teacher.

    - ``size``: ``real`` or ``tiny`` (our RADIO student at tiny dims: width 64, 4 blocks,
      patch 16, two summary tokens ``clip`` and ``dino`` with adaptor heads, 128 px, seeded).
      ``random`` is refused: RADIO's architecture comes from its checkpoint's training args.
    - ``source``: ``hub`` (``model:`` a RADIO version name, default ``radio_v2.5-l``; or
      ``weights:`` a local RADIO checkpoint) or ``run`` (``model:`` a radiosharp student run).
    - ``repo``: the torch.hub repo (``NVlabs/RADIO``) or a local clone of it.
    - ``adaptor``: a teacher adaptor of the model (RADIO's ``adaptor_names``, e.g. ``clip``,
      ``siglip``, ``dino_v2``; a student run's teacher names); None: the backbone outputs.
    - ``native_size``: the input side (default: the model's preferred resolution; 128 tiny).
    - ``seed``: the random weights of ``size: tiny``.
    - ``layer``: the block whose patch tokens are the features (``-1``: the last, as without
      the option), after the backbone's final norm (RADIO's ``forward_intermediates(norm=True)``);
      an intermediate layer gives no summary and takes no adaptor.
    """
    size, weights, native_size = common.size, common.weights, common.native_size
    check_choice(FAMILY, "size", size, SIZES)
    check_choice(FAMILY, "source", source, SOURCES)
    if size == "random":
        raise ValueError(f"{FAMILY}: size=random is not available (the architecture is in the checkpoint); use tiny")
    _check_adaptor_layer(adaptor, layer)
    if size == "tiny" or source == "run":
        student = _tiny_student(common.seed) if size == "tiny" else _run_student(model)
        default = TINY_NATIVE if size == "tiny" else RUN_NATIVE
        native = resolve_native_size(FAMILY, native_size, default, int(student.patch_size))
        return StudentRadioTeacher(student.float(), native, adaptor, layer).freeze()
    net = load_hub_radio(repo, str(weights) if weights else model, adaptor).float()
    preferred = getattr(net, "preferred_resolution", None)
    default = int(preferred[0]) if preferred is not None else 512
    native = resolve_native_size(FAMILY, native_size, default, int(net.patch_size))
    log.info("radio teacher: %s, patch %d, native %d", weights or model, net.patch_size, native)
    return HubRadioTeacher(net, native, adaptor, layer).freeze()
