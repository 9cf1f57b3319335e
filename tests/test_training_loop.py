"""`vpp train` end to end on a tiny dataset: the loss goes down, --resume repeats the
uninterrupted run exactly, the ratio loss steers the keep ratios, Ctrl-C saves, bad input is
one line, and trained weights run through the inference path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.ytvis_fixture import build_fixture
from vppcli.checkpoints import load_model
from vppcli.cli import app
from vppcli.errors import CheckpointError, InputError, UsageError
from vppcli.model.pruning import PruningPlan, distance_prior
from vppcli.training.config import TrainConfig, schedule_for_pkr
from vppcli.training.run import run_training
from typer.testing import CliRunner

# Small and quick: 64 px frames (a 4 x 4 patch grid at most), few loss points.
FAST = dict(size=64, num_points=256, threads=1, warmup_steps=1, backbone_lr_mult=1.0, log_every=1, flip=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    fixture = build_fixture(tmp_path_factory.mktemp("ytvis"))
    return str(fixture.annotation_file), str(fixture.images)


def _config(data: tuple[str, str], output: Path, **changes) -> TrainConfig:
    return TrainConfig(data=data[0], images=data[1], output=str(output), **{**FAST, **changes})


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_few_steps_lower_the_loss_and_the_weights_load(data, tmp_path):
    outcome = run_training(_config(data, tmp_path / "run", steps=12, lr=1e-3, save_every=100))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    model = load_model(outcome.last)
    assert model.config.preprocess.long_side == 64
    assert model.config.class_names == ("person", "car", "dog")
    assert not model.config.pruning.enabled  # the dense stage


def _interrupt_at(step: int):
    def interrupt(trainer, result):
        if result.step == step:
            raise KeyboardInterrupt
    return interrupt


def test_resume_repeats_the_uninterrupted_run_exactly(data, tmp_path):
    config = _config(data, tmp_path / "straight", steps=4, save_every=100, stage="vpp", target_pkr=0.5)
    straight = run_training(config)
    split = dataclasses.replace(config, output=str(tmp_path / "split"))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after step 2 saves it
        run_training(split, on_step=_interrupt_at(2))
    resumed = run_training(split, resume=True)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    expected, found = load_model(straight.last).state_dict(), load_model(resumed.last).state_dict()
    assert all(torch.equal(tensor, found[name]) for name, tensor in expected.items())


def test_resume_refuses_changed_settings_and_a_fresh_run_refuses_an_old_one(data, tmp_path):
    config = _config(data, tmp_path / "run", steps=1)
    run_training(config)
    with pytest.raises(UsageError, match="lr"):
        run_training(dataclasses.replace(config, steps=2, lr=0.5), resume=True)
    with pytest.raises(UsageError, match="already holds"):
        run_training(config)
    with pytest.raises(UsageError, match="no checkpoint"):
        run_training(_config(data, tmp_path / "empty", steps=1), resume=True)


def test_the_ratio_loss_moves_keep_ratios_towards_their_targets(data, tmp_path):
    # Only the selective modules learn, fast, towards high targets (untrained ones keep about half
    # of the tokens each): the realised keep ratio rises.
    config = _config(data, tmp_path / "run", stage="vpp", steps=10, lr=3e-2, map_keep_ratio=0.9,
                     selective_keep_ratios=(0.9, 0.85, 0.8), clip_grad_norm=0.0, freeze=("backbone", "head"))
    run_training(config)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["keep_ratio"] > lines[0]["keep_ratio"] + 0.1
    sparsity = [sum(v for k, v in line.items() if k.startswith("sparsity.")) for line in lines]
    assert sparsity[-1] < sparsity[0]


def test_trained_vpp_weights_decide_alike_in_training_and_inference_paths(data, tmp_path):
    outcome = run_training(_config(data, tmp_path / "run", stage="vpp", steps=3, lr=1e-3, size=96))
    model = load_model(outcome.last)
    assert model.config.pruning.enabled
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 64, 96, generator=generator) for _ in range(3)]
    prior = distance_prior(4, 6, torch.device("cpu"))
    masks = {}
    with torch.no_grad():
        for soft in (False, True):
            cache, masks[soft] = None, []
            for images in frames:
                output = model(images, None, cache, PruningPlan(soft=soft, record_masks=True), prior)
                cache = output.backbone.cache
                masks[soft].append([m if m is None or not bool(m.all()) else None for m in output.backbone.block_masks])
    for hard_frame, soft_frame in zip(masks[False], masks[True]):
        for hard, soft in zip(hard_frame, soft_frame):
            assert (hard is None and soft is None) or torch.equal(hard, soft)


def test_init_reports_what_it_loaded_and_refuses_another_architecture(data, tmp_path):
    dense = run_training(_config(data, tmp_path / "dense", steps=1))
    sparse = run_training(_config(data, tmp_path / "vpp", steps=1, stage="vpp", init=str(dense.last)))
    assert sparse.init is not None and sparse.init.kind == "vppcli"
    assert any("selective_modules" in name for name in sparse.init.random)
    assert not sparse.init.reinitialised
    # A timm-style ViT of another width (384) is not this architecture.
    wide = {"blocks.0.attn.qkv.weight": torch.zeros(1152, 384), "pos_embed": torch.zeros(1, 197, 384)}
    save_file(wide, str(tmp_path / "vit_small.safetensors"))
    with pytest.raises(CheckpointError, match="another architecture"):
        run_training(_config(data, tmp_path / "bad", steps=1, init=str(tmp_path / "vit_small.safetensors")))


def test_plain_vit_state_dicts_initialise_the_vit(data, tmp_path):
    vit = {"blocks.0.attn.qkv.weight": torch.full((576, 192), 0.5), "cls_token": torch.zeros(1, 1, 192),
           "pos_embed": torch.zeros(1, 1 + 16 * 16, 192), "norm.weight": torch.ones(192)}
    save_file(vit, str(tmp_path / "vit.safetensors"))
    outcome = run_training(_config(data, tmp_path / "run", steps=1, init=str(tmp_path / "vit.safetensors"), lr=1e-9))
    assert outcome.init is not None and outcome.init.kind == "vit"
    assert set(outcome.init.loaded) == {"backbone.blocks.0.attn.qkv.weight", "backbone.pos_embed"}
    assert "cls_token" in outcome.init.ignored


def test_bad_training_input_is_one_line(data, tmp_path):
    not_ytvis = tmp_path / "x.json"
    not_ytvis.write_text("[1, 2]")
    with pytest.raises(InputError):
        run_training(_config((str(not_ytvis), data[1]), tmp_path / "run", steps=1))
    with pytest.raises(UsageError):
        _config(data, tmp_path / "run", size=100)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data", str(not_ytvis), "--images", data[1], "-o", str(tmp_path / "o")])
    assert result.exit_code == 3
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2


def test_target_pkr_scales_the_trained_schedule():
    from vppcli.config import PruningConfig

    pruning = schedule_for_pkr(PruningConfig(), 0.5)
    assert sum(pruning.trained_fractions(12)) / 12 == pytest.approx(0.5, abs=1e-3)
    assert pruning.selective_keep_ratios[0] < pruning.map_keep_ratio


def test_sigterm_saves_like_ctrl_c(data, tmp_path):
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "vppcli", "train", "--data", data[0], "--images", data[1], "-o", str(run_dir),
               "--size", "64", "--steps", "1000", "--threads", "1", "--log-every", "1", "--save-every", "1000"]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    child.terminate()
    _, errors = child.communicate(timeout=120)
    assert child.returncode == 130, errors
    assert "Traceback" not in errors and "continue with --resume" in errors
    assert (run_dir / "last.safetensors").exists() and (run_dir / "last.state.pt").exists()


def test_the_class_loss_weight_is_an_option(data, tmp_path):
    from vppcli.training.checkpoint import load_state

    runner = CliRunner()
    args = ["train", "--data", data[0], "--images", data[1], "--preset", "compact", "--size", "64", "--steps", "1",
            "--threads", "1", "-q"]
    result = runner.invoke(app, [*args, "--class-weight", "5", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert load_state(tmp_path / "run").config.class_weight == 5.0
    assert runner.invoke(app, [*args, "--class-weight", "-1", "-o", str(tmp_path / "bad")]).exit_code == 2
