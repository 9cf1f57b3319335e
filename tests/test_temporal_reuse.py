"""Sparse temporal reuse in the pixel decoder (`vppcli.model.temporal_reuse`): off changes nothing,
budget 1 is the dense decoder, a small budget computes less, the state is bounded and reset,
and refreshes happen periodically and on a shot cut."""

from __future__ import annotations

import pytest
import torch
from helpers import dense_twin, moving_clip
from typer.testing import CliRunner

from vppcli.cli import app
from vppcli.config import preset
from vppcli.efficiency import EfficiencyMeter
from vppcli.inference import VideoPredictor
from vppcli.model.flops import frame_flops
from vppcli.model.mask2former import HeadOutput
from vppcli.model.rovis import VppModel, build_model
from vppcli.model.temporal_reuse import TemporalReuse, kept_on_grids, relative_change, select_queries
from vppcli.model.tile_conv import conv_tiles, scatter_tiles, take_tiles
from vppcli.results import FrameStats
from vppcli.segmenter import Segmenter

LONG_SIDE = 96  # 64x96 frames: a 4x6 patch grid, 6 + 24 + 96 = 126 encoder tokens
ENCODER_TOKENS = 126
FPN_TILES = 2 * 3  # 8x8-pixel tiles of the 16x24 stride-4 map
NEVER = 10_000  # a refresh period longer than any clip here


@pytest.fixture(scope="module")
def model() -> VppModel:
    return build_model(preset("compact"), seed=3)


def run(model: VppModel, frames, reuse: TemporalReuse | None, monkeypatch: pytest.MonkeyPatch,
        keep_ratio: float | None = 0.45) -> tuple[list[HeadOutput], list[FrameStats], VideoPredictor]:
    """Head outputs and stats of every frame of one video."""
    heads: list[HeadOutput] = []
    decode = model.head.decode_queries

    def spy(*args, **kwargs):
        heads.append(decode(*args, **kwargs))
        return heads[-1]

    monkeypatch.setattr(model.head, "decode_queries", spy)
    predictor = VideoPredictor(model, keep_ratio=keep_ratio, long_side=LONG_SIDE, reuse=reuse)
    state = predictor.new_video()
    stats = [predictor.step(state, frame).stats for frame in frames]
    monkeypatch.undo()
    return heads, stats, predictor


def test_off_is_the_plain_dense_decoder_bit_for_bit(model, monkeypatch):
    frames = moving_clip(3)
    heads, stats, _ = run(model, frames, None, monkeypatch)
    assert all(type(s) is FrameStats for s in stats)
    # The same frames through the pixel decoder's plain forward, called as before the mode existed.
    pixel_decoder = model.head.pixel_decoder
    calls = []
    original = pixel_decoder.forward

    def recording(features):
        calls.append(features)
        return original(features)

    monkeypatch.setattr(pixel_decoder, "forward", recording)
    again, _, _ = run(model, frames, None, monkeypatch)
    assert len(calls) == len(frames)  # off, the dense forward runs every frame
    for a, b in zip(heads, again):
        assert torch.equal(a.class_logits, b.class_logits) and torch.equal(a.mask_logits, b.mask_logits)


def test_budget_one_with_every_token_a_candidate_matches_dense(model, monkeypatch):
    frames = moving_clip(5)
    dense, _, _ = run(model, frames, None, monkeypatch)
    everything = TemporalReuse(budget=1.0, change_threshold=0.0, refresh_every=NEVER)
    reused, stats, _ = run(model, frames, everything, monkeypatch)
    assert [s.reuse_refreshed for s in stats] == [True, False, False, False, False]
    assert all(s.encoder_queries == ENCODER_TOKENS for s in stats)
    for a, b in zip(dense, reused):
        torch.testing.assert_close(b.class_logits, a.class_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.mask_logits, a.mask_logits, rtol=1e-5, atol=1e-4)


