"""SelectiveViTAdapter: the VPP backbone (ViT-Adapter whose ViT blocks skip pruned tokens).

Stateless: the temporal prior of the previous frame comes in as a `TemporalCache` and the new
one goes out in `BackboneOutput`; the caller (the per-video state) keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vppcli.config import VppConfig
from vppcli.model.adapter import InteractionBlock, SpatialPriorModule, deform_inputs
from vppcli.model.deform_attn import MSDeformAttn
from vppcli.model.pruning import (
    MapSelectiveModule,
    PruningPlan,
    SelectiveModule,
    distance_prior,
    native_map_budget,
    run_blended,
    run_on_active,
)
from vppcli.model.vit import Block, PatchEmbed, init_vit_weights, resize_pos_embed
from vppcli.profiling import SectionTimer, timed


@dataclass
class TemporalCache:
    """What one frame leaves for the next (batch 1).

    keys:   [1, N, D] tokens the next frame's Map-SM compares against (`x_ref`).
    values: [1, N, D] output of the cache block, mapped onto the next frame (`x_to_map`).
    active: [1, N] bool, tokens active in the cache block; only these can be matched.
    grid:   (H, W) patch grid the cache belongs to.
    """

    keys: Tensor
    values: Tensor
    active: Tensor
    grid: tuple[int, int]

    def usable_for(self, grid: tuple[int, int]) -> bool:
        # An empty previous mask would make every Map-SM score NaN (the reference then silently
        # runs dense); we treat that frame like the first frame of a video instead.
        return self.grid == grid and bool(self.active.any())


@dataclass
class SparsityTerms:
    """What the VPP ratio losses of one frame are computed on (training mode only).

    selective_keep: per selective module, the scalar mean of the cumulative straight-through
        mask at its block (differentiable).
    map_keep_probability: scalar mean of the Map-SM's soft keep probabilities, None when the
        Map-SM did not run (first frame of a clip).
    """

    selective_keep: list[Tensor]
    map_keep_probability: Tensor | None


@dataclass
class BackboneOutput:
    """features: [f1, f2, f3, f4], each [1, D, Hp/s, Wp/s] for strides s = 4, 8, 16, 32.
    cache: the temporal prior for the next frame (None when pruning is disabled).
    tokens_per_block: tokens each ViT block processed (training mode: tokens kept active).
    map_candidates: previous-frame tokens the Map-SM compared against (None: it did not run).
    sparsity: the ratio-loss inputs (training mode only).
    block_masks: each block's [1, N] bool keep mask (None = all tokens), when the plan asks."""

    features: list[Tensor]
    cache: TemporalCache | None
    tokens_per_block: list[int]
    map_candidates: int | None = None
    sparsity: SparsityTerms | None = None
    block_masks: list[Tensor | None] | None = None


