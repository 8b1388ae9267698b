"""``python -m radiosharp.reproduce``: a reduced fidelity row on the real teacher, end to end."""

from __future__ import annotations

import json
import math

import pytest

from radiosharp.reproduce.__main__ import main
from radiosharp.reproduce.report import paper_checks
from radiosharp.reproduce.stats_text import fmt, mean_std


def test_mean_std_and_format():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert mean_std([5.0]) == (5.0, None)
    assert fmt([1.0, 3.0]) == "2 ± 1.4"
    assert fmt([0.123456]) == "0.1235"


def test_quick_fidelity_row_writes_the_page_with_its_command(tmp_path, capsys):
    out, page = tmp_path / "runs", tmp_path / "results.md"
    assert main(["--quick", "--sections", "fidelity", "--out-dir", str(out), "--page", str(page)]) == 0
    record = json.loads((out / "fidelity.json").read_text())
    assert record["command"] == "python -m radiosharp.reproduce --quick --sections fidelity"
    rows = {(r["method"], r["factor"]): r for r in record["data"]["rows"]}
    assert set(rows) == {("bilinear", 2), ("featsharp", 2)}
    for row in rows.values():
        assert all(math.isfinite(v) and v > 0 for v in row["fidelity"])
    # the numbers in the table are the ones the runs wrote
    heldout = json.loads((out / "upsamplers" / "featsharp_2x_seed0" / "heldout.json").read_text())
    assert rows[("featsharp", 2)]["fidelity"] == [heldout["fidelity"]]
    text = page.read_text()
    assert "`python -m radiosharp.reproduce --quick --sections fidelity`" in text
    assert f"| FeatSharp (JBU+tiles) | 2x | {fmt(heldout['fidelity'])} |" in text
    assert "Not measured yet" in text  # the sections that did not run say so, with their command
    # a second call reuses the finished runs: nothing is retrained
    stamp = (out / "upsamplers" / "featsharp_2x_seed0" / "model.safetensors").stat().st_mtime_ns
    assert main(["--quick", "--sections", "fidelity", "--out-dir", str(out), "--page", str(page)]) == 0
    assert (out / "upsamplers" / "featsharp_2x_seed0" / "model.safetensors").stat().st_mtime_ns == stamp
    assert "trained" not in capsys.readouterr().out.split("=== fidelity")[-1]


def test_paper_checks_are_computed_from_the_numbers():
    data = {
        "rows": [
            {"method": "bilinear", "factor": 2, "fidelity": [2.0, 2.2]},
            {"method": "featup", "factor": 2, "fidelity": [1.9]},
            {"method": "featsharp", "factor": 2, "fidelity": [2.5, 2.4]},
        ]
    }
    checks = paper_checks("fidelity", data)
    assert "- FeatSharp has the highest fidelity at 2x: agrees (highest: featsharp)" in checks
    assert "- FeatUp beats bilinear in fidelity at 2x: **disagrees**" in checks


def test_bad_section_exits_2_before_anything_is_written(tmp_path, capsys):
    assert main(["--sections", "everything", "--out-dir", str(tmp_path / "r")]) == 2
    assert "unknown section everything; valid: fidelity" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_student_gain_within_the_probe_spread_is_not_called_a_result():
    def run(mean, std):
        return {"semseg": {"status": "ok", "metrics": {"miou": {"mean": mean, "std": std}}}}

    close = {"delta_m": 0.03, "metrics": {"featsharp": run(0.121, 0.018), "bilinear": run(0.120, 0.017)}}
    assert "**not shown**" in paper_checks("student", close)[0]
    clear = {"delta_m": 8.0, "metrics": {"featsharp": run(0.20, 0.01), "bilinear": run(0.12, 0.01)}}
    assert paper_checks("student", clear)[0].endswith("agrees (Δm +8.00 %)")
