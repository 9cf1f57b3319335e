"""The embedding-bag deformable attention against the grid_sample formulation it replaced:
every shape the model uses, points outside the maps, gradients, bf16, and whole-model outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import vppcli.model.deform_attn as deform_attn
from vppcli.config import HeadConfig, preset
from vppcli.inference import VideoPredictor
from vppcli.model.adapter import deform_inputs
from vppcli.model.deform_attn import MSDeformAttn, deformable_sample
from vppcli.model.deform_reference import grid_sample_deformable, grid_sample_forward
from vppcli.model.pixel_decoder import pixel_centres
from vppcli.model.rovis import build_model

from helpers import moving_clip
from official_checkpoint import fill_directly, random_official_state

PADDED = [(64, 96), (96, 160)]  # h/32 = 2 and 3: odd-sized coarse maps included


def _cases(height: int, width: int) -> dict[str, tuple[int, int, list[tuple[int, int]], torch.Tensor]]:
    """(dim, heads, level shapes, reference points) of each deformable attention of the model."""
    inputs = deform_inputs(height, width, torch.device("cpu"))
    head = HeadConfig()
    decoder_shapes = [(height // s, width // s) for s in (32, 16, 8)]
    decoder_points = pixel_centres(decoder_shapes, torch.device("cpu"), torch.float32)
    return {
        "injector-tiny": (192, 6, inputs.injector_shapes, inputs.injector_points),
        "injector-small": (384, 6, inputs.injector_shapes, inputs.injector_points),
        "extractor-tiny": (192, 6, inputs.extractor_shapes, inputs.extractor_points),
        "pixel-decoder": (head.feat_channels, head.num_encoder_heads, decoder_shapes, decoder_points),
    }


def _module(dim: int, heads: int, levels: int, offset_std: float, seed: int = 0) -> MSDeformAttn:
    """Random weights whose offsets reach several pixels, so that many points fall outside."""
    torch.manual_seed(seed)
    module = MSDeformAttn(dim, heads, levels, 4)
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0.0, offset_std)
        module.attention_weights.weight.normal_(0.0, 0.3)
    return module


@pytest.mark.parametrize("padded", PADDED)
@pytest.mark.parametrize("name", ["injector-tiny", "injector-small", "extractor-tiny", "pixel-decoder"])
def test_matches_grid_sample_on_every_model_shape(name, padded):
    dim, heads, shapes, reference = _cases(*padded)[name]
    module = _module(dim, heads, len(shapes), offset_std=0.5)
    generator = torch.Generator().manual_seed(1)
    num_values = sum(h * w for h, w in shapes)
    query = torch.randn(1, reference.shape[1], dim, generator=generator)
    value = torch.randn(1, num_values, dim, generator=generator)
    with torch.no_grad():
        expected = grid_sample_forward(module, query, reference, value, shapes)
        got = module(query, reference, value, shapes)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _sampling_inputs(shapes, num_queries=7, heads=2, head_dim=3, points=2, batch=2, dtype=torch.float64, seed=0):
    """Normalised locations in [-0.6, 1.6] (a third of them outside the map), plus points
    exactly on pixel centres, on the borders and one pixel outside."""
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    num_values = sum(h * w for h, w in shapes)
    values = torch.randn(batch, num_values, heads, head_dim, generator=generator, dtype=dtype)
    locations = torch.rand(batch, num_queries, heads, levels, points, 2, generator=generator, dtype=dtype) * 2.2 - 0.6
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=dtype)
    special = torch.tensor([[0.5, 0.5], [-0.5, 0.0], [0.0, -0.5], [-1.0, 0.5]], dtype=dtype)  # pixels
    special = torch.cat([special, (sizes[0] - 0.5).view(1, 2), sizes[0].view(1, 2) - 1.0 + 0.25])
    locations[0, : special.shape[0], 0, 0, 0] = (special + 0.5) / sizes[0]
    weights = torch.rand(batch, num_queries, heads, levels * points, generator=generator, dtype=dtype)
    weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
    return values, locations, weights


def _fast(values, shapes, locations, weights):
    """`deformable_sample` on the reference's arguments (pixel coordinates, slot-major)."""
    batch, num_queries = locations.shape[:2]
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=locations.dtype)
    pixels = locations * sizes[:, None, :] - 0.5
    pixel_x, pixel_y = (pixels[..., axis].reshape(batch, num_queries, -1) for axis in (0, 1))
    return deformable_sample(values, shapes, pixel_x, pixel_y, weights.reshape(batch, num_queries, -1),
                             locations.shape[4])


@pytest.mark.parametrize("shapes", [[(3, 5)], [(4, 6), (2, 3), (1, 2)]])
def test_outside_points_and_borders_follow_zero_padding(shapes):
    values, locations, weights = _sampling_inputs(shapes)
    expected = grid_sample_deformable(values, shapes, locations, weights)
    torch.testing.assert_close(_fast(values, shapes, locations, weights), expected, rtol=0, atol=1e-12)


def test_points_far_outside_contribute_nothing():
    shapes = [(4, 6), (2, 3)]
    values, locations, weights = _sampling_inputs(shapes, dtype=torch.float32)
    far = torch.tensor([-3.0, 5.0])
    out = _fast(values, shapes, far.expand_as(locations).clone(), weights)
    assert out.abs().max().item() == 0.0


