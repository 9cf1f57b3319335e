"""`vpp convert` and the official -> vppcli conversion, on synthetic official-format checkpoints
(random tensors with exactly the keys and shapes of tests/data/keys_vpp_*.txt)."""

from __future__ import annotations

import copy
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vppcli.checkpoints import convert_official, load_model, load_official, read_metadata
from vppcli.checkpoints.convert import identify_schedule
from vppcli.checkpoints.schedules import SCHEDULES, with_schedule
from vppcli.cli import app
from vppcli.config import preset
from vppcli.errors import CheckpointError, UsageError
from vppcli.model.official_keys import is_reference_unused, official_to_vppcli, vppcli_to_official

from official_checkpoint import (
    MAP_SM,
    config_text,
    fill_directly,
    mmengine_checkpoint,
    official_shapes,
    random_official_state,
    save_official,
)

runner = CliRunner()
TINY_04 = config_text(0.6, (0.42, 0.294, 0.206), work_dir="output/vpp_vitTiny_4xb2_6e_0.4PKR")


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return random_official_state("tiny")


def _outputs(model, frames):
    """Head outputs of two consecutive frames (the second one uses the Map-SM)."""
    outputs, cache = [], None
    with torch.inference_mode():
        for frame in frames:
            out = model(frame, cache=cache)
            outputs += [out.head.class_logits, out.head.mask_logits]
            cache = out.backbone.cache
    return outputs


