"""Eval pictures: the `eval mtl` bar chart and table image, the significance column, metric vs factor."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from matplotlib.container import BarContainer
from PIL import Image

from radiosharp.eval import cli
from radiosharp.eval.mtl import mtl_gain
from radiosharp.eval.plots import delta_bar_figure, metric_vs_factor_plot, table_figure
from radiosharp.eval.report import markdown_table, table
from radiosharp.eval.task import skipped, summarize

DIRS = {"top1": True, "miou": True, "rmse": False}


def result(**metrics):
    return summarize(metrics, DIRS)


BASE = {
    "knn": result(top1=[0.40, 0.41, 0.39]),  # std 0.01 -> spread 2.5 %
    "semseg": result(miou=[0.30, 0.31, 0.29]),  # spread 3.33 %
    "depth": result(rmse=[1.00, 1.02, 0.98]),  # spread 2 %
    "zeroshot": skipped("no text tower"),
}
NEW = {
    "knn": result(top1=[0.60, 0.61, 0.59]),  # +50 %: far beyond the spread
    "semseg": result(miou=[0.33, 0.34, 0.32]),  # +10 %
    "depth": result(rmse=[0.995, 1.015, 0.975]),  # +0.5 %: within the spread
    "zeroshot": skipped("no text tower"),
}
OTHER = {
    "knn": result(top1=[0.404, 0.414, 0.394]),  # +1 %: within
    "semseg": result(miou=[0.27, 0.28, 0.26]),  # -10 %: a real loss
    "depth": result(rmse=[1.5, 1.52, 1.48]),  # -50 %
    "zeroshot": skipped("no text tower"),
}


def rows():
    return [
        {"run": "runs/base", "tasks": BASE, "mtl": None},
        {"run": "runs/new", "tasks": NEW, "mtl": mtl_gain(NEW, BASE)},
        {"run": "runs/other", "tasks": OTHER, "mtl": mtl_gain(OTHER, BASE)},
    ]


def test_significance_against_the_seed_spread():
    gain = mtl_gain(NEW, BASE)
    assert gain["task_deltas"]["knn"] == pytest.approx(50.0)
    assert gain["task_spreads"]["knn"] == pytest.approx(2.5)
    assert gain["task_spreads"]["depth"] == pytest.approx(2.0)
    assert gain["significant"] == {"knn": True, "semseg": True, "depth": False, "delta_m": True}
    assert gain["delta_m_spread"] == pytest.approx((2.5 + 100 / 30 + 2.0) / 3)
    other = mtl_gain(OTHER, BASE)
    assert other["significant"]["knn"] is False and other["significant"]["depth"] is True  # a real loss counts
    # a single seed has no spread: significance unknown, shown as n/a
    one = {"knn": result(top1=[0.4])}
    single = {"knn": result(top1=[0.6])}
    lone = mtl_gain(single, one)
    assert lone["task_spreads"]["knn"] is None and lone["significant"] == {"knn": None, "delta_m": None}

    header, cells = table(rows())
    assert header[-4:] == ["δ depth %", "sig depth", "Δm %", "sig Δm"]
    new = dict(zip(header, cells[1]))
    assert new["sig knn"] == "yes" and new["sig semseg"] == "yes" and new["sig depth"] == "no"
    assert new["sig Δm"] == "yes" and new["δ knn %"] == "+50.00"
    assert dict(zip(header, cells[0]))["sig knn"] == "-"  # the baseline row
    header, cells = table([{"run": "b", "tasks": one, "mtl": None}, {"run": "x", "tasks": single, "mtl": lone}])
    assert dict(zip(header, cells[1]))["sig knn"] == "n/a" and dict(zip(header, cells[1]))["sig Δm"] == "n/a"


def test_delta_bar_figure_has_a_bar_per_task_per_run_with_spread_error_bars():
    fig = delta_bar_figure(rows())
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 2  # 3 tasks with a delta (zeroshot skipped) x 2 compared runs
    assert [t.get_text() for t in ax.get_xticklabels()] == ["knn", "semseg", "depth"]
    new_bars, other_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [new_bars.get_label(), other_bars.get_label()] == ["new", "other"]
    assert [b.get_height() for b in new_bars] == pytest.approx([50.0, 10.0, 0.5])
    assert [b.get_height() for b in other_bars] == pytest.approx([1.0, -10.0, -50.0])
    # error bars: half-length = the task's seed spread
    segments = new_bars.errorbar.lines[2][0].get_segments()
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    assert half == pytest.approx([2.5, 100 / 30, 2.0])
    assert "Δm" in ax.get_title() and "new" in ax.get_title() and "other" in ax.get_title()
    dm = mtl_gain(NEW, BASE)["delta_m"]
    assert f"{dm:+.2f}" in ax.get_title()
    assert any(line.get_ydata()[0] == 0 for line in ax.lines)  # the zero line


def test_mtl_cli_writes_and_links_the_pictures(tmp_path, monkeypatch, capsys):
    results = {"base": BASE, "new": NEW, "other": OTHER}

    class Settings:
        def model_dump(self, mode="json"):
            return {"tasks": {"knn": {}}}

    monkeypatch.setattr(cli, "check_run", lambda run: "student")
    monkeypatch.setattr(cli, "read_run_settings", lambda run: Settings())
    monkeypatch.setattr(cli, "_tasks", lambda settings, kind, args: {task: {} for task in BASE})
    monkeypatch.setattr(cli, "_evaluate", lambda plan, *a: {r: results[r.split("/")[-1]] for r in plan})
    base, new, other = (str(tmp_path / n) for n in ("base", "new", "other"))
    assert cli.main(["mtl", new, other, "--baseline", base, "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    report = tmp_path / "new" / "eval" / "mtl_report.md"
    assert out["report"] == str(report)
    bars, tab = report.with_name("mtl_report_deltas.png"), report.with_name("mtl_report_table.png")
    assert out["pictures"] == [str(bars), str(tab)]
    assert out["runs"][1]["mtl"]["significant"]["knn"] is True  # the JSON has the significance too
    text = report.read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert links == ["mtl_report_deltas.png", "mtl_report_table.png"]  # relative, beside the report
    for png in (bars, tab):
        image = np.asarray(Image.open(png))
        h, w = image.shape[:2]
        assert 150 <= h <= 2000 and 300 <= w <= 4000, (png.name, w, h)
        assert image[..., :3].std() > 5  # not blank
    # the table picture: the markdown table's rows and columns
    md = markdown_table(cli_rows := out["runs"])
    assert md in text
    header, cells = table(cli_rows)
    fig = table_figure(header, cells)
    cell_text = {k: c.get_text().get_text() for k, c in fig.axes[0].tables[0].get_celld().items()}
    assert [cell_text[0, j] for j in range(len(header))] == header
    assert [[cell_text[i + 1, j] for j in range(len(header))] for i in range(len(cells))] == cells
    sig = header.index("sig depth")
    assert [r[sig] for r in cells] == ["-", "no", "yes"]


def test_metric_vs_factor_plot_draws_a_line_per_method(tmp_path):
    rows = [
        {"method": m, "factor": f, "fidelity": [base + f * slope + s * 0.1 for s in range(3)]}
        for m, base, slope in (("bilinear", 1.0, 0.1), ("featsharp", 2.0, 0.3), ("jafar", 1.5, 0.2))
        for f in (8, 2, 4)
    ] + [{"method": "featsharp", "factor": 16, "fidelity": 9.0}, {"method": "none", "factor": 2, "tv": [1.0]}]
    out = tmp_path / "fig" / "fidelity.png"
    fig = metric_vs_factor_plot(rows, "fidelity", out)
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert set(lines) == {"bilinear", "featsharp", "jafar"}  # "none" has no fidelity
    assert list(lines["bilinear"].get_xdata()) == [2, 4, 8]
    assert list(lines["featsharp"].get_xdata()) == [2, 4, 8, 16]
    assert lines["bilinear"].get_ydata()[0] == pytest.approx(1.0 + 0.2 + 0.1)  # mean over seeds
    caps = ax.containers[0].lines[2][0].get_segments()
    assert (caps[0][1][1] - caps[0][0][1]) / 2 == pytest.approx(0.1)  # ± std over seeds
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2x", "4x", "8x", "16x"]
    image = np.asarray(Image.open(out))
    assert image.shape[0] >= 200 and image.shape[1] >= 300 and not math.isnan(image.std())
    with pytest.raises(ValueError, match="no row"):
        metric_vs_factor_plot(rows, "nope", tmp_path / "x.png")
