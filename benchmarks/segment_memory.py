"""Peak memory of `vpp segment` vs video length: must not grow with the number of frames.

    python benchmarks/segment_memory.py --frames 200 2000 --json benchmarks/results/segment_memory.json

For each length it generates a clip (examples/make_clip.py), runs `vpp segment` on it in a fresh
process writing every file format, and reads that process's peak RSS from the kernel (through
an intermediate process whose only child it is, so the figure is exactly the segment run's).

The model is the compact preset with random weights and lowered tracker thresholds (continue any
track, start one above score 0.06), saved as a checkpoint: untrained weights would otherwise
produce no tracks and the writers would have nothing to hold on to. At 0.06 a new track starts
every frame or two, which is more than a real video has.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def current_rss_mib(pid: int) -> float | None:
    """Resident set size of a live process (Linux /proc; None elsewhere or once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(command: list[str]) -> None:
    """Child mode: run `command`; print its peak RSS (MiB), wall time, and its RSS sampled every
    half second, reduced to the RSS at each tenth of the run (growth shows up as a trend there)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    samples: list[float] = []
    while process.poll() is None:
        rss = current_rss_mib(process.pid)
        if rss is not None:
            samples.append(rss)
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"command failed with exit code {process.returncode}: {' '.join(command)}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20
    tenths = [round(samples[min(len(samples) - 1, len(samples) * k // 10)], 1) for k in range(1, 11)] if samples else []
    print(json.dumps({"peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1), "rss_mib_by_tenth": tenths}))


def detecting_checkpoint(preset_name: str, path: Path) -> Path:
    import dataclasses

    import torch

    from vppcli.checkpoints import save_model
    from vppcli.config import preset
    from vppcli.model.rovis import build_model

    config = preset(preset_name)
    config = config.replace(tracker=dataclasses.replace(config.tracker, track_score_threshold=0.0,
                                                        new_score_threshold=0.06))
    torch.manual_seed(0)
    return save_model(build_model(config), path, notes="memory benchmark: random weights, low thresholds")


def run_length(frames: int, args: argparse.Namespace, workdir: Path, weights: Path) -> dict[str, object]:
    clip = workdir / f"clip_{frames}.mp4"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_clip.py"), str(clip), "--frames", str(frames),
                    "--size", args.size], check=True)
    segment = [sys.executable, "-m", "vppcli", "segment", str(clip), "--weights", str(weights), "--size",
               str(args.long_side), "--format", args.formats, "-o", str(workdir / "out"), "--quiet",
               "--device", "cpu", "--threads", str(args.threads)]
    if args.keep_ratio:
        segment += ["--keep-ratio", str(args.keep_ratio)]
    child = subprocess.run([sys.executable, __file__, "--measure", "--", *segment],
                           check=True, stdout=subprocess.PIPE, text=True)
    figures = json.loads(child.stdout)
    ytvis = json.loads((workdir / "out" / clip.stem / "ytvis.json").read_text())
    return {"frames": frames, **figures, "frames_per_second": round(frames / figures["seconds"], 2),
            "tracks": len(ytvis), "masks_written": sum(s is not None for e in ytvis for s in e["segmentations"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--size", default="96x160", help="clip HEIGHTxWIDTH")
    parser.add_argument("--long-side", type=int, default=160, help="network input long side")
    parser.add_argument("--preset", default="compact")
    parser.add_argument("--keep-ratio", type=float, default=0.45, help="0 = prune as trained (native)")
    parser.add_argument("--formats", default="overlay,ytvis,coco,png")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.command)
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = detecting_checkpoint(args.preset, Path(tmp) / "model.safetensors")
        runs = [run_length(frames, args, Path(tmp), weights) for frames in args.frames]
    report = {
        "benchmark": "segment_memory",
        "machine": f"{platform.machine()}, {platform.system()}, python {platform.python_version()}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("measure", "command", "json")},
        "runs": runs,
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
