"""What ``python -m radiosharp.reproduce`` trains and measures: one :class:`Plan`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "reproduce"
SECTIONS = (
    "fidelity",
    "debias",
    "agreement",
    "semseg",
    "protocols",
    "comparison",
    "cost",
    "upsampler_cost",
    "upsampler_cost_448",
    "student",
    "health",
    "ablation",
    "bounded",
    "downsample",
)
# the sections that train and probe the student (the quick plan has none)
STUDENT_SECTIONS = ("student", "health", "ablation")
METHODS = ("bilinear", "featup", "tiles", "s2", "featsharp")
LABELS = {
    "bilinear": "bilinear",
    "featup": "FeatUp (JBU)",
    "tiles": "tiles",
    "s2": "bilinear+tiles (S2)",
    "featsharp": "FeatSharp (JBU+tiles)",
    "featsharp_jafar": "FeatSharp (JAFAR+tiles)",
    "jafar": "JAFAR",
    "loftup": "LoftUp",
    "naf": "NAF",
    "anyup": "AnyUp",
}
# the objective each method's own paper trains with (the others: multi-view consistency)
OWN_OBJECTIVE = {"jafar": "low_to_high", "naf": "low_to_high", "anyup": "crop_hires", "loftup": "hires_teacher"}
COMPARISON_METHODS = ("bilinear", "featup", "featsharp", "featsharp_jafar", "jafar", "loftup", "naf", "anyup")


class BoundedRun(BaseModel):
    """One teacher of the ``bounded`` section, with the upsamplers and factors measured on it."""

    model_config = ConfigDict(extra="forbid")
    teacher: str
    methods: tuple[str, ...]
    factors: tuple[int, ...]


class Plan(BaseModel):
    """Every knob of a reproduction; :func:`full_plan` and :func:`quick_plan` are the two presets."""

    model_config = ConfigDict(extra="forbid")
    name: str
    out: Path = Path("runs/reproduce")
    methods: tuple[str, ...] = METHODS
    factors: tuple[int, ...] = (2, 4)
    seeds: tuple[int, ...] = (0, 1)
    debias_methods: tuple[str, ...] = ("featup", "featsharp")
    debias_factor: int = 2
    steps: int = Field(default=64, ge=1)
    batch_size: int = Field(default=2, ge=1)
    train_crops: int = Field(default=32, ge=1)  # random crops per training photo
    heldout_crops: int = Field(default=3, ge=1)  # crops per held-out photo for the fidelity score
    stats_images: int = Field(default=192, ge=1)
    native_size: int = 112  # the teacher's input side (8x8 patches): a CPU can train every upsampler
    semseg_factors: tuple[int, ...] = (2, 4)
    semseg_teacher_inputs: tuple[int, ...] = (1, 2)
    semseg_images: tuple[int, int] = (64, 32)  # synthetic train / val scenes
    semseg_steps: int = 200
    semseg_seeds: int = 3
    cost_factors: tuple[int, ...] = (2, 3, 4)
    cost_native_size: int = 448  # the paper's 1x for DINOv2 (32x32 patches)
    cost_repeats: int = 2
    comparison_methods: tuple[str, ...] = COMPARISON_METHODS
    comparison_objectives: tuple[str, ...] = ("multiview", "low_to_high", "crop_hires", "hires_teacher")
    comparison_grid_factors: tuple[int, ...] = (2,)  # every trainable method x every objective
    comparison_factors: tuple[int, ...] = (2, 4)  # elsewhere: multiview and the method's own objective
    comparison_semseg: bool = True  # probe the seed-0 run of multiview and the own objective
    upsampler_cost_factors: tuple[int, ...] = (2, 4, 8, 16)
    upsampler_cost_grid: int = 8  # low-res side in patches: 112 px, 16x = a 128x128 output
    # NAF's own setting: a 448 px input (32x32 patches) at the widths of ViT-S (384) and ViT-L (1024);
    # random weights (time and memory do not depend on them); 16x at 448 px does not fit this machine
    upsampler_cost_448_teachers: tuple[str, ...] = (
        "{family: dinov2, source: hf, model: facebook/dinov2-small, size: random, native_size: 448}",
        "{family: dinov2, size: random, native_size: 448}",
    )
    upsampler_cost_448_factors: tuple[int, ...] = (2, 4, 8)
    upsampler_cost_448_repeats: int = 1
    upsampler_cost_448_teacher_max_factor: int = 2  # the teacher itself at u x input, up to this u
    # bounded vs unbounded upsampler calls: SAM-H (ViT-H/16, 1280 channels, 1024 px) with the local
    # upsamplers at 4x (its tile upsamplers would run ViT-H 16 times a call), and DINOv2-L at 224 px
    bounded_runs: tuple[BoundedRun, ...] = (
        BoundedRun(teacher="{family: sam, size: random}", methods=("bilinear", "featup"), factors=(4,)),
        BoundedRun(
            teacher="{family: dinov2, size: random, native_size: 224}",
            methods=("bilinear", "featup", "featsharp", "naf", "jafar"),
            factors=(4, 8),
        ),
    )
    bounded_budget_mb: float = 512.0
    downsample_shapes: tuple[str, ...] = ("vits_48to12", "vits_24to12", "vitl_64to16")
    downsample_repeats: int = 3
    student: bool = True
    ablation_seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of each stage-3 variant
    overrides: tuple[str, ...] = ()  # extra dotted overrides for every upsampler run

    def upsampler_overrides(self) -> list[str]:
        return [
            f"train.steps={self.steps}",
            f"train.batch_size={self.batch_size}",
            f"data.crops={self.train_crops}",
            f"eval_data.crops={self.heldout_crops}",
            f"upsampler_training.heldout_images={4 * self.heldout_crops}",
            f"teachers.dinov2.native_size={self.native_size}",
            *self.overrides,
        ]


def full_plan() -> Plan:
    return Plan(name="full")


def quick_plan() -> Plan:
    """A minute-long version of one row of every asked-for section (for tests and smoke runs)."""
    return Plan(
        name="quick",
        out=Path("runs/reproduce_quick"),
        methods=("bilinear", "featsharp"),
        factors=(2,),
        seeds=(0,),
        debias_methods=("featsharp",),
        steps=2,
        batch_size=2,
        train_crops=1,
        heldout_crops=1,
        stats_images=8,
        native_size=56,
        semseg_factors=(2,),
        semseg_teacher_inputs=(1,),
        semseg_images=(8, 4),
        semseg_steps=5,
        semseg_seeds=1,
        cost_factors=(2,),
        cost_native_size=56,
        cost_repeats=1,
        comparison_methods=("bilinear", "jafar"),
        comparison_objectives=("multiview", "crop_hires"),
        comparison_factors=(2,),
        upsampler_cost_factors=(2,),
        upsampler_cost_grid=2,
        upsampler_cost_448_teachers=("{family: dinov2, size: tiny, native_size: 56}",),
        upsampler_cost_448_factors=(2,),
        upsampler_cost_448_teacher_max_factor=0,
        bounded_runs=(
            BoundedRun(
                teacher="{family: dinov2, size: tiny, native_size: 56}", methods=("bilinear", "featup"), factors=(2,)
            ),
        ),
        bounded_budget_mb=1.0,
        downsample_shapes=("tiny_8to4",),
        downsample_repeats=1,
        student=False,
    )
