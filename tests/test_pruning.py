"""Keep budgets, selective modules and the Map-SM in isolation."""

from __future__ import annotations

import pytest
import torch

from vppcli.config import PruningConfig
from vppcli.model.pruning import (
    MapSelectiveModule,
    PruningPlan,
    SelectiveModule,
    distance_prior,
    keep_budgets,
    native_map_budget,
    run_on_active,
    top_k_mask,
)
from vppcli.model.vit import Block

TRAINED = PruningConfig().trained_fractions(12)


def test_trained_schedule_matches_reference():
    assert TRAINED == (1, 0.7, 0.7, 0.56, 0.56, 0.56, 0.448, 0.448, 0.448, 0.358, 0.358, 0.358)
    assert sum(TRAINED) / 12 == pytest.approx(0.5415, abs=1e-4)


@pytest.mark.parametrize("num_tokens", [80, 2040, 2760])
@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.45, 0.5415, 0.7, 0.9, 1.0])
def test_budgets_hit_the_keep_ratio_within_a_token_per_block(num_tokens, ratio):
    budgets = keep_budgets(TRAINED, ratio, num_tokens)
    assert len(budgets) == 12
    assert budgets[0] == num_tokens  # block 0 is always dense
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))  # masks only shrink
    assert abs(sum(budgets) / 12 - ratio * num_tokens) <= 1.0
    # the trained shape is kept: equal blocks stay equal
    assert budgets[1] == budgets[2] and budgets[3] == budgets[4] == budgets[5]


def test_budgets_at_the_trained_ratio_reproduce_the_trained_schedule():
    budgets = keep_budgets(TRAINED, sum(TRAINED) / 12, 2040)
    assert [round(b / 2040, 3) for b in budgets] == [round(f, 3) for f in TRAINED]


def test_keep_ratio_one_is_dense_and_bad_ratios_fail():
    assert keep_budgets(TRAINED, 1.0, 100) == (100,) * 12
    for bad in (0.0, -0.1, 1.01, 1 / 12):
        with pytest.raises(ValueError):
            keep_budgets(TRAINED, bad, 100)


def test_native_map_budget_truncates_like_the_reference():
    assert native_map_budget(2040, 0.7) == 1428
    assert native_map_budget(2760, 0.7) == 1931  # 2760 * 0.7 = 1931.9999...


def test_distance_prior_range():
    prior = distance_prior(3, 4, torch.device("cpu"))
    assert prior.shape == (12, 12)
    assert torch.allclose(prior.diagonal(), torch.ones(12))
    assert prior[0, 11].item() == pytest.approx(-6.0, abs=1e-3)  # opposite corners


def test_top_k_mask_stays_inside_candidates():
    margin = torch.arange(10.0)[None]
    candidates = torch.zeros(1, 10, dtype=torch.bool)
    candidates[0, :6] = True
    mask = top_k_mask(margin, 3, candidates)
    assert mask[0].nonzero().squeeze(1).tolist() == [3, 4, 5]


def test_selective_module_never_reactivates():
    torch.manual_seed(0)
    module = SelectiveModule(16, 4).eval()
    x = torch.randn(1, 50, 16)
    active = torch.rand(1, 50) > 0.5
    native = module.select(x, active, PruningPlan(), None)
    budget = module.select(x, active, PruningPlan(), 5)
    assert not (native & ~active).any() and not (budget & ~active).any()
    assert int(budget.sum()) == 5


def test_map_sm_only_matches_previously_active_tokens():
    module = MapSelectiveModule(4, 2, smoothing=3).eval()
    tokens = torch.eye(4)[None].repeat(1, 1, 1)  # token i is the unit vector e_i
    keys = tokens.clone()
    prior = torch.zeros(4, 4)
    active = torch.tensor([[True, False, True, False]])
    source = module.associate(tokens, keys, active, prior, PruningPlan())
    assert source[0, 0].item() == 0 and source[0, 2].item() == 2
    assert set(source[0].tolist()) <= {0, 2}  # inactive previous tokens are never matched


def test_reference_noise_is_seeded():
    module = SelectiveModule(16, 4).eval()
    x = torch.randn(1, 200, 16)
    active = torch.ones(1, 200, dtype=torch.bool)

    def decide(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return module.select(x, active, PruningPlan(generator=generator, tau=1.0), None)

    assert torch.equal(decide(1), decide(1))
    assert not torch.equal(decide(1), decide(2))


def test_run_on_active_skips_inactive_tokens_and_does_not_write_in_place():
    torch.manual_seed(0)
    block = Block(32, 2, 4.0, 1e-5, 0.0).eval()
    x = torch.randn(1, 20, 32)
    original = x.clone()
    indices = torch.tensor([1, 4, 7])
    out = run_on_active(block, x, indices)
    assert torch.equal(x, original)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(out[:, untouched], x[:, untouched])
    assert torch.allclose(out[:, indices], block(x[:, indices]), atol=1e-6)
