"""``python -m radiosharp.bench upsample --table naf``: the NAF-style upsampler cost table, on a tiny CPU teacher.

Structure and invariants only (rows, ratios, parameter counts, failures, JSON), never
speed: timings on a shared CPU are noise.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import radiosharp
from radiosharp.option_groups import expand_option_groups
from radiosharp.registry import UPSAMPLERS
from upsamplers._base import Upsampler, UpsampleSpec

TINY = {"family": "dinov2", "size": "tiny"}
FACTORS = (2, 4)
SIMULATED = "simulated out of memory in the backward"


class BackwardBoom(Upsampler):
    """Bilinear with one weight whose forward refuses to run with autograd on (a stand-in for an OOM)."""

    def __init__(self, spec: UpsampleSpec = UpsampleSpec()) -> None:
        super().__init__(spec)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, lowres, featurize, tile_features=None):
        if torch.is_grad_enabled():
            raise RuntimeError(SIMULATED)
        return self.scale * F.interpolate(lowres, size=self.output_size(lowres), mode="bilinear")


def build_fails(factor: int = 2, dim: int = 0, patch_size: int = 14) -> Upsampler:
    raise ValueError("cannot build at this size")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a CPU shared with other jobs, two OpenMP threads that spin-wait for each other
    make these calls 20-50x slower, and the tests check structure, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():
    return radiosharp.build_teacher(TINY)


@pytest.fixture(scope="module")
def report(teacher):
    """One run over every registered upsampler, two test-only ones among them (one fails its backward,
    one its build)."""
    from radiosharp.bench.upsampler_cost import bench_upsampler_cost

    UPSAMPLERS.names()  # load the plug-ins first
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(UPSAMPLERS._entries, "zz_backward_boom", expand_option_groups(BackwardBoom))  # as register does
        mp.setitem(UPSAMPLERS._entries, "zz_build_fails", build_fails)
        names = UPSAMPLERS.names()
        out = bench_upsampler_cost(
            teacher, FACTORS, None, batch=1, warmup=0, repeats=1, grid=None, progress=messages.append
        )
    out["_registered"] = names
    out["_messages"] = messages
    return out


def test_every_registered_upsampler_gets_a_row_per_factor(report):
    names = report["_registered"]
    assert {"bilinear", "tiles", "s2", "featup", "featsharp", "jafar", "loftup", "naf", "anyup"} <= set(names)
    assert report["methods"][0] == "bilinear" and sorted(report["methods"]) == sorted(names)
    assert [(r["factor"], r["method"]) for r in report["rows"]] == [(u, m) for u in FACTORS for m in report["methods"]]
    assert report["teacher"]["grid"] == 8 and report["teacher"]["input_size"] == 112  # grid=None: the teacher's own
    assert report["threads"] == 1
    for r in report["rows"]:
        assert r["image_size"] == r["factor"] * 112
        assert r["lowres"] == [8, 8] and r["output"] == [8 * r["factor"]] * 2
    assert any(m.startswith("factor 4") for m in report["_messages"])  # progress went through the callback
    json.dumps(report)  # JSON-able as it stands


def test_bilinear_ratios_are_exactly_one_and_the_others_are_against_it(report):
    for u in FACTORS:
        rows = {r["method"]: r for r in report["rows"] if r["factor"] == u}
        ref = rows["bilinear"]
        for key in ("fwd_ratio", "fwd_bwd_ratio", "fwd_mem_ratio", "fwd_bwd_mem_ratio"):
            assert ref[key] == 1
        for r in rows.values():
            if r["status"] != "ok":
                continue
            assert r["fwd_ratio"] == pytest.approx(r["fwd_s"] / ref["fwd_s"])
            assert r["fwd_bwd_ratio"] == pytest.approx(r["fwd_bwd_s"] / ref["fwd_bwd_s"])
            assert r["fwd_mem_ratio"] == pytest.approx(r["fwd_peak_mb"] / ref["fwd_peak_mb"])
            assert r["fwd_bwd_mem_ratio"] == pytest.approx(r["fwd_bwd_peak_mb"] / ref["fwd_bwd_peak_mb"])


def test_parameter_counts_times_and_memory(report, teacher):
    ok = [r for r in report["rows"] if not r["method"].startswith("zz_")]
    assert all(r["status"] == "ok" and r["error"] is None for r in ok), [r["error"] for r in ok]
    for r in ok:
        module = radiosharp.build_upsampler(
            r["method"], factor=r["factor"], dim=teacher.embed_dim, patch_size=teacher.patch_size
        )
        assert r["params"] == sum(p.numel() for p in module.parameters())
        assert r["grad_wrt"] == ("parameters" if r["params"] else "inputs")
        for key in ("fwd_s", "fwd_bwd_s", "fwd_peak_mb", "fwd_bwd_peak_mb"):
            assert r[key] is not None and r[key] > 0, (r["method"], key)
        # tile upsamplers replay the teacher's tile features: one recorded call, the teacher not timed
        tiled = getattr(module, "uses_tiles", False)
        assert r["teacher_calls_replayed"] == (1 if tiled else 0)
    params = {r["method"]: r["params"] for r in ok}
    assert params["bilinear"] == params["tiles"] == params["s2"] == 0
    assert min(params[m] for m in ("featup", "featsharp", "jafar", "loftup", "naf", "anyup")) > 0


def test_a_method_that_raises_is_recorded_as_failed_not_fatal(report):
    for u in FACTORS:
        rows = {r["method"]: r for r in report["rows"] if r["factor"] == u}
        boom = rows["zz_backward_boom"]
        assert boom["status"] == "failed"
        assert boom["error"] == f"forward+backward: RuntimeError: {SIMULATED}"
        assert boom["params"] == 1 and boom["fwd_s"] > 0 and boom["fwd_ratio"] is not None  # the forward ran
        assert boom["fwd_bwd_s"] is None and boom["fwd_bwd_peak_mb"] is None and boom["fwd_bwd_ratio"] is None
        built = rows["zz_build_fails"]
        assert built["status"] == "failed" and built["error"] == "build: ValueError: cannot build at this size"
        assert built["params"] is None and built["fwd_s"] is None and built["fwd_bwd_s"] is None


def test_markdown_table_has_a_line_per_method_and_lists_failures(report):
    from radiosharp.bench.upsampler_cost import upsampler_cost_markdown

    text = upsampler_cost_markdown(report)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", "params"] + [f"{u}x {c}" for u in FACTORS for c in ("fwd ms", "fwd+bwd ms", "peak MiB")]
    body = lines[2:]
    assert len(body) == len(report["methods"])
    assert all(len(line.strip("|").split("|")) == len(header) for line in body)
    bilinear = [c.strip() for c in body[0].strip("|").split("|")]
    assert bilinear[0] == "`bilinear`" and all(c.endswith("(1x)") for c in bilinear[2:])
    featup = next(line for line in body if line.startswith("| `featup`"))
    assert " / " in featup.split("|")[2]  # featup's JBU stack grows with the factor: one count per factor
    assert "- `zz_backward_boom` at 2x: forward+backward: RuntimeError" in text
    assert "- `zz_build_fails` at 4x: build: ValueError" in text


def test_cli_table_naf_json(tmp_path, capsys):
    from radiosharp.bench.cli import main

    path = tmp_path / "cost.json"
    args = ["upsample", "--table", "naf", "--teacher", "dinov2", "--size", "tiny", "--factors", "2", "4"]
    args += ["--methods", "tiles", "jafar", "--repeats", "1", "--warmup", "0", "--grid", "4", "--query-chunk", "64"]
    assert main([*args, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fwd+bwd ms" in out and "x bil" in out  # the table is printed too
    report = json.loads(path.read_text())
    assert report["table"] == "naf" and report["methods"] == ["bilinear", "tiles", "jafar"]  # bilinear: the reference
    assert report["teacher"]["grid"] == 4 and report["teacher"]["input_size"] == 56
    assert [(r["factor"], r["method"]) for r in report["rows"]] == [
        (u, m) for u in (2, 4) for m in ("bilinear", "tiles", "jafar")
    ]
    assert all(r["status"] == "ok" for r in report["rows"])
    jafar = [r for r in report["rows"] if r["method"] == "jafar"]
    assert all(r["options"]["query_chunk"] == 64 for r in jafar)

    assert main([*args, "--json"]) == 0  # no PATH: the JSON alone on stdout
    assert json.loads(capsys.readouterr().out)["rows"]


def test_cli_naf_options_are_refused_on_the_teacher_table(capsys):
    from radiosharp.bench.cli import main

    assert main(["upsample", "--teacher", "dinov2", "--size", "tiny", "--grid", "4"]) == 2
    assert "--table naf only" in capsys.readouterr().err
    assert main(["upsample", "--table", "naf", "--teacher", "dinov2", "--size", "tiny", "--methods", "lanczos"]) == 2
    assert "unknown upsampler 'lanczos'" in capsys.readouterr().err


def test_teacher_at_u_x_ratios_two_widths_and_plot(tmp_path):
    """Several teachers (one table each), the teacher at u x input measured with ratios to it, a PNG plot."""
    from radiosharp.bench.cli import main

    path, plot = tmp_path / "cost.json", tmp_path / "cost.png"
    tiny_wide = "{family: dinov2, size: tiny}"
    args = ["upsample", "--table", "naf", "--teacher", "dinov2", tiny_wide, "--size", "tiny", "--factors", "2", "4"]
    args += ["--methods", "featup", "--repeats", "1", "--warmup", "0", "--input-size", "56"]
    args += ["--teacher-max-factor", "2", "--plot", str(plot), "--json", str(path)]
    assert main(args) == 0
    combined = json.loads(path.read_text())
    assert combined["table"] == "naf" and len(combined["reports"]) == 2
    report = combined["reports"][0]
    assert report["teacher"]["input_size"] == 56 and report["teacher"]["grid"] == 4
    assert [r["factor"] for r in report["teacher_rows"]] == [2]  # up to --teacher-max-factor
    teacher_row = report["teacher_rows"][0]
    assert teacher_row["status"] == "ok" and teacher_row["fwd_s"] > 0 and teacher_row["fwd_bwd_peak_mb"] > 0
    for r in report["rows"]:
        if r["factor"] == 2:
            assert r["fwd_teacher_ratio"] == pytest.approx(r["fwd_s"] / teacher_row["fwd_s"])
            assert r["fwd_bwd_mem_teacher_ratio"] == pytest.approx(
                r["fwd_bwd_peak_mb"] / teacher_row["fwd_bwd_peak_mb"]
            )
            assert r["params_teacher_ratio"] == pytest.approx(r["params"] / report["teacher_params"])
        else:
            assert r["fwd_teacher_ratio"] is None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from radiosharp.bench.upsampler_cost import upsampler_cost_teacher_markdown

    text = upsampler_cost_teacher_markdown(report)
    assert "| `teacher` at u x input |" in text and "2x fwd x T" in text and "4x fwd x T" not in text