class SelectiveViTAdapter(nn.Module):
    def __init__(self, config: VppConfig) -> None:
        super().__init__()
        vit, adapter, pruning = config.vit, config.adapter, config.pruning
        dim = vit.embed_dim
        self.config = config
        self.patch_embed = PatchEmbed(dim, vit.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + vit.pretrain_grid**2, dim))
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        drop_rates = torch.linspace(0, vit.drop_path_rate, vit.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, vit.num_heads, vit.mlp_ratio, vit.norm_eps, rate) for rate in drop_rates
        )
        self.spm = SpatialPriorModule(adapter.conv_inplane, dim)
        last = len(adapter.interaction_indexes) - 1
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim, adapter.deform_num_heads, adapter.deform_num_points, adapter.cffn_ratio,
                adapter.norm_eps, vit.drop_path_rate, adapter.extra_extractors if i == last else 0,
            )
            for i in range(len(adapter.interaction_indexes))
        )
        if pruning.enabled:
            self.map_selective_module = MapSelectiveModule(dim, pruning.map_hidden_dim, pruning.map_smoothing)
            self.selective_modules = nn.ModuleList(
                SelectiveModule(dim, pruning.selective_hidden_dim) for _ in pruning.selective_blocks
            )
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(dim) for _ in range(4))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's random init (only matters for random-weight presets and training)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.level_embed)
        self.blocks.apply(init_vit_weights)
        for part in (self.spm, self.interactions, self.up):
            part.apply(_init_adapter_weights)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()

    def forward(
        self,
        images: Tensor,
        cache: TemporalCache | None = None,
        plan: PruningPlan = PruningPlan(),
        prior: Tensor | None = None,
        timer: SectionTimer | None = None,
    ) -> BackboneOutput:
        """
        Args:
            images: [1, 3, Hp, Wp] normalised images, Hp and Wp multiples of 32.
            cache: the previous frame's temporal prior; None for the first frame of a video.
            plan: budgets and noise of this frame's pruning.
            prior: [N, N] Map-SM distance prior for this grid (computed if not given).
            timer: optional per-component timer ("spatial_prior", "vit_blocks", "adapter",
                "pruning").
        """
        batch, _, padded_h, padded_w = images.shape
        pruning = self.config.pruning
        if pruning.enabled and batch != 1:
            raise ValueError("the pruned backbone streams one frame at a time (batch 1)")
        inputs = deform_inputs(padded_h, padded_w, images.device)
        with timed(timer, "spatial_prior"):
            c1, c2, c3, c4 = self.spm(images)
            c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], 1)
        with timed(timer, "vit_blocks"):
            x, height, width = self.patch_embed(images)
            x = x + resize_pos_embed(self.pos_embed, self.config.vit.pretrain_grid, height, width)
        num_tokens = height * width
        grid = (height, width)
        map_candidates = None
        if pruning.enabled and plan.temporal_prior and cache is not None and cache.usable_for(grid):
            map_candidates = int(cache.active.sum())
            if prior is None:
                prior = distance_prior(height, width, images.device)

        mask: Tensor | None = None  # None: every token active
        soft_mask: Tensor | None = None  # straight-through float version of `mask` (training mode)
        active_indices: Tensor | None = None
        keys = values = cache_active = None
        tokens_per_block: list[int] = []
        block_masks: list[Tensor | None] = []
        sparsity = SparsityTerms([], None) if plan.soft else None
        for interaction, (start, end) in zip(self.interactions, self.config.adapter.interaction_indexes):
            with timed(timer, "adapter"):
                x = interaction.injector(x, c, inputs)
            for block_index in range(start, end + 1):
                if pruning.enabled:
                    with timed(timer, "pruning"):
                        if plan.soft:
                            mask, soft_mask = self._decide_soft(block_index, x, mask, soft_mask, cache, plan,
                                                                prior, grid, sparsity)
                        else:
                            new_mask = self._decide(block_index, x, mask, cache, plan, prior, grid)
                            if new_mask is not mask:
                                mask = new_mask
                                active_indices = _indices_or_all(mask)
                    if block_index == pruning.map_block and pruning.xref_source == "block0":
                        keys = x
                with timed(timer, "vit_blocks"):
                    if plan.soft:
                        x = run_blended(self.blocks[block_index], x, mask, soft_mask)
                    else:
                        x = run_on_active(self.blocks[block_index], x, active_indices)
                tokens_per_block.append(num_tokens if mask is None else int(mask.sum()))
                if plan.record_masks:
                    block_masks.append(mask)
                if pruning.enabled and block_index == pruning.cache_block:
                    values = x
                    cache_active = mask if mask is not None else torch.ones(1, num_tokens, dtype=torch.bool, device=x.device)
            if pruning.enabled and pruning.xref_source == "block2_aliased" and start <= pruning.map_block <= end:
                # The reference writes block outputs into the very tensor it cached, so at
                # inference its keys end up being the input of the next injector.
                keys = x
            with timed(timer, "adapter"):
                c = interaction.extract(c, x, inputs, height, width)

        with timed(timer, "adapter"):
            features = self._fuse(x, c, c1, height, width)
        new_cache = None
        if pruning.enabled:
            assert keys is not None and values is not None and cache_active is not None
            new_cache = TemporalCache(keys, values, cache_active, grid)
        return BackboneOutput(features, new_cache, tokens_per_block, map_candidates, sparsity,
                              block_masks if plan.record_masks else None)

    def _decide(self, block_index: int, x: Tensor, mask: Tensor | None, cache: TemporalCache | None,
                plan: PruningPlan, prior: Tensor | None, grid: tuple[int, int]) -> Tensor | None:
        """The active mask for `block_index` ([1, N] bool, None = all), given the current one."""
        pruning = self.config.pruning
        budget = plan.budgets[block_index] if plan.budgets is not None else None
        if block_index == pruning.map_block:
            if not plan.temporal_prior or cache is None or not cache.usable_for(grid):
                return None  # first frame (or image-based pruning): dense up to the first selective module
            assert prior is not None
            if budget is None:
                budget = native_map_budget(x.shape[1], pruning.map_keep_ratio)
            return self.map_selective_module.select(
                x, cache.keys, cache.values, cache.active, prior, grid[0], grid[1], plan, budget
            )
        if block_index in pruning.selective_blocks:
            module = self.selective_modules[pruning.selective_blocks.index(block_index)]
            active = mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            return module.select(x, active, plan, budget)
        return mask

    def _decide_soft(self, block_index: int, x: Tensor, mask: Tensor | None, soft_mask: Tensor | None,
                     cache: TemporalCache | None, plan: PruningPlan, prior: Tensor | None,
                     grid: tuple[int, int], sparsity: SparsityTerms | None) -> tuple[Tensor | None, Tensor | None]:
        """Training counterpart of `_decide`: the same decisions as (bool mask, straight-through
        mask), recording the ratio-loss inputs in `sparsity`."""
        pruning = self.config.pruning
        assert sparsity is not None
        if block_index == pruning.map_block:
            if not plan.temporal_prior or cache is None or not cache.usable_for(grid):
                return None, None
            assert prior is not None
            new_soft, probability = self.map_selective_module.select_soft(
                x, cache.keys, cache.values, cache.active, prior, grid[0], grid[1], plan,
                native_map_budget(x.shape[1], pruning.map_keep_ratio),
            )
            sparsity.map_keep_probability = probability.mean()
            return new_soft != 0, new_soft
        if block_index in pruning.selective_blocks:
            module = self.selective_modules[pruning.selective_blocks.index(block_index)]
            active = soft_mask if soft_mask is not None else x.new_ones(x.shape[:2])
            new_soft = module.select_soft(x, active, plan)
            sparsity.selective_keep.append(new_soft.mean())
            return new_soft != 0, new_soft
        return mask, soft_mask

    def _fuse(self, x: Tensor, c: Tensor, c1: Tensor, height: int, width: int) -> list[Tensor]:
        """Split c into its three scales, add the upsampled ViT map to every scale, normalise."""
        batch, _, dim = x.shape
        sizes = [4 * height * width, height * width, (height // 2) * (width // 2)]
        c2, c3, c4 = torch.split(c, sizes, dim=1)
        c2 = c2.transpose(1, 2).reshape(batch, dim, 2 * height, 2 * width)
        c3 = c3.transpose(1, 2).reshape(batch, dim, height, width)
        c4 = c4.transpose(1, 2).reshape(batch, dim, height // 2, width // 2)
        c1 = self.up(c2) + c1
        x3 = x.transpose(1, 2).reshape(batch, dim, height, width)
        x1 = F.interpolate(x3, scale_factor=4, mode="bilinear", align_corners=False)
        x2 = F.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False)
        x4 = F.interpolate(x3, scale_factor=0.5, mode="bilinear", align_corners=False)
        return [self.norm1(c1 + x1), self.norm2(c2 + x2), self.norm3(c3 + x3), self.norm4(c4 + x4)]


def _indices_or_all(mask: Tensor | None) -> Tensor | None:
    """Sorted active token indices, or None when every token is active (no gather needed)."""
    if mask is None or bool(mask.all()):
        return None
    return mask[0].nonzero().squeeze(1)


def _init_adapter_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
