"""The recipes of examples/README.md run as written (the parts that need no model download)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vppcli.cli.segment as segment_cli
from examples.make_clip import scene_frames
from tests.video_files import write_video
from vppcli.cli import app
from vppcli.model.rovis import VppModel

ROOT = Path(__file__).resolve().parents[1]


def python_recipes() -> list[str]:
    """The `python - <<'PY' ... PY` snippets of examples/README.md."""
    text = (ROOT / "examples" / "README.md").read_text()
    return re.findall(r"python - <<'PY'\n(.*?)\nPY", text, flags=re.DOTALL)


def test_the_per_track_mask_recipe_writes_the_track(tmp_path: Path, detecting_model: VppModel,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (snippet,) = python_recipes()
    clip = write_video(tmp_path / "clip.mp4", list(scene_frames(4, 48, 80)), 12.0)
    monkeypatch.setattr(segment_cli, "_load_model", lambda weights, preset, device: detecting_model)
    result = CliRunner().invoke(app, ["segment", str(clip), "-f", "png", "-o", str(tmp_path / "runs/segment"),
                                      "--size", "96", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert completed.returncode == 0, completed.stderr
    masks = tmp_path / "runs/segment/clip/masks"
    for png in sorted(masks.glob("*.png")):
        expected = np.array(Image.open(png)) == 1
        written = np.array(Image.open(tmp_path / "runs/segment/clip/track1" / png.name)) == 255
        np.testing.assert_array_equal(written, expected)
    assert any((np.array(Image.open(p)) == 1).any() for p in masks.glob("*.png"))  # track 1 is really there
