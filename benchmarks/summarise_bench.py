"""Medians over repeated `vpp bench --json` reports, and before/after ratios.

Each input file holds one or more `vpp bench --json` reports, one after the other (as
`>>` appends them). Rates are recomputed from `gflops` and `component_ms`, so reports from
versions without `gflops_per_s` (before the GFLOP/s columns existed) summarise the same way.

    python benchmarks/summarise_bench.py before.json after.json [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# timed component -> the FLOP parts it runs (the "vit_blocks" section also embeds the patches)
PARTS = {
    "spatial_prior": ("spatial_prior",), "vit_blocks": ("patch_embed", "vit_blocks"), "adapter": ("adapter",),
    "pixel_decoder": ("pixel_decoder",), "transformer_decoder": ("transformer_decoder",),
}


def read_reports(path: Path) -> list[dict]:
    decoder, text, reports, position = json.JSONDecoder(), path.read_text(), [], 0
    while (position := _skip_space(text, position)) < len(text):
        report, position = decoder.raw_decode(text, position)
        reports.append(report)
    return reports


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def summarise(reports: list[dict]) -> dict[str, float]:
    """Median over reports of each figure (ms and GFLOP/s per component, dense and pruned)."""
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for report in reports:
        for run in report["runs"]:
            label = run["label"]
            add(f"{label} ms", run["ms_per_frame"])
            add(f"{label} GFLOP/s", run["gflops"]["total"] / run["ms_per_frame"] * 1e3)
            for name, parts in PARTS.items():
                add(f"{label} {name} ms", run["component_ms"][name])
                add(f"{label} {name} GFLOP/s", sum(run["gflops"][p] for p in parts) / run["component_ms"][name] * 1e3)
            add(f"{label} peak MB", run["peak_memory_mb"])
        add("speedup pruned vs dense", report["runs"][0]["ms_per_frame"] / report["runs"][1]["ms_per_frame"])
        if "matmul_gflops_per_s" in report:
            add("matmul GFLOP/s", report["matmul_gflops_per_s"]["float32"])
            add("MSDA ms", report["deform_attn"]["ms"])
            add("MSDA grid_sample ms", report["deform_attn"]["reference_ms"])
            add("MSDA speedup", report["deform_attn"]["speedup"])
            if "sampling_ms" in report["deform_attn"]:
                add("MSDA sampling ms", report["deform_attn"]["sampling_ms"])
                add("MSDA sampling grid_sample ms", report["deform_attn"]["sampling_reference_ms"])
                add("MSDA sampling speedup", report["deform_attn"]["sampling_speedup"])
    return {name: statistics.median(values) for name, values in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    args = parser.parse_args()
    before, after = (read_reports(path) for path in (args.before, args.after))
    summary = {"before": summarise(before), "after": summarise(after), "reports": [len(before), len(after)]}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    print(f"medians over {len(before)} / {len(after)} reports")
    for name, value in summary["after"].items():
        old = summary["before"].get(name)
        ratio = f"{value / old:8.3f}" if old else ""
        print(f"{name:36s} {old if old is not None else float('nan'):10.1f} {value:10.1f} {ratio}")


if __name__ == "__main__":
    main()