def test_small_budget_computes_fewer_queries_and_flops(model, monkeypatch):
    frames = moving_clip(5)
    budget = TemporalReuse(budget=0.25, change_threshold=0.0, refresh_every=NEVER)
    dense_heads, dense_stats, predictor = run(model, frames, None, monkeypatch)
    heads, stats, _ = run(model, frames, budget, monkeypatch)
    assert stats[0].encoder_queries == ENCODER_TOKENS  # the first frame is dense
    assert all(s.encoder_queries == int(0.25 * ENCODER_TOKENS) for s in stats[1:])
    assert not torch.equal(heads[-1].mask_logits, dense_heads[-1].mask_logits)  # something was reused
    config = predictor.config
    for dense_frame, frame in zip(dense_stats[1:], stats[1:]):
        dense_flops = frame_flops(config, dense_frame.padded_size, dense_frame.tokens_per_block)
        flops = frame_flops(config, frame.padded_size, frame.tokens_per_block,
                            encoder_queries=frame.encoder_queries)
        assert flops.pixel_decoder < dense_flops.pixel_decoder
        assert flops.backbone == dense_flops.backbone
        # the per-query work (all but the value projections) scales with the queries computed
        encoder = frame_flops(config, frame.padded_size, frame.tokens_per_block, encoder_queries=frame.encoder_queries)
        none = frame_flops(config, frame.padded_size, frame.tokens_per_block, encoder_queries=0)
        saved = (dense_flops.pixel_decoder - encoder.pixel_decoder) / (dense_flops.pixel_decoder - none.pixel_decoder)
        assert saved == pytest.approx(1 - frame.encoder_queries / ENCODER_TOKENS)
        # and the FPN convolution with its pixels: whole tiles, at most the budget's share of them
        assert frame.fpn_pixels % 64 == 0 and 0 < frame.fpn_pixels <= int(0.25 * FPN_TILES) * 64
        fpn = frame_flops(config, frame.padded_size, frame.tokens_per_block, fpn_pixels=frame.fpn_pixels)
        assert fpn.pixel_decoder < dense_flops.pixel_decoder
    dense_meter, meter = EfficiencyMeter(), EfficiencyMeter()
    for dense_frame, frame in zip(dense_stats, stats):
        dense_meter.add_frame(config, dense_frame)
        meter.add_frame(config, frame)
    assert meter.gflops_sums["head"] < dense_meter.gflops_sums["head"]


def test_deterministic(model, monkeypatch):
    frames = moving_clip(4)
    settings = TemporalReuse(budget=0.3)
    first, first_stats, _ = run(model, frames, settings, monkeypatch)
    second, second_stats, _ = run(model, frames, settings, monkeypatch)
    assert [s.encoder_queries for s in first_stats] == [s.encoder_queries for s in second_stats]
    for a, b in zip(first, second):
        assert torch.equal(a.mask_logits, b.mask_logits)


def test_state_is_bounded_and_reset_clears_it(model):
    predictor = VideoPredictor(model, keep_ratio=0.45, long_side=LONG_SIDE,
                               reuse=TemporalReuse(budget=0.3, refresh_every=NEVER))
    state = predictor.new_video()
    sizes = []
    for frame in moving_clip(6):
        predictor.step(state, frame)
        sizes.append(state.num_bytes())
    assert state.reuse_cache is not None
    channels, layers = model.config.head.feat_channels, model.config.head.num_encoder_layers
    fpn_pixels = FPN_TILES * 64
    # one frame's states: the encoder's input and layer outputs, the FPN convolution's input and output
    assert state.reuse_cache.num_bytes() == ((1 + layers) * ENCODER_TOKENS + 2 * fpn_pixels) * channels * 4
    assert len(set(sizes[1:])) == 1  # nothing grows with the video
    state.reset()
    assert state.reuse_cache is None
    assert predictor.step(state, moving_clip(1)[0]).stats.reuse_refreshed  # a first frame again


def test_refresh_every_n_frames(model, monkeypatch):
    _, stats, _ = run(model, moving_clip(7), TemporalReuse(budget=0.3, refresh_every=3), monkeypatch)
    assert [s.reuse_refreshed for s in stats] == [True, False, False, True, False, False, True]


def test_shot_cut_refreshes_the_frame_after_the_cut(model, monkeypatch):
    clip = moving_clip(4, seed=0) + moving_clip(3, seed=7)  # two unrelated textures
    _, stats, _ = run(model, clip, TemporalReuse(budget=0.3, refresh_every=NEVER), monkeypatch)
    assert [s.reuse_refreshed for s in stats] == [True, False, False, False, True, False, False]
    assert stats[4].reuse_change > max(s.reuse_change for s in stats[1:4])
    assert stats[4].encoder_queries == ENCODER_TOKENS


def test_keep_mask_maps_to_the_encoder_levels():
    keep = torch.zeros(1, 4 * 6, dtype=torch.bool)
    keep[0, 0] = True  # the top-left patch
    kept = kept_on_grids(keep, (4, 6), [(2, 3), (4, 6), (8, 12)])
    assert kept is not None and kept.shape == (6 + 24 + 96,)
    s32, s16, s8 = kept.split([6, 24, 96])
    assert s32.view(2, 3)[0, 0] and s32.sum() == 1
    assert s16.view(4, 6)[0, 0] and s16.sum() == 1
    assert s8.view(8, 12)[:2, :2].all() and s8.sum() == 4
    assert kept_on_grids(None, (4, 6), [(2, 3), (4, 6), (8, 12)]) is None


