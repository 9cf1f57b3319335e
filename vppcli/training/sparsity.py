"""VPP keep-ratio loss of one frame (reference-architecture.md §2.11)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def sparsity_loss(
    sm_keep_fractions: Sequence[Tensor],
    sm_targets: Sequence[float],
    map_keep_probability: Tensor | None = None,
    map_target: float = 0.5,
    weight: float = 40.0,
    map_weight: float = 10.0,
) -> Tensor:
    """Squared distance of the kept fractions from their targets, as one weighted mean.

    L = weight * (sum_j (m_j - kr_j)^2 + map_weight * (p - map_target)^2 * [map ran])
            / (n_sm + map_weight * [map ran])

    Args:
        sm_keep_fractions: per Selective Module j, the scalar mean over B*N of the cumulative
            straight-through mask at its block (forward value 0/1, so gradients reach the
            SM logits through the straight-through estimator).
        sm_targets: kr_j, the keep ratio each SM should reach.
        map_keep_probability: scalar mean of the Map-SM's *soft* keep probabilities, or None
            when the Map-SM did not run (first frame of a clip).
        map_target: the Map-SM's target; the reference hard-codes 0.5, not the keep ratio
            (its actual keep ratio is fixed by TopK).
        weight: overall factor (40 in the reference).
        map_weight: the Map-SM term counts as this many SMs.
    Returns:
        Scalar loss, already weighted.
    """
    if len(sm_keep_fractions) != len(sm_targets) or not sm_keep_fractions:
        raise ValueError(f"{len(sm_keep_fractions)} SM fractions for {len(sm_targets)} targets")
    total = sum((fraction - target) ** 2 for fraction, target in zip(sm_keep_fractions, sm_targets))
    count = float(len(sm_keep_fractions))
    if map_keep_probability is not None:
        total = total + map_weight * (map_keep_probability - map_target) ** 2
        count += map_weight
    return weight * total / count
