"""The plain-text tables ``python -m radiosharp.bench`` prints: ``upsample`` (vs the teacher at ``u x`` input, and
the NAF-style table of every upsampler alone), and ``train`` (images/s and phase shares)."""

from __future__ import annotations

from typing import Any

from radiosharp.bench.table import Column, format_table, milliseconds, record_table, with_ratios

MB = "MiB"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _timing(report: dict[str, Any]) -> str:
    """How a report's times were taken: ``batch B, <precision>, median of R after W warm-up``."""
    return (
        f"batch {report['batch']}, {report['precision']}, "
        f"median of {report['repeats']} after {report['warmup']} warm-up"
    )


def upsample_tables(report: dict[str, Any]) -> str:
    """The inference table, the training-step table and the crossover lines."""
    t = report["teacher"]
    head = (
        f"teacher {t['name']} (native {t['native_size']}px, patch {t['patch_size']}, dim {t['embed_dim']}) "
        f"on {report['device']}, {_timing(report)}; {report['weights']}\n"
        f"x teacher = cost / cost of the teacher at u x input; peak memory: {report['memory']}"
    )
    columns: list[Column] = [
        ("u", "factor"),
        ("method", "method"),
        ("input px", "input_size"),
        ("teacher imgs", "teacher_images"),
        *with_ratios(
            "x teacher",
            [
                ("ms", milliseconds("time_s"), "time_ratio"),
                ("ms excl", milliseconds("time_excl_s"), "time_excl_ratio"),
                (f"peak {MB}", "peak_mb", "mem_ratio"),
                (f"{MB} excl", "peak_excl_mb", "mem_excl_ratio"),
            ],
        ),
    ]
    parts = [head, record_table(report["rows"], columns)]
    if report["train"]:
        columns = [
            ("u", "factor"),
            ("method", "method"),
            ("batch", "batch"),
            ("views", "views"),
            ("step ms", milliseconds("step_s")),
            ("images/s", "images_per_s"),
            (f"peak {MB}", "peak_mb"),
        ]
        parts.append(
            "multi-view training step (views, teacher targets, upsampler, downsampler, loss, "
            "backward, NAdam):\n" + record_table(report["train"], columns)
        )
    cross = report.get("crossover")
    if cross:
        a = cross["analytic"]
        fmt = lambda v: "never" if v is None else f"{v:.2f}x"  # noqa: E731
        parts.append(
            f"featsharp vs teacher at u x input: {cross['note']}"
            + (f" (crossing interpolated at {cross['interpolated']:.2f}x)" if cross["interpolated"] else "")
            + f"\n  fits: teacher ~ {cross['teacher_fit']['c_seconds'] * 1e3:.3g} ms * u^"
            f"{cross['teacher_fit']['exponent']:.2f}; featsharp ~ {cross['featsharp_fit']['a_seconds'] * 1e3:.3g}"
            f" + {cross['featsharp_fit']['b_seconds'] * 1e3:.3g} * u^2 ms"
            f"\n  analytic (eq. 6, 1+u^2 teacher calls vs u^p, block cost ignored): p=4 (attention-bound) "
            f"{fmt(a['attention_bound_u4'])}, p=2 (patch-linear) {fmt(a['patch_linear_u2'])}, "
            f"measured p {fmt(a['measured_exponent'])}"
        )
    return "\n\n".join(parts)


def upsampler_cost_tables(report: dict[str, Any]) -> str:
    """The NAF-style table of ``upsample --table naf`` (:mod:`radiosharp.bench.upsampler_cost`)."""
    from radiosharp.bench.upsampler_cost import where

    t = report["teacher"]
    head = (
        f"upsamplers alone (teacher excluded): {t['name']} features ({t['embed_dim']} channels) on a "
        f"{t['grid']}x{t['grid']} grid (teacher input {t['input_size']}px, patch {t['patch_size']}; image u x that) "
        f"on {where(report)}, {_timing(report)}, timed round-robin; {report['weights']}\n"
        f"fwd: no-grad forward; fwd+bwd: forward + {report['backward']}; x bil = cost / cost of bilinear at the "
        f"same u; peak memory: {report['memory']}"
    )
    columns: list[Column] = [
        ("u", "factor"),
        ("method", "method"),
        ("params", "params"),
        ("grad wrt", lambda r: r["grad_wrt"] or ""),
        *with_ratios(
            "x bil",
            [
                ("fwd ms", milliseconds("fwd_s"), "fwd_ratio"),
                ("fwd+bwd ms", milliseconds("fwd_bwd_s"), "fwd_bwd_ratio"),
                (f"fwd {MB}", "fwd_peak_mb", "fwd_mem_ratio"),
                (f"fwd+bwd {MB}", "fwd_bwd_peak_mb", "fwd_bwd_mem_ratio"),
            ],
        ),
        ("status", lambda r: "ok" if r["status"] == "ok" else f"failed ({r['error']})"),
    ]
    return f"{head}\n\n{record_table(report['rows'], columns)}"


def train_tables(report: dict[str, Any]) -> str:
    """The step line and the per-partition table of ``bench train``."""
    head = (
        f"recipe {report['recipe']} on {report['device']} ({report['mixed_precision']}), "
        f"{report['steps']} steps after {report['warmup']} warm-up, micro-batch {report['micro_batch']}: "
        f"{report['images_per_s']:.3g} images/s ({report['step_s'] * 1e3:.3g} ms/step)"
    )
    peak = report.get("peak_memory") or {}
    if peak.get("mib") is not None:
        head += f"; peak memory {peak['mib']:.4g} MiB ({peak['what']})"
    phases = list(report["partitions"][0]["shares"]) if report["partitions"] else []
    rows = [
        [
            p["name"],
            p["size"],
            p["batch"],
            str(p["upsample"]).lower(),
            _ms(p["seconds"]),
            p["images_per_s"],
            *(100 * p["shares"][ph] for ph in phases),
        ]
        for p in report["partitions"]
    ]
    rows.append(
        [
            "step",
            "",
            report["micro_batch"],
            "",
            _ms(report["step_s"]),
            report["images_per_s"],
            *(100 * report["shares"][ph] for ph in phases),
        ]
    )
    extra = ", ".join(f"{ph} {100 * report['shares'][ph]:.3g}%" for ph in report["shares"] if ph not in phases)
    table = format_table(
        ["partition", "size", "batch", "upsample", "ms", "images/s", *(f"{ph} %" for ph in phases)], rows
    )
    return (
        f"{head}\n{table}\n(partition rows: shares of that partition's time; step row: of the whole step, "
        f"which also spends {extra})"
    )
