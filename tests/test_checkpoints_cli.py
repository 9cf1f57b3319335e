"""`vpp info` and `vpp weights list` on awkward inputs: paths and metadata that look like rich
markup, malformed metadata, and the bundled model where its file is there and where it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vppcli.checkpoints import save_model
from vppcli.checkpoints.format import METADATA_KEY
from vppcli.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VPP_CACHE", str(cache))
    monkeypatch.setattr("vppcli.checkpoints.registry.bundled_dirs", lambda: (tmp_path / "bundled",))
    return cache


@pytest.fixture(scope="module")
def saved(compact_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(compact_model, tmp_path_factory.mktemp("ckpt") / "compact.safetensors")


def _with_metadata(saved: Path, target: Path, change) -> Path:
    blob = json.loads(safe_open(str(saved), "pt").metadata()[METADATA_KEY])
    change(blob)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(saved)), str(target), metadata={"format": "pt", METADATA_KEY: json.dumps(blob)})
    return target


@pytest.mark.parametrize("directory", ["w[/x]", "clip [final]", "[bold]"])
def test_info_prints_paths_that_look_like_markup_verbatim(saved: Path, tmp_path: Path, directory: str):
    path = tmp_path / directory / "m.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(saved.read_bytes())
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert str(path) in result.stdout
    missing = runner.invoke(app, ["info", str(tmp_path / directory / "nope.safetensors")])
    assert missing.exit_code == 4 and f"{directory}/nope.safetensors" in missing.stderr


def test_info_prints_metadata_that_looks_like_markup_verbatim(saved: Path, tmp_path: Path):
    def change(blob):
        blob["config"]["name"] = "[/bold]x"
        blob["dataset"] = "[final] set"
        blob["provenance"] = {"[/b]key": "[red]value[/]"}

    crafted = _with_metadata(saved, tmp_path / "crafted.safetensors", change)
    result = runner.invoke(app, ["info", str(crafted)])
    assert result.exit_code == 0, result.output
    for text in ("[/bold]x", "[final] set", "[/b]key", "[red]value[/]"):
        assert text in result.stdout, text
    as_json = runner.invoke(app, ["info", str(crafted), "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["variant"] == "[/bold]x"


def test_info_on_malformed_metadata_is_one_error_line(saved: Path, tmp_path: Path):
    crafted = _with_metadata(saved, tmp_path / "bad.safetensors", lambda blob: blob.update(provenance="me"))
    for args in (["info", str(crafted)], ["info", str(crafted), "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 4  # an uncaught exception would exit 1
        assert result.stderr.strip() == (
            f"error: {crafted} has invalid vppcli metadata: provenance must be an object of strings, not a string"
        )


def test_the_bundled_model_is_listed_only_when_its_file_is_there(saved: Path, tmp_path: Path):
    def names() -> list[str]:
        listing = runner.invoke(app, ["weights", "list", "--json"])
        assert listing.exit_code == 0, listing.output
        return [row["name"] for row in json.loads(listing.stdout)["weights"]]

    assert "vpp-compact" not in names()
    assert "vpp-compact" not in runner.invoke(app, ["weights", "list"]).stdout
    info = runner.invoke(app, ["info", "vpp-compact"])
    assert info.exit_code == 4 and "not in this installation" in info.stderr

    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "vpp-compact.safetensors").write_bytes(saved.read_bytes())
    assert names()[0] == "vpp-compact"
    assert runner.invoke(app, ["info", "vpp-compact"]).exit_code == 0


def test_without_a_model_option_the_bundled_model_runs_and_says_what_it_knows(saved: Path, tmp_path: Path):
    from video_files import striped_clip, write_video

    from vppcli.evaluation.runner import ModelSpec
    from vppcli.segmenter import Segmenter

    clip = write_video(tmp_path / "clip.mp4", striped_clip(3))
    missing = runner.invoke(app, ["segment", str(clip), "-o", str(tmp_path / "runs")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: no model: no --weights given and the bundled default model")

    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "vpp-compact.safetensors").write_bytes(saved.read_bytes())
    result = runner.invoke(app, ["segment", str(clip), "-f", "ytvis", "-o", str(tmp_path / "runs"), "--size", "64"])
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "synthetic shape categories" in line]
    assert len(notices) == 1 and "vpp weights download vpp-tiny-pkr53" in notices[0]
    assert (tmp_path / "runs" / "clip" / "ytvis.json").is_file()
    assert ModelSpec().weights == "vpp-compact"
    assert Segmenter.from_weights().config.name == "compact"
