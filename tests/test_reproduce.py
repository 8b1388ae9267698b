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
    # a metric measured once (no spread on either side) cannot show the gain on its own
    once = {"keypoints": {"status": "ok", "metrics": {"pck@0.1": {"mean": 0.219, "std": 0.0, "values": [0.219]}}}}
    base = {"keypoints": {"status": "ok", "metrics": {"pck@0.1": {"mean": 0.215, "std": None}}}}
    mixed = {
        "delta_m": 0.5,
        "metrics": {"featsharp": {**run(0.121, 0.018), **once}, "bilinear": {**run(0.120, 0.017), **base}},
    }
    assert "**not shown**" in paper_checks("student", mixed)[0]


def test_health_check_compares_stage3_with_stage2_at_the_hi_res_size():
    def report(nmse_at_384):
        sizes = [128, 384]
        return {"mode_switch": {"curves": {"dinov2": {"sizes": sizes, "nmse_teacher": [0.1, nmse_at_384]}}}}

    data = {"reports": {"stage2": report(0.8), "bilinear": report(0.5), "featsharp": report(0.9)}}
    checks = paper_checks("health", data)
    assert len(checks) == 2
    assert "bilinear targets) brings the student closer to dinov2 at 384 px" in checks[0]
    assert checks[0].endswith("agrees (nMSE 0.5 vs 0.8 for stage 2)")
    assert checks[1].endswith("**disagrees** (nMSE 0.9 vs 0.8 for stage 2)")
    # without the stage-2 student there is nothing to compare against
    assert paper_checks("health", {"reports": {"bilinear": report(0.5)}}) == []


def test_ablation_table_and_check_use_the_spread_over_training_seeds():
    from radiosharp.reproduce.ablation_section import ablation_markdown

    def probe(miou):
        return {"semseg": {"status": "ok", "metrics": {"miou": {"mean": miou, "std": 0.01, "higher_is_better": True}}}}

    data = {
        "variants": {"baseline": [], "shift": ["distill.x=true"], "noisy": ["distill.y=true"]},
        "seeds": [0, 1],
        "metrics": {
            "baseline": {"0": probe(0.10), "1": probe(0.12)},
            "shift": {"0": probe(0.20), "1": probe(0.22)},
            "noisy": {"0": probe(0.05), "1": probe(0.19)},
        },
        "delta_m": {"shift": [100.0, 83.3], "noisy": [-50.0, 58.3]},
    }
    table = ablation_markdown(data).splitlines()
    assert table[0] == "| variant | overrides | semseg/miou ↑ | Δm % vs baseline |"
    assert table[3] == "| shift | `distill.x=true` | 0.21 ± 0.014 | 91.65 ± 12 |"
    checks = paper_checks("ablation", data)
    assert checks[0].startswith("- shift improves the stage-3 student (its paper's claim): agrees")
    assert "**not shown**" in checks[1]  # a gain inside its seed spread is no result


def test_quick_upsampler_cost_448_writes_its_table_and_plot(tmp_path):
    out, page = tmp_path / "runs", tmp_path / "results.md"
    assert main(["--quick", "--sections", "upsampler_cost_448", "--out-dir", str(out), "--page", str(page)]) == 0
    record = json.loads((out / "upsampler_cost_448.json").read_text())
    (report,) = record["data"]["reports"]
    methods = {row["method"] for row in report["rows"]}
    assert {"bilinear", "featsharp", "featup"} <= methods
    assert (out / "upsampler_cost_448.png").stat().st_size > 0
    text = page.read_text()
    assert "## The same table at NAF's 448 px input" in text
    assert "![upsampler_cost_448](figures/upsampler_cost_448.png)" in text


def test_the_quick_plan_refuses_the_student_sections_in_one_line(tmp_path, capsys):
    assert main(["--quick", "--sections", "health", "--out-dir", str(tmp_path / "r")]) == 2
    assert "the quick plan has no health section" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_comparison_cells_cover_the_grid_and_each_methods_own_objective():
    from radiosharp.reproduce.comparison_section import comparison_cells
    from radiosharp.reproduce.plan import full_plan

    plan = full_plan()
    cells = comparison_cells(plan)
    at = lambda u: {(m, o) for m, o, f in cells if f == u}  # noqa: E731
    assert ("bilinear", "multiview") in at(2) and ("bilinear", "crop_hires") not in at(2)  # nothing to train
    for method in ("featup", "featsharp", "featsharp_jafar", "jafar", "loftup", "naf", "anyup"):
        assert {(method, o) for o in plan.comparison_objectives} <= at(2)  # the full grid at 2x
    assert {o for m, o in at(4) if m == "anyup"} == {"multiview", "crop_hires"}
    assert {o for m, o in at(4) if m == "jafar"} == {"multiview", "low_to_high"}
    assert {o for m, o in at(4) if m == "featsharp"} == {"multiview"}
    narrow = plan.model_copy(update={"native_size": 84})  # 84 / 4 = 21 px: not whole 14-px patches
    assert ("jafar", "low_to_high", 4) not in comparison_cells(narrow)


