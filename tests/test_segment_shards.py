"""`vpp segment --shards`: inputs spread over worker processes give the files, stdout and exit
code of one process, bad inputs included."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.video_files import noisy_striped_clip, striped_clip, write_frames, write_video
from vppcli.checkpoints import save_model
from vppcli.cli import app
from vppcli.config import preset
from vppcli.model.rovis import build_model

# Tiny clips at one thread: same thread count, same arithmetic, same bytes.
SETTINGS = ["--size", "64", "--threads", "1", "--device", "cpu"]
FORMATS = ["-f", "ytvis,png,jsonl", "--json-summary"]
FRAMES = 5


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random compact weights whose tracker keeps every detection: tracks to write and compare."""
    compact = preset("compact")
    keep_all = dataclasses.replace(compact.tracker, track_score_threshold=0.0, new_score_threshold=0.0)
    torch.manual_seed(0)
    return save_model(build_model(compact.replace(tracker=keep_all)),
                      tmp_path_factory.mktemp("weights") / "detecting.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three clips (two called clip.mp4), a frame directory whose last frame has another size (it
    fails part-way, after some jsonl lines) and a missing file (refused before any model runs)."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "a").mkdir()
    (root / "b").mkdir()
    first = write_video(root / "a" / "clip.mp4", striped_clip(FRAMES, 48, 64), 12.0)
    second = write_video(root / "b" / "clip.mp4", noisy_striped_clip(FRAMES, 48, 64), 12.0)
    third = write_video(root / "lines.mp4", striped_clip(FRAMES, 48, 80), 12.0)
    uneven = root / "uneven"
    write_frames(uneven, striped_clip(2, 48, 64))
    write_frames(uneven / "tail", [np.zeros((40, 64, 3), dtype=np.uint8)])[0].rename(uneven / "00010.jpg")
    (uneven / "tail").rmdir()
    return [str(first), str(uneven), str(root / "missing.mp4"), str(second), str(third)]


def segment(inputs: list[str], weights: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A real `vpp segment` process: the workers' stderr is the command's too."""
    return subprocess.run([sys.executable, "-m", "vppcli", "segment", *inputs, "-o", str(out), "--weights",
                           str(weights), *SETTINGS, *FORMATS, *extra], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def runs(inputs: list[str], weights: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ...]:
    """(one process's output directory, two shards' one) after checking that both ran."""
    root = tmp_path_factory.mktemp("runs")
    one, two = segment(inputs, weights, root / "one"), segment(inputs, weights, root / "two", "--shards", "2")
    for completed in (one, two):
        assert completed.returncode == 3, completed.stderr  # the missing file's code: the first failure
        assert "Traceback" not in completed.stderr
    (root / "one.out").write_text(one.stdout)
    (root / "two.out").write_text(two.stdout)
    (root / "two.err").write_text(two.stderr)
    return root / "one", root / "two"


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def stdout_of(out: Path) -> tuple[list[str], dict]:
    *lines, summary = out.with_name(out.name + ".out").read_text().splitlines()
    return lines, json.loads(summary)["summary"]


def test_two_shards_write_the_files_of_one_process(runs: tuple[Path, Path]) -> None:
    one, two = runs
    written = files(one)
    assert {name.split("/")[0] for name in written} == {"clip", "clip-2", "lines"}  # uneven failed: no directory
    assert {"clip/ytvis.json", "clip-2/.vpp-run.json", "lines/masks/000004.png"} <= set(written)
    assert json.loads(written["clip-2/ytvis.json"])  # tracks were found: the comparison compares something
    assert files(two) == written  # byte for byte, the run records included


def test_two_shards_print_the_stdout_of_one_process(runs: tuple[Path, Path]) -> None:
    (one_lines, one_summary), (two_lines, two_summary) = (stdout_of(out) for out in runs)
    # Input order, and the uneven directory's two frames before it failed, as one process streams them.
    assert two_lines == one_lines
    assert all(json.loads(line)["instances"] for line in one_lines)
    assert [(json.loads(line)["video"], json.loads(line)["frame"]) for line in one_lines][:FRAMES + 2] == \
        [("clip", f) for f in range(FRAMES)] + [("uneven", 0), ("uneven", 1)]

    def stable(summary: dict, out: Path) -> dict:  # without the timings, outputs relative to the run's directory
        videos = [{**{k: v[k] for k in ("name", "source", "video_id", "frames", "tracks")},
                   "outputs": [str(Path(o).relative_to(out)) for o in v["outputs"]]} for v in summary["videos"]]
        return {"videos": videos, "failed": summary["failed"], "frames": summary["frames"]}

    assert stable(two_summary, runs[1]) == stable(one_summary, runs[0])
    assert [v["name"] for v in two_summary["videos"]] == ["clip", "clip-2", "lines"]


def test_each_bad_input_is_reported_once_and_the_others_are_written(inputs: list[str],
                                                                    runs: tuple[Path, Path]) -> None:
    _, two = runs
    errors = [line for line in two.with_name("two.err").read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert any(inputs[2] in line for line in errors) and any("00010.jpg" in line for line in errors)
    _, summary = stdout_of(two)
    assert [f["input"] for f in summary["failed"]] == [inputs[2], inputs[1]]  # refused first, then as they ran
    assert [v["video_id"] for v in summary["videos"]] == [1, 4, 5]


def test_more_shards_than_inputs_leave_ranks_idle(inputs: list[str], weights: Path, runs: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    one, _ = runs
    done = CliRunner().invoke(app, ["segment", inputs[4], "-o", str(tmp_path), "--weights", str(weights), *SETTINGS,
                                    *FORMATS, "--shards", "2"])  # rank 1 has nothing to do
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[:-1] == [line for line in stdout_of(one)[0] if json.loads(line)["video"] == "lines"]
    masks = {name: data for name, data in files(one).items() if name.startswith("lines/masks/")}
    assert masks and {name: data for name, data in files(tmp_path).items() if name in masks} == masks


def test_torchrun_ranks_give_the_outputs_of_one_process(inputs: list[str], weights: Path, runs: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    one, _ = runs
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vppcli",
               "segment", *inputs, "-o", str(tmp_path / "out"), "--weights", str(weights), *SETTINGS, *FORMATS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    # torchrun exits 1 when a rank fails; rank 0 exits with the run's code, 3 (the other ranks with 0).
    assert done.returncode == 1 and re.search(r"exitcode\s*:\s*3\b", done.stderr), done.stderr[-2000:]
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 2
    assert files(tmp_path / "out") == files(one)
    assert done.stdout.splitlines()[:-1] == stdout_of(one)[0]  # jsonl printed once, by rank 0, in input order


def test_shards_under_torchrun_are_refused(inputs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["segment", inputs[0], "-o", str(tmp_path), "--preset", "compact",
                                          *SETTINGS, "--shards", "2"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --shards cannot be combined with torchrun; use --nproc-per-node instead"]
    assert not any(tmp_path.iterdir())
