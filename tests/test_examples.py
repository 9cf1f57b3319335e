"""The recipes of examples/README.md run as written (the parts that need no model download): each
```bash block in a shell, and the Python snippet against masks of a model that finds tracks."""

from __future__ import annotations

import os
import re
import shutil
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


# A fenced bash block: from its ```bash line to the closing ``` line.
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", flags=re.DOTALL | re.MULTILINE)


def shell_recipes() -> list[str]:
    """The ```bash blocks of examples/README.md, in the order of the page."""
    return BASH_BLOCK.findall((ROOT / "examples" / "README.md").read_text())


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


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shell recipes run, one after the other as a reader goes down the page (a later one
    may use what an earlier one made): a copy of examples/, a videos/ folder for the batch recipe,
    and tmp/ standing in for /tmp, so that a recipe writes nothing outside the copy."""
    root = tmp_path_factory.mktemp("recipes")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "videos" / "street").mkdir(parents=True)
    write_video(root / "videos" / "street" / "crossing.mp4", list(scene_frames(6, 96, 128)), 12.0)
    (root / "tmp").mkdir()
    return root


@pytest.mark.parametrize("recipe", shell_recipes(), ids=lambda recipe: recipe.splitlines()[0][:50])
def test_the_shell_recipe_runs_as_written(recipe: str, recipe_dir: Path) -> None:
    if re.search(r"\bjq\b", recipe) and shutil.which("jq") is None:
        pytest.skip("the recipe pipes into jq, which is not installed (apt-get install jq)")
    # vpp, python and pip of the environment running the tests, whatever PATH the shell had.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    script = "set -eo pipefail\n" + recipe.replace("/tmp/", f"{recipe_dir / 'tmp'}/")  # a failing step fails it
    done = subprocess.run(["bash", "-c", script], cwd=recipe_dir, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 0, f"{recipe}\n--- exit {done.returncode}, stderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr and "error:" not in done.stderr, done.stderr[-3000:]