def test_selection_prefers_kept_tokens_then_the_most_changed():
    change = torch.tensor([0.0, 0.9, 0.2, 0.5, 0.01, 0.3])
    kept = torch.tensor([True, False, False, False, False, False])
    # threshold 0.1: candidates are 0 (kept) and 1, 2, 3, 5; a budget of 3 takes 0, then 1 and 3
    chosen = select_queries(change, kept, TemporalReuse(budget=0.5, change_threshold=0.1))
    assert chosen.tolist() == [0, 1, 3]
    # without a cap every candidate is recomputed, and nothing below the threshold is
    assert select_queries(change, kept, TemporalReuse(budget=1.0, change_threshold=0.1)).tolist() == [0, 1, 2, 3, 5]
    assert select_queries(change, None, TemporalReuse(budget=1.0, change_threshold=0.0)).numel() == 6


@pytest.mark.parametrize("indices", [[0, 1, 2, 3, 4, 5], [1, 4]])
def test_tile_convolution_is_the_dense_convolution_on_its_tiles(indices):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1, bias=False)
    inputs, previous = torch.randn(1, 5, 16, 24), torch.randn(1, 7, 16, 24)
    chosen = torch.tensor(indices)
    out = scatter_tiles(previous, 8, chosen, conv_tiles(conv, inputs, 8, chosen))
    dense = conv(inputs)
    tile_mask = torch.zeros(6, dtype=torch.bool)
    tile_mask[chosen] = True
    pixels = tile_mask.view(1, 1, 2, 3).repeat_interleave(8, 2).repeat_interleave(8, 3).expand_as(out)
    torch.testing.assert_close(out[pixels], dense[pixels])
    assert torch.equal(out[~pixels], previous[~pixels])
    torch.testing.assert_close(take_tiles(inputs, 8, chosen)[-1], inputs[0, :, 8 * (indices[-1] // 3):][:, :8,
                               8 * (indices[-1] % 3):][:, :, :8])


def test_change_is_scale_free_and_zero_for_the_same_input():
    torch.manual_seed(0)
    reference = torch.randn(1, 10, 8)
    assert relative_change(reference, reference).abs().max() == 0
    moved = reference + 0.1 * torch.randn(1, 10, 8)
    torch.testing.assert_close(relative_change(10 * moved, 10 * reference), relative_change(moved, reference))


@pytest.mark.parametrize("settings", [{"budget": 0.0}, {"budget": 1.5}, {"refresh_every": 0},
                                      {"change_threshold": -1.0}])
def test_invalid_settings_are_refused(settings):
    with pytest.raises(ValueError):
        TemporalReuse(**settings)


def test_segmenter_passes_the_mode_through(model):
    settings = TemporalReuse(budget=0.2)
    assert Segmenter(model, reuse=settings).predictor.reuse is settings
    assert Segmenter(model).predictor.reuse is None  # off by default


@pytest.mark.parametrize("command", ["segment", "bench"])
def test_cli_option_is_off_by_default_and_checked(command):
    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, [command, "--help"]).stdout.replace("│", " ").split())
    assert "--reuse BUDGET" in help_text and "[default: (off)]" in help_text
    refresh = TemporalReuse().refresh_every
    assert f"every {refresh} frames" in help_text  # the help states the real defaults
    assert f"{TemporalReuse().change_threshold:.0%}" in help_text.replace(" %", "%")
    args = [command, "clip.mp4"] if command == "segment" else [command]
    result = runner.invoke(app, [*args, "--reuse", "0"])
    assert result.exit_code == 2 and "reuse budget must be in (0, 1]" in result.stderr


def test_a_static_clip_without_keep_masks_recomputes_nothing(model, monkeypatch):
    # A dense model hands out no keep masks, so only changed tokens and tiles are candidates.
    frame = moving_clip(1)[0]
    heads, stats, _ = run(dense_twin(model), [frame] * 3, TemporalReuse(budget=0.5), monkeypatch, keep_ratio=None)
    assert [(s.encoder_queries, s.fpn_pixels) for s in stats] == [(ENCODER_TOKENS, FPN_TILES * 64), (0, 0), (0, 0)]
    assert torch.equal(heads[2].mask_logits, heads[0].mask_logits)  # all reused: exactly the first frame's
