"""VPP token pruning: the selective modules, the mapping-selective module, keep budgets, and
running a block on the active tokens only.

Decisions are made on a *keep margin* per token, log p(keep) - log p(drop):
- native mode (no keep ratio given): the Map-SM keeps its trained top-k fraction, an SM keeps a
  token iff its margin >= 0 (the argmax of the trained two-way classifier);
- budget mode (`keep_ratio=r`): every decision block keeps an exact number of tokens, the
  highest margins among those still active (see `keep_budgets`);
- reference-noise mode adds Gumbel noise as the authors' code does at test time, drawn from an
  explicit, seeded generator.
Masks only shrink: a token dropped once is never re-activated within a frame.

Training uses the same decisions as *straight-through* masks (`soft=True`): the forward value
is the hard 0/1 decision, the gradient that of the keep probability, so the ratio losses reach
the selective modules; every token stays in the sequence and pruned ones are excluded as keys
and keep their input (reference-architecture.md 2.11).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vppcli.model.vit import Mlp


@dataclass(frozen=True)
class PruningPlan:
    """How one frame is pruned.

    budgets: tokens to keep per ViT block (length = depth), or None for the native decisions.
    generator: Gumbel noise source (the reference's stochastic test mode, and training), None =
        no noise.
    tau: Gumbel temperature (the reference uses 10).
    soft: training mode: straight-through masks over the full token sequence instead of
        gathering the active tokens (native decisions only, no budgets).
    record_masks: return every block's keep mask in `BackboneOutput.block_masks`.
    temporal_prior: False = image-based pruning (SViT-style, the paper's baseline): the Map-SM
        never runs, the blocks before the first selective module stay dense.
    """

    budgets: tuple[int, ...] | None = None
    generator: torch.Generator | None = None
    tau: float = 10.0
    soft: bool = False
    record_masks: bool = False
    temporal_prior: bool = True

    def __post_init__(self) -> None:
        if self.soft and self.budgets is not None:
            raise ValueError("soft (training) pruning makes the native decisions; budgets are for inference")


def keep_budgets(trained_fractions: tuple[float, ...], keep_ratio: float, num_tokens: int) -> tuple[int, ...]:
    """Per-block token budgets whose mean fraction is `keep_ratio`, shaped like the trained schedule.

    Blocks that the schedule keeps dense (block 0) stay dense; every other block gets
    min(1, alpha * trained_fraction) of the tokens, with one alpha for all blocks solved so the
    mean over blocks equals `keep_ratio` (clipping at 1 is water-filled). Rounding to whole
    tokens moves each block by at most half a token.
    """
    depth = len(trained_fractions)
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    fixed = [f >= 1.0 for f in trained_fractions]
    floor = sum(fixed) / depth
    if keep_ratio <= floor and keep_ratio < 1.0:
        raise ValueError(
            f"keep ratio {keep_ratio} is unreachable: {sum(fixed)} of {depth} blocks are always dense "
            f"(minimum above {floor:.3f})"
        )

    def mean_fraction(alpha: float) -> float:
        return sum(1.0 if d else min(1.0, alpha * f) for d, f in zip(fixed, trained_fractions)) / depth

    low, high = 0.0, 1.0 / min(trained_fractions)
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if mean_fraction(mid) < keep_ratio else (low, mid)
    alpha = high
    budgets = []
    previous = num_tokens
    for is_dense, fraction in zip(fixed, trained_fractions):
        tokens = num_tokens if is_dense else round(num_tokens * min(1.0, alpha * fraction))
        tokens = max(1, min(previous, tokens))
        budgets.append(tokens)
        previous = tokens
    return tuple(budgets)


def image_based_fractions(trained_fractions: tuple[float, ...], map_block: int,
                          first_selective_block: int) -> tuple[float, ...]:
    """The trained schedule with the Map-SM's blocks dense: the shape `keep_budgets` scales for
    image-based pruning (only the selective modules prune)."""
    return tuple(1.0 if map_block <= block < first_selective_block else fraction
                 for block, fraction in enumerate(trained_fractions))


def gumbel(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard Gumbel(0, 1) samples from an explicit generator."""
    uniform = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def noisy_margin(log_probs: Tensor, plan: PruningPlan) -> Tensor:
    """[B, N, 2] log-probabilities -> [B, N] keep margin, plus Gumbel noise in reference mode."""
    margin = log_probs[..., 0] - log_probs[..., 1]
    if plan.generator is not None:
        noise = gumbel(tuple(log_probs.shape), plan.generator, log_probs.device)
        margin = margin + (noise[..., 0] - noise[..., 1]) / plan.tau
    return margin


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value exactly `hard`, gradient of `soft` (written so 1 stays exactly 1)."""
    return hard + (soft - soft.detach())


def top_k_mask(margin: Tensor, k: int, candidates: Tensor | None = None) -> Tensor:
    """[B, N] margins -> [B, N] bool mask of the k highest margins among `candidates`."""
    if candidates is not None:
        margin = margin.masked_fill(~candidates, float("-inf"))
    keep = torch.zeros_like(margin, dtype=torch.bool)
    keep.scatter_(1, margin.topk(k, dim=1).indices, True)
    if candidates is not None:
        keep &= candidates
    return keep


class SelectiveModule(nn.Module):
    """Per-token keep/drop classifier (SViT-style) used at blocks 3, 6 and 9."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_dim, out_dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, D] tokens -> [B, N, 2] log-probabilities (channel 0 = keep)."""
        return F.log_softmax(self.mlp(self.norm(x)), dim=-1)

    def select(self, x: Tensor, active: Tensor, plan: PruningPlan, budget: int | None) -> Tensor:
        """New [B, N] bool mask, a subset of `active`."""
        margin = noisy_margin(self(x), plan)
        if budget is None:
            return active & (margin >= 0)
        return top_k_mask(margin, budget, candidates=active)

    def select_soft(self, x: Tensor, active: Tensor, plan: PruningPlan) -> Tensor:
        """Training decision: [B, N] straight-through mask (forward 0/1), the product of this
        module's hard Gumbel decision with `active`, the float mask of the earlier blocks."""
        margin = noisy_margin(self(x), plan)
        return straight_through((margin >= 0).to(x.dtype), torch.sigmoid(margin)) * active


def distance_prior(height: int, width: int, device: torch.device) -> Tensor:
    """[N, N] log10(10 * (1 - d/2) + 1e-6) with d the Manhattan distance on a grid normalised
    to [0, 1] per axis: 1 at the same place, -6 at opposite corners."""
    ys = torch.linspace(0, 1, height, device=device)
    xs = torch.linspace(0, 1, width, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    manhattan = torch.cdist(grid, grid, p=1)
    return torch.log10((2.0 - manhattan) / 2.0 * 10.0 + 1e-6)


class MapSelectiveModule(nn.Module):
    """Mapping-Selective Module: chooses the tokens of the first pruned blocks from the previous
    frame.

    Each current token is associated with the most similar previously active token (raw dot
    product of tokens plus a distance prior), takes that token's cached deep feature, and a
    small classifier on it scores the token; scores are box-smoothed over the grid.
    """

    def __init__(self, dim: int, hidden_dim: int, smoothing: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden_dim, out_dim=2)
        self.smoothing = smoothing

    def associate(self, tokens: Tensor, keys: Tensor, prev_active: Tensor, prior: Tensor,
                  plan: PruningPlan) -> Tensor:
        """
        Args:
            tokens: [1, N, D] current tokens (input of the map block).
            keys: [1, N, D] previous frame's cached keys.
            prev_active: [1, N] bool, tokens active at the cache block of the previous frame.
            prior: [N, N] distance prior.
        Returns:
            [1, N] int64 index of the previous token each current token maps to.
        """
        candidates = prev_active[0].nonzero().squeeze(1)  # only these can be matched
        similarity = self.similarity(tokens, keys, candidates, prior, plan)
        return candidates[similarity.argmax(dim=1)][None]

    @staticmethod
    def similarity(tokens: Tensor, keys: Tensor, candidates: Tensor, prior: Tensor, plan: PruningPlan) -> Tensor:
        """[N, n] raw dot product of current tokens with the n candidate keys plus the distance
        prior (and Gumbel noise when the plan has a generator)."""
        # float32 on purpose: similarities are in the hundreds, bf16 would reorder near-ties.
        with torch.autocast(tokens.device.type, enabled=False):
            similarity = tokens[0].float() @ keys[0, candidates].float().T + prior[:, candidates]
        if plan.generator is not None:
            similarity = similarity + gumbel(tuple(similarity.shape), plan.generator, tokens.device) / plan.tau
        return similarity

    def forward(self, mapped: Tensor, height: int, width: int) -> Tensor:
        """[1, N, D] mapped previous features -> [1, N, 2] smoothed log-probabilities."""
        log_probs = F.log_softmax(self.mlp(self.norm(mapped)), dim=-1)
        grid = log_probs.transpose(1, 2).reshape(-1, 2, height, width)
        pad = self.smoothing // 2
        grid = F.avg_pool2d(F.pad(grid, (pad, pad, pad, pad), mode="replicate"), self.smoothing, stride=1)
        return grid.flatten(2).transpose(1, 2)

    def select(self, tokens: Tensor, keys: Tensor, values: Tensor, prev_active: Tensor, prior: Tensor,
               height: int, width: int, plan: PruningPlan, budget: int) -> Tensor:
        """Top-`budget` [1, N] bool mask for the current frame."""
        source = self.associate(tokens, keys, prev_active, prior, plan)
        mapped = values.gather(1, source[..., None].expand(-1, -1, values.shape[-1]))
        return top_k_mask(noisy_margin(self(mapped, height, width), plan), budget)

    def select_soft(self, tokens: Tensor, keys: Tensor, values: Tensor, prev_active: Tensor, prior: Tensor,
                    height: int, width: int, plan: PruningPlan, budget: int) -> tuple[Tensor, Tensor]:
        """Training decision, the same top-`budget` choice as `select` with straight-through
        gradients through the association (hard one-hot over the candidates) and the ranking.

        Returns:
            [1, N] straight-through mask (forward 0/1) and [1, N] keep probabilities (the soft
            Gumbel probabilities the Map-SM ratio loss is computed on).
        """
        candidates = prev_active[0].nonzero().squeeze(1)
        similarity = self.similarity(tokens, keys, candidates, prior, plan)
        hard = F.one_hot(similarity.argmax(dim=1), candidates.numel()).to(similarity.dtype)
        association = straight_through(hard, similarity.softmax(dim=1))
        mapped = (association.to(values.dtype) @ values[0, candidates])[None]
        margin = noisy_margin(self(mapped, height, width), plan)
        probability = torch.sigmoid(margin)
        keep = top_k_mask(margin, budget).to(probability.dtype)
        return straight_through(keep, probability), probability


def native_map_budget(num_tokens: int, keep_fraction: float) -> int:
    """The reference's k = int(N * keep_ratio): a truncated float product (2760 * 0.7 -> 1931)."""
    return max(1, int(num_tokens * keep_fraction))


def run_on_active(block: nn.Module, x: Tensor, active_indices: Tensor | None) -> Tensor:
    """Run `block` on the active tokens only; inactive tokens keep their value.

    Args:
        x: [1, N, D] tokens.
        active_indices: [n] int64 sorted indices of active tokens, or None for all.
    Returns:
        [1, N, D] new tensor (never written in place: cached tensors must not change).
    """
    if active_indices is None:
        return block(x)
    updated = block(x.index_select(1, active_indices))
    return x.index_copy(1, active_indices, updated.to(x.dtype))


def run_blended(block: nn.Module, x: Tensor, mask: Tensor | None, soft_mask: Tensor | None) -> Tensor:
    """Training counterpart of `run_on_active`: every token is a query, only active ones are keys,
    and inactive tokens keep their input: x <- m * Block(x) + (1 - m) * x with the
    straight-through mask m, so the gradient reaches the module that decided m.

    Args:
        x: [B, N, D] tokens.
        mask: [B, N] bool active tokens, or None for all.
        soft_mask: [B, N] straight-through version of `mask` (forward value 0/1).
    """
    if mask is None or soft_mask is None:
        return block(x)
    weight = soft_mask[..., None].to(x.dtype)
    return weight * block(x, key_padding_mask=~mask) + (1.0 - weight) * x

