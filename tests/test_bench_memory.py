"""``python -m radiosharp.bench bounded`` and ``downsample``, and their reproduce sections."""

from __future__ import annotations

import json

from radiosharp.bench.cli import main as bench_main
from radiosharp.reproduce.__main__ import main as reproduce_main
from radiosharp.reproduce.memory_sections import bounded_checks, downsample_checks

TINY = "{family: dinov2, size: tiny}"


def test_bench_bounded_gives_the_unbounded_output_in_less_memory(tmp_path):
    path = tmp_path / "bounded.json"
    args = ["bounded", "--teacher", TINY, "--methods", "featup", "featsharp", "--factors", "4", "--budget-mb", "1"]
    assert bench_main([*args, "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"featup", "featsharp"} and all(r["status"] == "ok" for r in rows.values())
    for row in rows.values():
        assert row["max_rel_diff"] <= 1e-5
        assert row["unbounded_s"] > 0 and row["bounded_s"] > 0
        assert row["time_ratio"] == row["bounded_s"] / row["unbounded_s"]
    # FeatSharp's block and its mosaic are what take memory; chunked, the call holds much less at once
    featsharp = rows["featsharp"]
    assert featsharp["bounded_peak_mib"] < 0.7 * featsharp["unbounded_peak_mib"]
    assert featsharp["output_mib"] == 32 * (4 * 8) ** 2 * 4 / 2**20  # [1,32,32,32] float32


def test_bench_bounded_and_downsample_bad_input_exit_2(capsys):
    assert bench_main(["bounded", "--teacher", TINY, "--budget-mb", "0"]) == 2
    assert "--budget-mb > 0" in capsys.readouterr().err
    assert bench_main(["bounded", "--teacher", TINY, "--methods", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert bench_main(["downsample", "--shapes", "huge"]) == 2
    assert "choose from vits_48to12" in capsys.readouterr().err


def test_bench_downsample_times_both_window_methods_with_equal_outputs(tmp_path):
    path = tmp_path / "downsample.json"
    assert bench_main(["downsample", "--tiny", "--repeats", "1", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    assert {(r["phase"], r["method"]) for r in rows} == {(p, m) for p in ("fwd", "fwd+bwd") for m in ("auto", "taps")}
    for row in rows:
        assert row["max_abs_diff"] <= 1e-6 and row["seconds"] > 0
        if row["method"] == "taps":
            assert row["time_vs_taps"] == 1.0


def test_memory_checks_say_disagrees_when_a_row_is_off():
    row = {"status": "ok", "method": "featup", "factor": 4, "max_rel_diff": 1e-7, "bounded_working_mib": 100.0}
    row["peak_ratio"] = 0.5
    report = {"teacher": "sam", "budget_mb": 512.0, "rows": [row]}
    assert [holds for _, holds, _ in bounded_checks({"reports": [report]})] == [True, True, True]
    report["rows"] = [{**row, "max_rel_diff": 1e-3, "bounded_working_mib": 600.0, "peak_ratio": 1.8}]
    checks = bounded_checks({"reports": [report]})
    assert [holds for _, holds, _ in checks] == [False, False, False] and "over: featup 4x" in checks[2][2]
    assert "higher: featup 4x" in checks[1][2]
    down = {"shape": "s", "phase": "fwd+bwd", "method": "auto", "time_vs_taps": 1.3, "max_abs_diff": 0.0}
    down["peak_vs_taps"] = 2.0
    assert [holds for _, holds, _ in downsample_checks({"report": {"rows": [down]}})] == [False, False]


def test_quick_bounded_and_downsample_sections_write_their_tables(tmp_path):
    out, page = tmp_path / "runs", tmp_path / "results.md"
    args = ["--quick", "--sections", "bounded", "downsample", "--out-dir", str(out), "--page", str(page)]
    assert reproduce_main(args) == 0
    bounded = json.loads((out / "bounded.json").read_text())
    (report,) = bounded["data"]["reports"]
    assert [r["method"] for r in report["rows"]] == ["bilinear", "featup"]
    text = page.read_text()
    assert "## Bounded memory: every upsampler call within a budget" in text
    assert "`python -m radiosharp.reproduce --quick --sections bounded`" in text
    assert (
        "every bounded call gives the unbounded output (relative difference <= 1e-5) (this project's claim): agrees"
        in text
    )
    assert "## The attention downsampler: one unfold against the tap-by-tap loop" in text
