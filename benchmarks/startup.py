"""Start-up time of `vpp`: wall time of commands that do no model work, median of N runs.

    python benchmarks/startup.py --runs 5 > benchmarks/results/startup_cpu.json
    python benchmarks/startup.py --root /tmp/before   # another checkout (e.g. `git archive` of an older commit)

Each command runs as `python -m vppcli ...` in a fresh process with PYTHONPATH=--root, so the
numbers include the interpreter's own start (about 0.03 s here). `vpp info` reads a checkpoint
written once for the measurement (a random compact model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--version"], ["--help"], ["segment", "--help"], ["weights", "list"], ["info", "{checkpoint}"])


def _checkpoint(directory: Path) -> Path:
    code = ("import sys; from vppcli.checkpoints import save_model; from vppcli.config import preset; "
            "from vppcli.model.rovis import build_model; save_model(build_model(preset('compact')), sys.argv[1])")
    path = directory / "compact.safetensors"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path


def measure(root: Path, runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(Path(scratch))
        medians = {}
        for command in COMMANDS:
            args = [part.format(checkpoint=checkpoint) for part in command]
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "vppcli", *args], check=False, cwd=root, env=env,
                               capture_output=True)
                times.append(time.perf_counter() - started)
            medians[" ".join(command)] = round(statistics.median(times), 3)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    print(json.dumps({"root": str(options.root), "runs": options.runs, "seconds": measure(options.root,
                                                                                            options.runs)}, indent=2))


if __name__ == "__main__":
    main()
