"""Student health diagnostics (``python -m radiosharp.eval health RUN``).

Three checks of an exported student over a ladder of input sizes (default 224, 448, 672,
896, 1024), on the packaged real photographs (:mod:`radiosharp.data.photos`: the four
held-out ones first, then the training ones, ``images`` of them) or on the synthetic
benchmark:

- **Mode switching** (RADIO Amplified, arXiv 2412.07679): for each size ``s`` and teacher,
  the MSE of the student's adaptor features at ``s`` against

  * *teacher*: that teacher's features of the same image, the teacher run at its native
    size (the student's ``s x s`` pixels resized to ``native x native`` with
    :func:`radiosharp.images.resize`, bilinear, antialiased when shrinking) and its
    feature map resized to the student's ``s/p x s/p`` grid with the same resize (the
    training loss's resize, ``trainers/distill.feature_loss``);
  * *low-res*: the student's own output at the lowest size, upsampled bilinearly
    (``align_corners=False``) to the grid of ``s``: zero at the lowest size by definition.

  Each is reported raw (``mse``) and divided by the teacher's mean per-channel feature
  variance at that size (``nmse``: the PHI-S-space MSE that training minimizes, so 1.0 is
  "as far as predicting the mean"). A student that switches mode at high resolution shows
  the *teacher* curve rising while the *low-res* one stays low, or the reverse.
  The teachers are rebuilt from the configs the export records (``model.json``
  ``teacher_configs``), else from the run's ``recipe.yaml`` ``teachers:``; the teacher's
  upsampler, if it had one in training, is not used. If no teacher can be built, this
  part is skipped with the reason and the others still run.
- **High-norm outlier tokens** (RADIO issue #174 reports them in C-RADIOv4): per size,
  the fraction of backbone tokens whose L2 norm exceeds ``median + k * MAD`` of that
  image's token norms (median absolute deviation, unscaled; ``k`` = :data:`OUTLIER_K` = 6
  by default), and the largest ratio of a token's norm to its image's median norm.
- **Tile-seam energy** (the grid pattern of Tile/S2-trained students, FeatSharp figure 8):
  for ``t`` in :data:`TILE_COUNTS` (2, 3, 4) the mean squared difference between adjacent
  tokens across the tile boundaries (token offsets ``round(k * n / t)``, ``k = 1..t-1``,
  along both axes of an ``n x n`` map), divided by the same mean at the other offsets within
  :data:`SEAM_WINDOW` (2) tokens of a boundary (a local baseline: photos put their subject
  in the middle, where the t=2 boundary is). A ratio near 1 means no seams; a tile-trained
  student's seams give ratios well above 1. Measured on the backbone and on each teacher's
  adaptor features, and on the input pixels average-pooled to the grid (``pixels``: what
  the content alone gives, to read the others against).

Results go to ``RUN/eval/health.json`` (or ``--out``) with three pictures beside it:
``health_mode_switch.png`` (a panel per teacher, both curves over size),
``health_outliers.png`` (the backbone norm map of the first image at each size, outliers
ringed) and ``health_seams.png`` (seam ratio over ``t`` per map and size, and the
adjacent-difference energy profile at the largest size with the tile boundaries marked).
"""

from __future__ import annotations

from radiosharp.eval.health.checks import (
    BACKBONE,
    DEFAULT_SIZES,
    LOW_RES_RESIZE,
    PIXELS,
    TEACHER_RESIZE,
    check_sizes,
    student_health,
)
from radiosharp.eval.health.figures import PICTURES, mode_switch_figure, outliers_figure, seams_figure, write_pictures
from radiosharp.eval.health.run import HEALTH_FILE, health_table, run_health
from radiosharp.eval.health.sources import (
    DATA_SOURCES,
    DEFAULT_IMAGES,
    ImageSource,
    build_recorded_teachers,
    image_source,
    recorded_teacher_configs,
    teacher_recipe_upsamplers,
)
from radiosharp.eval.health.stats import (
    OUTLIER_K,
    SEAM_WINDOW,
    TILE_COUNTS,
    boundary_offsets,
    difference_profile,
    outlier_mask,
    outlier_stats,
    seam_ratio_from_profiles,
    seam_ratios,
)

__all__ = [
    "BACKBONE",
    "DATA_SOURCES",
    "DEFAULT_IMAGES",
    "DEFAULT_SIZES",
    "HEALTH_FILE",
    "LOW_RES_RESIZE",
    "OUTLIER_K",
    "PICTURES",
    "PIXELS",
    "SEAM_WINDOW",
    "TEACHER_RESIZE",
    "TILE_COUNTS",
    "ImageSource",
    "boundary_offsets",
    "build_recorded_teachers",
    "check_sizes",
    "difference_profile",
    "health_table",
    "image_source",
    "mode_switch_figure",
    "outlier_mask",
    "outlier_stats",
    "outliers_figure",
    "recorded_teacher_configs",
    "run_health",
    "seam_ratio_from_profiles",
    "seam_ratios",
    "seams_figure",
    "student_health",
    "teacher_recipe_upsamplers",
    "write_pictures",
]