@pytest.mark.parametrize(("variant", "cfg", "schedule"), [
    ("tiny", TINY_04, "0.4"),
    ("small", None, "0.55"),  # no config in its meta: the user names the schedule
], ids=["tiny", "small"])  # fmt: skip
def test_convert_loads_strictly_and_matches_a_directly_filled_model(variant, cfg, schedule, tmp_path: Path):
    state = random_official_state(variant, seed=1)
    src = save_official(mmengine_checkpoint(state, cfg=cfg), tmp_path / f"{variant}.pth")
    args = ["convert", str(src), str(tmp_path / "out.safetensors"), "--json"]
    result = runner.invoke(app, args + ([] if cfg else ["--schedule", schedule]))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["variant"] == variant and summary["schedule"] == schedule
    assert len(summary["ignored"]) == 3 and not summary["missing"] and not summary["unexpected"]

    converted = load_model(tmp_path / "out.safetensors")  # strict
    map_ratio, selective = SCHEDULES[schedule]
    assert converted.config == with_schedule(preset(variant), map_ratio, selective)
    assert summary["num_parameters"] == sum(p.numel() for p in converted.parameters())
    # The reference: the same (checked) architecture, every tensor copied from the official names.
    reference = fill_directly(copy.deepcopy(converted), state)
    frames = [torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    for ours, theirs in zip(_outputs(converted, frames), _outputs(reference, frames)):
        assert torch.equal(ours, theirs)
    with torch.no_grad():
        reference.head.cls_embed.bias.add_(1.0)  # the comparison can fail
    assert not torch.equal(_outputs(converted, frames[:1])[0], _outputs(reference, frames[:1])[0])

    metadata = read_metadata(tmp_path / "out.safetensors")
    assert metadata.provenance["source"] == f"{variant}.pth"
    assert len(metadata.provenance["source_sha256"]) == 64 and metadata.provenance["converter"].startswith("vppcli")
    assert metadata.dataset == "YouTube-VIS 2021" and "without a stated licence" in metadata.license


def test_every_official_key_maps_and_maps_back():
    for variant in ("tiny", "small"):
        for key in official_shapes(variant):
            if not is_reference_unused(key):
                assert vppcli_to_official(official_to_vppcli(key)) == key


def test_widths_are_read_from_the_tensor_shapes(tiny_state):
    """Selective modules and a Map-SM of other widths than the presets' (the Small widths in the
    key list are an assumption) still convert."""
    state = dict(tiny_state)
    for i in range(3):
        state[f"detector.backbone.selective_modules.{i}.mlp.fc1.weight"] = torch.zeros(64, 192)
        state[f"detector.backbone.selective_modules.{i}.mlp.fc1.bias"] = torch.zeros(64)
        state[f"detector.backbone.selective_modules.{i}.mlp.fc2.weight"] = torch.zeros(2, 64)
    state[MAP_SM + "selector.fc1.weight"] = torch.zeros(100, 192)
    state[MAP_SM + "selector.fc1.bias"] = torch.zeros(100)
    state[MAP_SM + "selector.fc2.weight"] = torch.zeros(2, 100)
    conversion = convert_official({"state_dict": state, "meta": {}}, schedule="0.4")
    assert conversion.config.pruning.selective_hidden_dim == 64
    assert conversion.config.pruning.map_hidden_dim == 100
    assert conversion.report.complete


def test_legacy_map_sm_with_dist_scale_converts(tiny_state):
    legacy = random_official_state("tiny", legacy_map=True)
    conversion = convert_official(mmengine_checkpoint(legacy, cfg=TINY_04))
    report = conversion.report
    assert report.complete and report.map_module == "legacy (dist_scale)"
    assert report.ignored == (MAP_SM + "dist_scale",)
    assert any("dist_scale" in note and "34x60" in note for note in report.notes)
    assert torch.equal(conversion.tensors["backbone.map_selective_module.mlp.fc1.weight"],
                       legacy[MAP_SM + "selector.fc1.weight"])


def test_dense_checkpoints_convert_without_pruning(tiny_state):
    dense = random_official_state("tiny", dense=True)
    conversion = convert_official(mmengine_checkpoint(dense))
    assert conversion.report.complete and conversion.report.block_style == "timm"
    assert conversion.report.schedule == "dense" and not conversion.config.pruning.enabled
    assert conversion.config.vit.norm_eps == 1e-6
    assert torch.equal(conversion.tensors["backbone.blocks.4.attn.qkv.weight"],
                       dense["detector.backbone.blocks.4.attn.qkv.weight"])
    with pytest.raises(UsageError, match="dense checkpoint"):
        convert_official(mmengine_checkpoint(dense), schedule="0.4")


@pytest.mark.parametrize(("edit", "named"), [
    ("missing", "detector.backbone.blocks.3.TransformerEncoderLayer.linear1.weight"),
    ("extra", "detector.backbone.blocks.12.TransformerEncoderLayer.linear1.weight"),
    ("shape", "detector.panoptic_head.query_feat.weight: checkpoint [99, 256] vs model [100, 256]"),
])  # fmt: skip
def test_incomplete_checkpoints_are_refused_naming_the_key(tiny_state, edit: str, named: str):
    state = dict(tiny_state)
    if edit == "missing":
        del state["detector.backbone.blocks.3.TransformerEncoderLayer.linear1.weight"]
    elif edit == "extra":
        state["detector.backbone.blocks.12.TransformerEncoderLayer.linear1.weight"] = torch.zeros(3)
    else:
        state["detector.panoptic_head.query_feat.weight"] = torch.zeros(99, 256)
    with pytest.raises(CheckpointError) as error:
        convert_official(mmengine_checkpoint(state, cfg=TINY_04))
    assert named in str(error.value) and "--allow-partial" in str(error.value)


def test_cli_refusal_is_one_line_with_the_key_and_writes_nothing(tiny_state, tmp_path: Path):
    state = dict(tiny_state)
    del state["detector.panoptic_head.cls_embed.bias"]
    src = save_official(mmengine_checkpoint(state, cfg=TINY_04), tmp_path / "broken.pth")
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 4
    assert "detector.panoptic_head.cls_embed.bias" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pth"]


def test_allow_partial_writes_a_file_that_loads_only_non_strictly(tiny_state, tmp_path: Path):
    state = dict(tiny_state)
    del state["detector.panoptic_head.cls_embed.bias"]
    src = save_official(mmengine_checkpoint(state, cfg=TINY_04), tmp_path / "broken.pth")
    dst = tmp_path / "partial.safetensors"
    result = runner.invoke(app, ["convert", str(src), str(dst), "--allow-partial"])
    assert result.exit_code == 0, result.output
    assert "detector.panoptic_head.cls_embed.bias" in result.stdout
    assert read_metadata(dst).missing_keys == ("head.cls_embed.bias",)
    with pytest.raises(CheckpointError, match="partial conversion"):
        load_model(dst)
    assert load_model(dst, strict=False).head.cls_embed.bias.shape == (41,)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_that_need_code_are_refused_and_never_run(tiny_state, tmp_path: Path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": {"hook": _Payload(str(marker))}}, src)
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 4
    assert "not a weights-only checkpoint" in result.stderr and "pathlib" in result.stderr
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(CheckpointError, match="weights-only|truncated or corrupt"):
        load_official(raw)
    assert not marker.exists()


def test_mmengine_logging_objects_are_skipped_without_running_them(tmp_path: Path, monkeypatch):
    """mmengine stores its message hub (HistoryBuffer objects with numpy arrays) in training
    checkpoints; they are bound to an inert stand-in, and the weights still load."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self.values = np.arange(5.0)

        def __setstate__(self, state) -> None:
            raise AssertionError("the real class must never run")

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    src = tmp_path / "train.pth"
    state = {"detector.backbone.pos_embed": torch.ones(1, 197, 192)}
    torch.save({"state_dict": state, "meta": {"seed": np.int64(3)},
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}}}, src)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, weights_only=True)  # what the stand-ins are for
    loaded = load_official(src)
    assert torch.equal(loaded["state_dict"]["detector.backbone.pos_embed"], state["detector.backbone.pos_embed"])


def test_non_checkpoints_are_named_as_such(tmp_path: Path):
    page = tmp_path / "page.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError, match="HTML"):
        load_official(page)
    torn = tmp_path / "torn.pth"
    torch.save({"state_dict": {"x": torch.zeros(1000)}}, torn)
    torn.write_bytes(torn.read_bytes()[:600])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_official(torn)
    with pytest.raises(CheckpointError, match="no `state_dict`"):
        convert_official({"meta": {}})


def test_schedule_is_identified_from_the_checkpoint_itself():
    assert identify_schedule({"cfg": TINY_04}).selective_keep_ratios == (0.42, 0.294, 0.206)
    assert identify_schedule({"cfg": TINY_04}).map_keep_ratio == 0.6
    custom = identify_schedule({"cfg": config_text(0.65, (0.5, 0.4, 0.3))})
    assert (custom.map_keep_ratio, custom.selective_keep_ratios) == (0.65, (0.5, 0.4, 0.3))
    named = identify_schedule({"experiment_name": "vpp_vitSmall_4xb2_6e_0.55PKR_ytvis21_20240101"})
    assert named.map_keep_ratio == 0.7 and named.source == "checkpoint meta"
    assert identify_schedule({}, "vpp_vitTiny_4xb2_6e_0.4PKR_ytvis21.pth").source == "file name"
    assert identify_schedule({"cfg": "model = dict(type='ROVIS')"}, "epoch_6.pth") is None


def test_schedule_questions(tiny_state, tmp_path: Path):
    silent = mmengine_checkpoint(tiny_state)
    with pytest.raises(UsageError, match="pass --schedule 0.55 or --schedule 0.4"):
        convert_official(silent)
    with pytest.raises(UsageError, match="contradicts the checkpoint's own schedule"):
        convert_official(mmengine_checkpoint(tiny_state, cfg=TINY_04), schedule="0.55")
    hinted = convert_official(mmengine_checkpoint(tiny_state, cfg=TINY_04), schedule_hint="0.55")
    assert hinted.report.schedule == "0.4" and "differs" in hinted.report.notes[0]
    src = save_official(silent, tmp_path / "epoch_6.pth")
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2 and "--schedule" in result.stderr
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "out.safetensors"), "--schedule", "0.3"])
    assert result.exit_code == 2 and "unknown schedule" in result.stderr


def test_class_names_come_from_the_checkpoint_meta(tiny_state):
    names = tuple(f"thing_{i}" for i in range(40))
    conversion = convert_official(mmengine_checkpoint(tiny_state, cfg=TINY_04, classes=names))
    assert conversion.config.class_names == names and conversion.config.category_ids == tuple(range(1, 41))


def test_convert_refuses_to_overwrite_and_info_shows_the_metadata(tiny_state, tmp_path: Path):
    src = save_official(mmengine_checkpoint(tiny_state, cfg=TINY_04), tmp_path / "tiny.pth")
    dst = tmp_path / "tiny.safetensors"
    assert runner.invoke(app, ["convert", str(src), str(dst)]).exit_code == 0
    again = runner.invoke(app, ["convert", str(src), str(dst)])
    assert again.exit_code == 5 and "--overwrite" in again.stderr
    info = runner.invoke(app, ["info", str(dst), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["variant"] == "tiny" and data["schedule"]["name"] == "0.4"
    assert data["overrides"] == {"pruning.map_keep_ratio": 0.6, "pruning.selective_keep_ratios": [0.42, 0.294, 0.206]}
    assert data["provenance"]["source"] == "tiny.pth" and len(data["classes"]) == 40
    table = runner.invoke(app, ["info", str(dst)])
    assert table.exit_code == 0 and "27,729,009" in table.stdout and "0.4: Map-SM keeps 0.6" in table.stdout
    missing = runner.invoke(app, ["info", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 4 and "nope.safetensors" in missing.stderr
