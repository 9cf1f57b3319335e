"""Training throughput of `vpp train` on this machine: clips/s, frames/s and peak memory for a
preset and size, dense and VPP stages, and the time one epoch takes.

    python benchmarks/train_throughput.py --data DIR [--size 192] [--steps 12] [--threads 2]

DIR is a training split (`vpp synth` output, e.g. runs/bundled/data/train). Each stage runs in
a fresh process (`vpp train`) so peak RSS is that run's; the first `--warmup` steps are not
timed. An epoch is one clip per frame of the split. Writes benchmarks/results/train_throughput_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vppcli.hardware import cpu_description


def run_stage(data: Path, stage: str, size: int, steps: int, threads: int, preset: str, work: Path) -> dict:
    run_dir = work / stage
    command = [sys.executable, "-m", "vppcli", "train", "--data", str(data), "-o", str(run_dir), "--stage", stage,
               "--preset", preset, "--size", str(size), "--steps", str(steps), "--threads", str(threads),
               "--log-every", "1", "--save-every", str(steps), "--quiet"]
    if stage == "vpp":
        command += ["--target-pkr", "0.5"]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS, not the maximum of all children
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {child.returncode}")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"lines": lines, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--preset", default="compact")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    annotations = json.loads((args.data / "instances.json").read_text())
    frames = sum(len(v["file_names"]) for v in annotations["videos"])
    report = {"cpu": cpu_description(), "threads": args.threads, "preset": args.preset, "size": args.size,
              "dataset": str(args.data), "dataset_frames": frames, "stages": {}}
    with tempfile.TemporaryDirectory() as work:
        for stage in ("dense", "vpp"):
            result = run_stage(args.data, stage, args.size, args.steps, args.threads, args.preset, Path(work))
            timed = result["lines"][args.warmup:]
            seconds = sum(line["seconds"] for line in timed)
            clips = sum(line["clips"] for line in timed)
            frames_per_clip = 2 if stage == "dense" else 3
            clips_per_s = clips / seconds
            report["stages"][stage] = {
                "clips_per_s": round(clips_per_s, 3), "frames_per_s": round(clips_per_s * frames_per_clip, 3),
                "seconds_per_step": round(seconds / len(timed), 3), "peak_rss_mib": result["peak_rss_mib"],
                "epoch_hours": round(frames / clips_per_s / 3600, 2), "timed_steps": len(timed),
            }
            print(f"{stage}: {clips_per_s:.3f} clips/s ({seconds / len(timed):.2f} s/step), "
                  f"peak RSS {result['peak_rss_mib']} MiB, epoch ({frames} clips) "
                  f"{frames / clips_per_s / 3600:.2f} h", flush=True)
    out = Path(__file__).parent / "results" / f"train_throughput_{args.preset}_{args.size}_cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['cpu']}, {args.threads} threads -> {out}")


if __name__ == "__main__":
    main()
