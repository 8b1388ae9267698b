"""``python -m radiosharp.bench``: what upsampling and distillation cost.

- ``upsample --teacher CFG --factors 2 3 4``: time and peak memory of the teacher at
  ``u x`` input, of bilinear, featup and featsharp (teacher calls included and
  excluded), their ratios to the hi-res teacher, the factor where featsharp gets
  cheaper (paper eq. 6 / fig. 14), and images/s of a multi-view training step
  (:mod:`radiosharp.bench.upsample`).
- ``upsample --table naf --teacher CFG``: the NAF paper's benchmark table for EVERY
  registered upsampler alone (teacher excluded) at 2, 4, 8, 16x: parameters, forward and
  forward+backward time and peak memory, and their ratios to bilinear measured in the
  same round-robin run; a method that fails at a size gets a failed row with the reason
  (:mod:`radiosharp.bench.upsampler_cost`; ``--grid`` sets the low-res grid, 8 patches
  by default for a CPU).
- ``attention``: the neighbourhood-attention backends (row-tiled reference, the first kernel,
  compiled ``flex_attention``, the Triton kernels on CUDA) side by side at the JBU and FeatSharp
  block shapes: time and peak memory, forward and forward+backward, as ratios from one round-robin run
  (:mod:`radiosharp.bench.attention`).
- ``train RECIPE [k=v ...]``: images/s of a distillation step per partition and the
  share of step time in teachers, upsamplers, student forward and backward
  (:mod:`radiosharp.bench.train`).
- ``profile RECIPE [k=v ...]``: :mod:`torch.profiler` over training steps of any kind: the
  ops by self time, host syncs, copies and teacher calls per step, and a Chrome trace
  (:mod:`radiosharp.bench.profile`).
- ``bounded --teacher CFG``: each upsampler with and without a memory budget (the chunked call of
  ``max_memory_mb``) side by side: time, peak memory, and the largest difference between the two
  outputs (:mod:`radiosharp.bench.bounded`).
- ``downsample``: the attention downsampler's one-unfold window path against its tap-by-tap loop,
  forward and forward+backward (:mod:`radiosharp.bench.downsample`).

How time and memory are measured: :mod:`radiosharp.bench.measure`. Benchmarks live
here, not in timed tests.
"""

from radiosharp.bench.bounded import bench_bounded
from radiosharp.bench.crossover import crossover
from radiosharp.bench.downsample import bench_downsample
from radiosharp.bench.measure import Cost, measure
from radiosharp.bench.train import bench_train
from radiosharp.bench.upsample import ReplayFeaturize, bench_upsample
from radiosharp.bench.upsampler_cost import bench_upsampler_cost, upsampler_cost_markdown

__all__ = [
    "Cost",
    "ReplayFeaturize",
    "bench_bounded",
    "bench_downsample",
    "bench_train",
    "bench_upsample",
    "bench_upsampler_cost",
    "crossover",
    "measure",
    "upsampler_cost_markdown",
]
