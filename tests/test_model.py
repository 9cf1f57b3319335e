"""The VPP model end to end on small frames: shapes, pruning semantics, streaming state."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vppcli.model.backbone as backbone_module
from vppcli.config import PreprocessConfig, preset
from vppcli.inference import VideoPredictor
from vppcli.model.flops import frame_flops, vit_block_macs
from vppcli.model.official_keys import is_reference_unused, official_to_vppcli
from vppcli.model.pruning import PruningPlan, keep_budgets
from vppcli.model.rovis import build_model
from vppcli.preprocess import frame_geometry, preprocess_frame

from helpers import KEY_LISTS, dense_twin, moving_clip

H, W = 64, 96  # 4 x 6 patch grid
N = (H // 16) * (W // 16)


def _frame_tensor(frame):
    return preprocess_frame(frame, PreprocessConfig(long_side=W))[0]


@pytest.mark.parametrize("name", ["tiny", "small", "compact"])
def test_output_shapes(name):
    torch.manual_seed(0)
    config = preset(name)
    model = build_model(config)
    images = torch.randn(1, 3, H, W)
    with torch.inference_mode():
        out = model(images, track_queries=torch.randn(1, 2, config.head.feat_channels))
    dim = config.vit.embed_dim
    assert [tuple(f.shape) for f in out.backbone.features] == [
        (1, dim, H // 4, W // 4), (1, dim, H // 8, W // 8), (1, dim, H // 16, W // 16), (1, dim, H // 32, W // 32)
    ]
    queries = config.head.num_queries + 2
    assert out.head.class_logits.shape == (1, queries, config.head.num_classes + 1)
    assert out.head.mask_logits.shape == (1, queries, H // 4, W // 4)
    assert out.head.query_features.shape == (1, queries, config.head.feat_channels)
    cache = out.backbone.cache
    assert cache.keys.shape == cache.values.shape == (1, N, dim) and cache.active.shape == (1, N)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_state_dict_maps_one_to_one_onto_the_official_keys(name):
    path = KEY_LISTS / f"keys_vpp_{name}.txt"
    official = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            official[key] = tuple(json.loads(shape))
    ours = {k: tuple(v.shape) for k, v in build_model(preset(name)).state_dict().items()}
    mapped = {official_to_vppcli(k): s for k, s in official.items() if not is_reference_unused(k)}
    assert len(mapped) == len(official) - 3  # init_mlp.weight, norm_input.{weight,bias}
    assert mapped == ours


def test_first_frame_is_dense_up_to_block_2_and_later_frames_follow_the_budgets(compact_model):
    clip = moving_clip(3, H, W)
    for ratio in (0.3, 0.45, 0.7):
        predictor = VideoPredictor(compact_model, keep_ratio=ratio, long_side=W)
        state = predictor.new_video()
        budgets = list(keep_budgets(compact_model.config.pruning.trained_fractions(12), ratio, N))
        first = predictor.step(state, clip[0]).stats
        assert first.tokens_per_block[:3] == [N, N, N]
        assert first.tokens_per_block[3:] == budgets[3:]  # selective modules prune the first frame too
        assert first.map_candidates is None  # no previous frame: no Map-SM
        for frame in clip[1:]:
            stats = predictor.step(state, frame).stats
            assert stats.tokens_per_block == budgets
            # the Map-SM compares against the tokens active in the previous frame's cache block
            assert stats.map_candidates == budgets[compact_model.config.pruning.cache_block]


def test_native_mode_uses_the_trained_map_budget(compact_model):
    predictor = VideoPredictor(compact_model, long_side=W)
    state = predictor.new_video()
    clip = moving_clip(2, H, W)
    first = predictor.step(state, clip[0]).stats.tokens_per_block
    second = predictor.step(state, clip[1]).stats.tokens_per_block
    assert first[:3] == [N] * 3
    assert second[1] == second[2] == int(N * 0.7)
    assert all(a >= b for a, b in zip(second[1:], second[2:]))


def test_keep_ratio_one_equals_the_dense_path(compact_model):
    dense = dense_twin(compact_model)
    clip = moving_clip(3, H, W)
    plan = PruningPlan(budgets=(N,) * 12)
    cache = None
    with torch.inference_mode():
        for frame in clip:
            images = _frame_tensor(frame)
            pruned_out = compact_model(images, cache=cache, plan=plan)
            dense_out = dense(images)
            cache = pruned_out.backbone.cache
            assert pruned_out.backbone.tokens_per_block == [N] * 12
            for a, b in zip(pruned_out.backbone.features, dense_out.backbone.features):
                assert (a - b).abs().max().item() < 1e-5
            for a, b in ((pruned_out.head.class_logits, dense_out.head.class_logits),
                         (pruned_out.head.mask_logits, dense_out.head.mask_logits)):
                assert (a - b).abs().max().item() < 1e-5


def _run_video(model, frames, **kwargs):
    predictor = VideoPredictor(model, long_side=W, **kwargs)
    state = predictor.new_video()
    outputs = [_frame_outputs(model, predictor, state, frame) for frame in frames]
    return outputs, state, predictor


def _frame_outputs(model, predictor, state, frame):
    """Head logits plus tokens of one step (hooks the head to capture its raw outputs)."""
    captured = {}
    original = model.head.decode_queries

    def spy(*args, **kwargs):
        captured["head"] = original(*args, **kwargs)
        return captured["head"]

    model.head.decode_queries = spy
    try:
        instances = predictor.step(state, frame)
    finally:
        del model.head.decode_queries
    return captured["head"].class_logits.clone(), captured["head"].mask_logits.clone(), instances.stats.tokens_per_block


@pytest.mark.parametrize("kwargs", [{}, {"keep_ratio": 0.45}])
def test_two_runs_are_identical(compact_model, kwargs):
    clip = moving_clip(4, H, W)
    first, _, _ = _run_video(compact_model, clip, **kwargs)
    second, _, _ = _run_video(compact_model, clip, **kwargs)
    for (c1, m1, t1), (c2, m2, t2) in zip(first, second):
        assert torch.equal(c1, c2) and torch.equal(m1, m2) and t1 == t2


def test_reference_noise_mode_is_reproducible_per_seed(compact_model):
    clip = moving_clip(3, H, W)
    a, _, _ = _run_video(compact_model, clip, reference_noise=True, seed=3)
    b, _, _ = _run_video(compact_model, clip, reference_noise=True, seed=3)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))


def test_masks_never_reactivate_tokens(compact_model, monkeypatch):
    seen: list[set[int]] = []
    original = backbone_module.run_on_active

    def recording(block, x, active_indices):
        seen.append(set(range(x.shape[1])) if active_indices is None else set(active_indices.tolist()))
        return original(block, x, active_indices)

    monkeypatch.setattr(backbone_module, "run_on_active", recording)
    for kwargs in ({}, {"keep_ratio": 0.4}, {"reference_noise": True}):
        predictor = VideoPredictor(compact_model, long_side=W, **kwargs)
        state = predictor.new_video()
        for frame in moving_clip(3, H, W):
            seen.clear()
            predictor.step(state, frame)
            assert len(seen) == 12
            for earlier, later in zip(seen[1:], seen[2:]):
                assert later <= earlier


def test_state_memory_does_not_grow(compact_model):
    predictor = VideoPredictor(compact_model, keep_ratio=0.5, long_side=W)
    state = predictor.new_video()
    sizes = []
    for frame in moving_clip(50, H, W):
        predictor.step(state, frame)
        sizes.append(state.num_bytes())
    assert max(sizes[1:]) == sizes[1]


def test_reset_makes_videos_independent(compact_model):
    video_a, video_b = moving_clip(3, H, W, seed=1), moving_clip(3, H, W, seed=2)
    fresh, _, _ = _run_video(compact_model, video_b, keep_ratio=0.5)
    predictor = VideoPredictor(compact_model, keep_ratio=0.5, long_side=W)
    state = predictor.new_video()
    for frame in video_a:
        predictor.step(state, frame)
    state.reset()
    assert state.frame_index == 0 and state.cache is None
    after_reset = [_frame_outputs(compact_model, predictor, state, f) for f in video_b]
    for (c1, m1, t1), (c2, m2, t2) in zip(fresh, after_reset):
        assert torch.equal(c1, c2) and torch.equal(m1, m2) and t1 == t2


def test_empty_previous_mask_is_treated_as_a_first_frame(compact_model):
    clip = moving_clip(2, H, W)
    with torch.inference_mode():
        first = compact_model(_frame_tensor(clip[0]))
        cache = first.backbone.cache
        cache.active = torch.zeros_like(cache.active)
        second = compact_model(_frame_tensor(clip[1]), cache=cache)
    assert second.backbone.tokens_per_block[:3] == [N] * 3


def test_pruned_blocks_really_do_fewer_matmul_flops(compact_model):
    """Counted by torch's dispatcher: the ViT blocks' linear layers scale with kept tokens."""
    config = compact_model.config
    images = _frame_tensor(moving_clip(1, H, W)[0])
    budgets = keep_budgets(config.pruning.trained_fractions(12), 0.45, N)
    with torch.inference_mode():
        cache = compact_model(images).backbone.cache
        with FlopCounterMode(display=False) as counter:
            out = compact_model.backbone(images, cache=cache, plan=PruningPlan(budgets=budgets))
    counts = counter.get_flop_counts()
    counted = sum(sum(counts.get(f"SelectiveViTAdapter.blocks.{i}", {}).values()) for i in range(12))
    expected = sum(2 * vit_block_macs(n, config.vit.embed_dim, config.vit.mlp_ratio)[0]
                   for n in out.tokens_per_block)
    assert out.tokens_per_block == list(budgets)
    assert counted == expected
    analytic = frame_flops(config, (H, W), out.tokens_per_block)
    dense = frame_flops(config, (H, W), [N] * 12)
    assert analytic.vit_blocks < 0.5 * dense.vit_blocks


def test_bf16_autocast_runs(compact_model):
    predictor = VideoPredictor(compact_model, keep_ratio=0.45, long_side=W, dtype=torch.bfloat16)
    state = predictor.new_video()
    captured = []
    for frame in moving_clip(2, H, W):
        captured.append(_frame_outputs(compact_model, predictor, state, frame))
    assert all(torch.isfinite(c).all() and torch.isfinite(m).all() for c, m, _ in captured)


def test_preprocessing_geometry_matches_the_reference():
    config = preset("tiny").preprocess
    assert frame_geometry(720, 1280, config).image_size == (540, 960)
    assert frame_geometry(720, 1280, config).padded_size == (544, 960)
    assert frame_geometry(480, 640, config).padded_size == (736, 960)
    assert frame_geometry(480, 640, config).grid == (46, 60)