def test_comparison_table_and_checks_come_from_the_rows():
    from radiosharp.reproduce.comparison_section import comparison_checks, comparison_markdown

    def row(method, objective, fidelity, cos, miou=None):
        out = {"method": method, "objective": objective, "factor": 2, "cos": cos}
        out.update({"fidelity": fidelity, "tv": [0.1], "crf": [0.01], "mmd": [0.02]})
        return out if miou is None else {**out, "miou": miou, "miou_small": [0.0]}

    data = {
        "rows": [
            row("featup", "multiview", [2.0, 2.2], [0.8, 0.82], [0.30]),
            row("featsharp", "multiview", [2.4], [0.85], [0.40]),
            row("anyup", "crop_hires", [1.5], [0.9], [0.35]),
            row("anyup", "low_to_high", [1.1], [0.7]),
        ]
    }
    text = comparison_markdown(data)
    assert "| AnyUp | crop hi-res | 1.5 | 0.1 | 0.01 | 0.02 | 0.9 | 0.35 | 0 |" in text
    assert "| AnyUp | low→high | 1.1 | 0.1 | 0.01 | 0.02 | 0.7 |  |  |" in text
    checks = {claim: holds for claim, holds, _ in comparison_checks(data)}
    assert checks["AnyUp (crop hi-res) beats FeatUp (JBU) in probe mIoU at 2x"] is True
    assert checks["AnyUp (crop hi-res) beats FeatSharp (JBU+tiles) in probe mIoU at 2x"] is False
    assert checks["AnyUp (crop hi-res) beats FeatSharp (JBU+tiles) in agreement with the hi-res teacher at 2x"]
    assert not any("low→high" in claim for claim in checks)  # only a method's own objective is checked
    # a difference inside the seed spread is neither a win nor a loss
    data["rows"][0]["cos"] = [0.80, 0.99]  # FeatUp: mean 0.895, std 0.13 > |0.9 - 0.895|
    close = {claim: (holds, detail) for claim, holds, detail in comparison_checks(data)}
    holds, detail = close["AnyUp (crop hi-res) beats FeatUp (JBU) in agreement with the hi-res teacher at 2x"]
    assert holds is None and "within the seed spread" in detail
    text = "\n".join(paper_checks("comparison", data))
    assert "beats FeatUp (JBU) in agreement with the hi-res teacher at 2x (its paper's claim): **not shown**" in text


def test_quick_comparison_scores_every_cell_on_the_fixed_scale(tmp_path):
    from radiosharp.reproduce.comparison_section import comparison_section
    from radiosharp.reproduce.plan import quick_plan

    plan = quick_plan().model_copy(update={"out": tmp_path, "comparison_semseg": False})
    data = comparison_section(plan)
    cells = {(r["method"], r["objective"]) for r in data["rows"]}
    assert cells == {("bilinear", "multiview"), ("jafar", "multiview"), ("jafar", "crop_hires")}
    for r in data["rows"]:
        heldout = json.loads((tmp_path / "upsamplers" / _name(r) / "heldout.json").read_text())
        assert r["fidelity"] == [heldout["fixed_fidelity"]]  # the fixed resize, for every objective
        assert all(-1 <= c <= 1 for c in r["cos"])
    assert not (tmp_path / "upsamplers" / "jafar_crop_hires_2x_seed0" / "downsampler.safetensors").exists()


def _name(row):
    from radiosharp.reproduce.runs import upsampler_run_name

    return upsampler_run_name(row["method"], row["factor"], 0, objective=row["objective"])


def test_a_section_without_its_json_keeps_the_block_the_page_has(tmp_path):
    from radiosharp.reproduce.report import TITLES, page_sections, write_report

    page = tmp_path / "results.md"
    kept = (
        f"## {TITLES['semseg']}\n\nCommand: `python -m radiosharp.reproduce --sections semseg`\n\n| a | b |\n|---|---|"
    )
    page.write_text(f"# old header\n\n{kept}\n\n## {TITLES['cost']}\n\nNot measured yet: ...\n")
    write_report(tmp_path / "nothing_here", page, "# Results")
    text = page.read_text()
    assert text.startswith("# Results\n") and "old header" not in text
    assert page_sections(page)[TITLES["semseg"]] == kept  # kept word for word
    assert (
        f"## {TITLES['protocols']}\n\nNot measured yet: `python -m radiosharp.reproduce --sections protocols`" in text
    )


def test_protocol_checks_compare_against_the_probe_seed_spread():
    from radiosharp.reproduce.protocol_section import protocol_checks

    def row(kind, size, factor, miou, normals):
        return {
            "kind": kind,
            "input_size": size,
            "factor": factor,
            "metrics": {"semseg/miou": miou, "normals/angular_rmse": normals},
        }

    data = {
        "rows": [
            row("teacher", 112, 1, [0.30, 0.31], [40.0, 41.0]),
            row("teacher", 224, 1, [0.40, 0.41], [38.0, 39.0]),
            row("bilinear", 112, 2, [0.30, 0.32], [40.0, 40.5]),
            row("featsharp", 112, 2, [0.31, 0.31], [30.0, 30.5]),
            row("featsharp", 224, 2, [0.1, 0.1], [90.0, 90.0]),  # only the first input size is checked
        ]
    }
    checks = {claim: (holds, detail) for claim, holds, detail in protocol_checks(data)}
    assert checks["the teacher at 224 px input probes better than at 112 px (mIoU)"][0] is True
    holds, detail = checks["FeatSharp 2x probes better than bilinear 2x (mIoU)"]
    assert holds is None and "inside the probe-seed spread" in detail  # 0.31 vs 0.31 ± 0.014
    assert checks["FeatSharp 2x has lower normal error than bilinear 2x"][0] is True
    assert len(checks) == 3
