"""Image-based pruning (the paper's baseline): no temporal prior, only the selective modules prune."""

from __future__ import annotations

import pytest
import torch

from vppcli.config import compact_config
from vppcli.model.pruning import PruningPlan, distance_prior, image_based_fractions, keep_budgets
from vppcli.model.rovis import build_model


def test_image_based_fractions_keep_the_map_blocks_dense():
    pruning = compact_config().pruning
    trained = pruning.trained_fractions(12)
    image = image_based_fractions(trained, pruning.map_block, pruning.selective_blocks[0])
    assert image[:3] == (1.0, 1.0, 1.0) and image[3:] == trained[3:]
    budgets = keep_budgets(image, 0.45, 120)
    assert budgets[:3] == (120, 120, 120)
    assert abs(sum(budgets) / 12 - 0.45 * 120) <= 1.0
    with pytest.raises(ValueError):  # three dense blocks: 0.25 is out of reach
        keep_budgets(image, 0.25, 120)


def test_without_the_temporal_prior_the_map_sm_never_runs():
    model = build_model(compact_config(), seed=2)
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randn(1, 3, 96, 128, generator=generator) for _ in range(2)]
    prior = distance_prior(6, 8, torch.device("cpu"))
    pruning = model.config.pruning
    fractions = image_based_fractions(pruning.trained_fractions(12), pruning.map_block, pruning.selective_blocks[0])
    budgets = keep_budgets(fractions, 0.45, 48)
    cache = None
    with torch.no_grad():
        for images in frames:
            output = model(images, None, cache, PruningPlan(budgets=budgets, temporal_prior=False), prior)
            cache = output.backbone.cache
            assert output.backbone.map_candidates is None
            assert output.backbone.tokens_per_block == list(budgets)


def test_segmenter_image_based_mode_runs_and_refuses_unreachable_ratios():
    from tests.helpers import moving_clip
    from vppcli.errors import UsageError
    from vppcli.segmenter import Segmenter

    model = build_model(compact_config(), seed=2)
    with pytest.raises(UsageError):
        Segmenter(model, keep_ratio=0.25, temporal_prior=False, long_side=128)
    segmenter = Segmenter(model, keep_ratio=0.45, temporal_prior=False, long_side=128)
    stats = [item.stats for item in segmenter.predictor.stream(moving_clip(3))]
    assert all(s.map_candidates is None for s in stats)
    assert all(abs(s.keep_ratio - 0.45) < 0.05 for s in stats)
