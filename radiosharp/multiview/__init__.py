"""FeatUp's multi-view consistency: the training signal (and the fidelity metric) of upsamplers.

For an image ``x`` the upsampler gives hi-res features ``F = up(x)``. For each of V
jittered views ``T_v`` (a small zoom, shift, flip, rotation and perspective warp of
``x``) the hi-res features are warped the same way, brought down to the teacher's
grid by a learned attention downsampler, and compared with what the teacher itself
says about the warped image: ``MSE(down(T_v F), teacher(T_v x))``. An upsampler
whose features are consistent across views explains every view at once.

- :mod:`radiosharp.multiview.views`: view geometry (homographies, warps, masks);
- :mod:`radiosharp.multiview.loss`: the consistency loss and :func:`consistency_step`;
- :mod:`radiosharp.multiview.fidelity`: quality metrics and :func:`fidelity_eval`.

``NoImagesError`` and ``first_images`` live in :mod:`radiosharp.data.first` and are
re-exported here for the callers that import them from this package.
"""

from radiosharp.data.first import NoImagesError, first_images
from radiosharp.multiview.fidelity import fidelity_eval, quality_metrics
from radiosharp.multiview.loss import Downsample, consistency_step, masked_mse, multiview_loss, multiview_views
from radiosharp.multiview.views import (
    ViewConfig,
    base_crops,
    covered_mask,
    homography_grid,
    valid_mask,
    view_jitters,
    warp,
    warp_views,
)

__all__ = [
    "Downsample",
    "NoImagesError",
    "ViewConfig",
    "base_crops",
    "consistency_step",
    "covered_mask",
    "fidelity_eval",
    "first_images",
    "homography_grid",
    "masked_mse",
    "multiview_loss",
    "multiview_views",
    "quality_metrics",
    "valid_mask",
    "view_jitters",
    "warp",
    "warp_views",
]
