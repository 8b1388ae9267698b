"""PHI-S statistics per teacher: feature mean and covariance over a recipe's data.

- :mod:`radiosharp.stats.moments`: :func:`teachers_moments` (one pass, float64, all-reduced);
- :mod:`radiosharp.stats.compute`: :func:`compute_stats` (check the recipe, compute, save);
- :mod:`radiosharp.stats.cli`: ``python -m radiosharp.stats RECIPE [dotted.key=value ...]``.
"""

from radiosharp.stats.cli import main
from radiosharp.stats.compute import compute_stats, stats_paths
from radiosharp.stats.moments import mean_eigenvalue, teacher_moments, teachers_moments

__all__ = ["compute_stats", "main", "mean_eigenvalue", "stats_paths", "teacher_moments", "teachers_moments"]
