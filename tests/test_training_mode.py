"""The model's training mode: straight-through pruning over the full token sequence must make the
same decisions as the gather/scatter inference path on the same weights, and carry gradients to
the selective modules."""

from __future__ import annotations

import pytest
import torch

from vppcli.config import compact_config
from vppcli.model.pruning import PruningPlan, distance_prior
from vppcli.model.rovis import build_model

HEIGHT, WIDTH = 128, 192  # an 8 x 12 patch grid


def _frames(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, HEIGHT, WIDTH, generator=generator)
    # consecutive frames: the same scene shifted, so the temporal prior has something to map
    return [torch.roll(base, shifts=4 * index, dims=3) + 0.05 * index for index in range(count)]


def _run(model, frames, soft: bool, noise_seed: int | None = None):
    prior = distance_prior(HEIGHT // 16, WIDTH // 16, torch.device("cpu"))
    generator = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    cache, outputs = None, []
    for images in frames:
        plan = PruningPlan(generator=generator, soft=soft, record_masks=True)
        output = model(images, None, cache, plan, prior)
        cache = output.backbone.cache
        outputs.append(output)
    return outputs


@pytest.fixture(scope="module")
def model():
    return build_model(compact_config(), seed=3)


@pytest.mark.parametrize("noise_seed", [None, 11])
def test_soft_and_gather_paths_make_the_same_decisions(model, noise_seed):
    frames = _frames(3)
    with torch.no_grad():
        hard = _run(model, frames, soft=False, noise_seed=noise_seed)
        soft = _run(model, frames, soft=True, noise_seed=noise_seed)
    pruned_somewhere = False
    for hard_frame, soft_frame in zip(hard, soft):
        for hard_mask, soft_mask in zip(hard_frame.backbone.block_masks, soft_frame.backbone.block_masks):
            if hard_mask is None:
                assert soft_mask is None or bool(soft_mask.all())
            else:
                assert soft_mask is not None and torch.equal(hard_mask, soft_mask)
                pruned_somewhere |= not bool(hard_mask.all())
        assert hard_frame.backbone.tokens_per_block == soft_frame.backbone.tokens_per_block
        for hard_map, soft_map in zip(hard_frame.backbone.features, soft_frame.backbone.features):
            torch.testing.assert_close(soft_map, hard_map, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(soft_frame.head.mask_logits, hard_frame.head.mask_logits, atol=1e-3, rtol=1e-4)
    assert pruned_somewhere
    # the second frame used the temporal prior in both paths
    assert hard[1].backbone.map_candidates == soft[1].backbone.map_candidates is not None


def test_ratio_terms_carry_gradients_to_the_selective_modules(model):
    frames = _frames(2)
    model.train()
    try:
        outputs = _run(model, frames, soft=True, noise_seed=5)
    finally:
        model.eval()
    first, second = (output.backbone.sparsity for output in outputs)
    assert first.map_keep_probability is None  # no temporal prior on a clip's first frame
    assert second.map_keep_probability is not None
    assert len(second.selective_keep) == len(model.config.pruning.selective_blocks)
    loss = sum((keep - 0.5) ** 2 for keep in first.selective_keep + second.selective_keep)
    loss = loss + (second.map_keep_probability - 0.5) ** 2
    model.zero_grad()
    loss.backward()
    for module in (*model.backbone.selective_modules, model.backbone.map_selective_module):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad()


def test_soft_plans_refuse_budgets():
    with pytest.raises(ValueError):
        PruningPlan(budgets=(10,) * 12, soft=True)