def test_gradcheck_in_float64():
    shapes = [(3, 4), (2, 2)]
    values, locations, weights = _sampling_inputs(shapes, num_queries=6, batch=1)
    # gradcheck perturbs coordinates by 1e-6: keep them away from integer pixels (floor jumps).
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    pixels = locations * sizes[:, None, :] - 0.5
    pixels = pixels.floor() + 0.1 + 0.8 * (pixels - pixels.floor())
    batch, num_queries = pixels.shape[:2]
    pixel_x = pixels[..., 0].reshape(batch, num_queries, -1).requires_grad_()
    pixel_y = pixels[..., 1].reshape(batch, num_queries, -1).requires_grad_()
    flat_weights = weights.reshape(batch, num_queries, -1).requires_grad_()
    values.requires_grad_()

    def sample(v, x, y, w):
        return deformable_sample(v, shapes, x, y, w, locations.shape[4])

    assert torch.autograd.gradcheck(sample, (values, pixel_x, pixel_y, flat_weights))


@pytest.mark.parametrize("name", ["injector-tiny", "extractor-tiny", "pixel-decoder"])
def test_gradients_match_grid_sample(name):
    dim, heads, shapes, reference = _cases(64, 96)[name]
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(2, reference.shape[1], dim, generator=generator)
    value = torch.randn(2, sum(h * w for h, w in shapes), dim, generator=generator)
    upstream = torch.randn(2, reference.shape[1], dim, generator=generator)
    grads = []
    for forward in (MSDeformAttn.forward, grid_sample_forward):
        module = _module(dim, heads, len(shapes), offset_std=0.5)
        q, v = query.clone().requires_grad_(), value.clone().requires_grad_()
        (forward(module, q, reference, v, shapes) * upstream).sum().backward()
        grads.append({"query": q.grad, "value": v.grad, **{n: p.grad for n, p in module.named_parameters()}})
    fast, reference_grads = grads
    for key, expected in reference_grads.items():
        torch.testing.assert_close(fast[key], expected, rtol=1e-4, atol=1e-4, msg=key)


def test_batches_and_per_level_reference_points():
    shapes = [(4, 6), (2, 3), (1, 2)]
    module = _module(32, 4, len(shapes), offset_std=0.5)
    generator = torch.Generator().manual_seed(3)
    reference = torch.rand(3, 5, len(shapes), 2, generator=generator)
    query = torch.randn(3, 5, 32, generator=generator)
    value = torch.randn(3, 32, 32, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(module(query, reference, value, shapes),
                                   grid_sample_forward(module, query, reference, value, shapes), rtol=0, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32():
    dim, heads, shapes, reference = _cases(64, 96)["pixel-decoder"]
    module = _module(dim, heads, len(shapes), offset_std=0.5)
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(1, reference.shape[1], dim, generator=generator)
    with torch.no_grad():
        full = module(query, reference, query, shapes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = module(query, reference, query, shapes)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_rejects_wrong_shapes():
    module = _module(32, 4, 2, offset_std=0.1)
    query, value = torch.zeros(1, 3, 32), torch.zeros(1, 10, 32)
    with pytest.raises(ValueError, match="levels"):
        module(query, torch.zeros(1, 3, 1, 2), value, [(2, 3)])
    with pytest.raises(ValueError, match="cover"):
        module(query, torch.zeros(1, 3, 1, 2), value, [(2, 3), (1, 2)])


def _video_outputs(model, monkeypatch, reference: bool):
    if reference:
        monkeypatch.setattr(MSDeformAttn, "forward", grid_sample_forward)
    captured = []
    original = model.head.decode_queries

    def spy(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(model.head, "decode_queries", spy)
    predictor = VideoPredictor(model, keep_ratio=0.45, long_side=96)
    state = predictor.new_video()
    instances = [predictor.step(state, frame) for frame in moving_clip(3)]
    monkeypatch.undo()
    return captured, instances


@pytest.mark.parametrize("source", ["random", "official-format"])
def test_model_outputs_unchanged(source, monkeypatch):
    if source == "random":
        model = build_model(preset("compact"), seed=0)
    else:  # random tensors under the official names, as `vpp convert` would load them
        model = fill_directly(build_model(preset("tiny"), seed=0), random_official_state("tiny"))
    # Thresholds at 0 so that the untrained model has tracks to compare.
    model.config = model.config.replace(tracker=dataclasses.replace(
        model.config.tracker, track_score_threshold=0.0, new_score_threshold=0.0))
    fast_heads, fast_instances = _video_outputs(model, monkeypatch, reference=False)
    ref_heads, ref_instances = _video_outputs(model, monkeypatch, reference=True)
    for fast, ref in zip(fast_heads, ref_heads):
        torch.testing.assert_close(fast.class_logits, ref.class_logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(fast.mask_logits, ref.mask_logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(fast.query_features, ref.query_features, rtol=0, atol=1e-4)
    assert sum(len(i.track_ids) for i in fast_instances) > 0
    for fast, ref in zip(fast_instances, ref_instances):
        assert fast.track_ids.tolist() == ref.track_ids.tolist()
        assert torch.equal(fast.masks, ref.masks)


def test_model_never_calls_grid_sample(compact_model, monkeypatch):
    calls = {"embedding_bag": 0}
    original = F.embedding_bag

    def counting(*args, **kwargs):
        calls["embedding_bag"] += 1
        return original(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("grid_sample called")

    monkeypatch.setattr(deform_attn.F, "embedding_bag", counting)
    monkeypatch.setattr(F, "grid_sample", forbidden)
    predictor = VideoPredictor(compact_model, long_side=96)
    predictor.step(predictor.new_video(), moving_clip(1)[0])
    config = compact_model.config
    adapter_attentions = len(config.adapter.interaction_indexes) * 2 + config.adapter.extra_extractors
    assert calls["embedding_bag"] == adapter_attentions + config.head.num_encoder_layers
