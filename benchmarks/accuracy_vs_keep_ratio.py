"""Accuracy against patch keep ratio on held-out data: the paper's claim, measured.

    vpp synth runs/heldout --videos 32 --frames 24 --size 240x320 --seed 1 --split valid
    python benchmarks/accuracy_vs_keep_ratio.py --weights vpp-compact --data runs/heldout/valid \
        [--ratios 0.7,0.55,0.45,0.35,0.25] [--videos 30] [--plot]

(The bundled model trained on seed 0; seed 1 is held out. `vpp synth` needs the synth extra for
photo backgrounds, as in training.)

Runs `vpp eval`'s machinery (same inference path, official video AP) on a split with ground
truth the model never trained on, once dense (keep ratio 1), once pruned as trained (native),
and at each keep ratio twice: VPP (temporal prior) and image-based pruning (no Map-SM, only the
selective modules prune, as SViT). Prints AP, AP50, AP75, AR10, realised PKR, GFLOPs/frame and
ms/frame per setting; writes JSON to benchmarks/results/ and, with --plot (matplotlib), a PNG of
AP and GFLOPs against realised PKR. A ratio image-based pruning cannot reach (its first three
blocks are dense, so PKR > 0.25) is reported as such.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from vppcli.checkpoints import load_model
from vppcli.errors import UsageError
from vppcli.evaluation.dataset import load_dataset, match_classes
from vppcli.evaluation.metric import evaluate_results
from vppcli.evaluation.runner import ModelSpec, RunSettings, make_job, run_in_process
from vppcli.hardware import cpu_description

RESULTS = Path(__file__).parent / "results"


def evaluate(weights: str, data: Path, videos: int | None, keep_ratio: float | None, temporal_prior: bool,
             work: Path) -> dict:
    dataset = load_dataset(data / "instances.json", data / "JPEGImages")
    chosen = dataset.select(limit=videos)
    model = load_model(weights)
    mapping = match_classes(model.config, dataset.categories, allow_mismatch=False)
    settings = RunSettings(ModelSpec(weights=weights), keep_ratio=keep_ratio, temporal_prior=temporal_prior)
    job = make_job(dataset, [v.id for v in chosen], settings, work, overwrite=True)
    outcome = run_in_process(job, loaded=(model, mapping))
    scores = evaluate_results(dataset.data, outcome.results, [v.id for v in chosen]).metrics
    efficiency = outcome.efficiency
    return {
        **{name: None if scores[name] is None else round(100 * scores[name], 2) for name in ("AP", "AP50", "AP75", "AR10")},
        "pkr": round(efficiency.keep_ratio, 4), "gflops_per_frame": round(efficiency.gflops_per_frame["total"], 2),
        "ms_per_frame": round(1000 * efficiency.seconds / max(efficiency.frames, 1), 1), "frames": efficiency.frames,
        "videos": len(chosen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights")
    parser.add_argument("--data", type=Path, help="split directory: instances.json + JPEGImages/")
    parser.add_argument("--table", type=Path, help="only print a results JSON as a Markdown table")
    parser.add_argument("--ratios", default="0.7,0.55,0.45,0.35,0.25")
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--name", default=None, help="result file stem [default: accuracy_vs_keep_ratio_<weights>]")
    args = parser.parse_args()
    if args.table is not None:
        print(markdown_table(json.loads(args.table.read_text())["rows"]))
        return
    if args.weights is None or args.data is None:
        parser.error("--weights and --data are required (or --table)")
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    settings = [("dense", 1.0, True), ("native", None, True)]
    settings += [(f"vpp {r}", r, True) for r in ratios] + [(f"image {r}", r, False) for r in ratios]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for label, ratio, prior in settings:
            try:
                row = evaluate(args.weights, args.data, args.videos, ratio, prior, Path(work) / label.replace(" ", "_"))
            except UsageError as error:  # e.g. a ratio image-based pruning cannot reach
                row = {"unreachable": str(error)}
            row = {"setting": label, "mode": "image" if not prior else "vpp", "keep_ratio": ratio, **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
    dataset = json.loads((args.data / "instances.json").read_text())
    report = {"weights": args.weights, "data": str(args.data), "data_info": dataset.get("info", {}),
              "cpu": cpu_description(), "threads": args.threads, "torch": torch.__version__, "rows": rows}
    stem = args.name or f"accuracy_vs_keep_ratio_{Path(args.weights).name.removesuffix('.safetensors')}"
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")
    if args.plot:
        print(f"-> {plot(rows, RESULTS / f'{stem}.png')}")


def markdown_table(rows: list[dict]) -> str:
    """The rows as the Markdown table of the README and the model card."""
    lines = ["| setting | PKR | AP | AP50 | AP75 | AR10 | GFLOPs/frame | ms/frame |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "pkr" not in row:
            lines.append(f"| {row['setting']} | unreachable | | | | | | |")
            continue
        lines.append(f"| {row['setting']} | {row['pkr']:.3f} | {row['AP']} | {row['AP50']} | {row['AP75']} | "
                     f"{row['AR10']} | {row['gflops_per_frame']} | {row['ms_per_frame']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ap_axis, flops_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode, marker in (("vpp", "o-"), ("image", "s--")):
        points = sorted((r["pkr"], r["AP"], r["gflops_per_frame"]) for r in rows
                        if r["mode"] == mode and "pkr" in r and r["keep_ratio"] not in (None, 1.0))
        if points:
            pkr, ap, flops = zip(*points)
            label = "VPP (temporal prior)" if mode == "vpp" else "image-based (SViT-style)"
            ap_axis.plot(pkr, ap, marker, label=label)
            flops_axis.plot(pkr, flops, marker, label=label)
    for row in rows:
        if row["setting"] in ("dense", "native") and "pkr" in row:
            ap_axis.plot([row["pkr"]], [row["AP"]], "k*" if row["setting"] == "dense" else "r^", label=row["setting"])
    ap_axis.set(xlabel="realised patch keep ratio", ylabel="video AP", title="accuracy")
    flops_axis.set(xlabel="realised patch keep ratio", ylabel="GFLOPs / frame", title="compute")
    ap_axis.legend(fontsize=8)
    ap_axis.grid(alpha=0.3)
    flops_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
