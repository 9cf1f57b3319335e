"""Streaming inference: one `VideoState` per video, frames in order, one at a time.

    predictor = VideoPredictor(model, keep_ratio=0.45)
    state = predictor.new_video()
    for frame in frames:                      # [H, W, 3] uint8 RGB
        instances = predictor.step(state, frame)
    tracks = state.tracks.summaries()
    state.reset()                             # before the next video (or call new_video())

The model holds no per-video state; everything a frame leaves for the next lives in `VideoState`
and is bounded: the latest backbone cache, the live tracks and per-track counters.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vppcli.config import PreprocessConfig, VppConfig
from vppcli.model.backbone import BackboneOutput, TemporalCache
from vppcli.model.postprocess import detections_from_predictions
from vppcli.model.pruning import PruningPlan, distance_prior, image_based_fractions, keep_budgets
from vppcli.model.rovis import VppModel
from vppcli.model.temporal_reuse import PixelDecoderCache, TemporalReuse
from vppcli.model.tracker import TrackAccumulator, TrackerState, track_queries, update
from vppcli.preprocess import FrameGeometry, preprocess_frame
from vppcli.profiling import SectionTimer, timed
from vppcli.results import FrameInstances, FrameStats, PruningMasks, PruningStage


@dataclass
class VideoState:
    """Everything that carries over between frames of one video."""

    frame_index: int = 0
    cache: TemporalCache | None = None
    prior: Tensor | None = None  # Map-SM distance prior of `prior_grid`, reused every frame
    prior_grid: tuple[int, int] | None = None
    tracker: TrackerState = field(default_factory=TrackerState)
    tracks: TrackAccumulator = field(default_factory=TrackAccumulator)
    generator: torch.Generator | None = None  # reference-noise mode only
    seed: int | None = None
    record_masks: bool = False  # a setting of the video: hand out each frame's keep masks
    reuse_cache: PixelDecoderCache | None = None  # pixel-decoder states of the previous frame (temporal reuse)

    def reset(self) -> None:
        """Forget the video: the next frame is a first frame (and the noise restarts)."""
        self.frame_index = 0
        self.cache = None
        self.reuse_cache = None
        self.prior = None
        self.prior_grid = None
        self.tracker.reset()
        self.tracks.reset()
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed)

    def num_bytes(self) -> int:
        """Bytes held in tensors (for the bounded-memory checks)."""
        tensors = [] if self.cache is None else [self.cache.keys, self.cache.values, self.cache.active]
        if self.prior is not None:
            tensors.append(self.prior)
        reuse = 0 if self.reuse_cache is None else self.reuse_cache.num_bytes()
        return sum(t.numel() * t.element_size() for t in tensors) + reuse + self.tracker.num_bytes()


class VideoPredictor:
    """Runs a `VppModel` over video frames with VPP pruning and RoVIS tracking.

    Args:
        model: the network (eval mode).
        keep_ratio: None = prune as trained (native); r in (0, 1] = exact per-block budgets
            whose mean keep fraction over the ViT blocks is r (1 = dense).
        reference_noise: add the Gumbel noise of the authors' test-time code (stochastic, but
            reproducible through `seed`). Off by default: same input, same output.
        device / dtype: where and in what precision to run; bf16 uses autocast.
        record_masks: put every frame's per-block keep masks in `stats.pruning` (default for
            `new_video`); off, the model records nothing and the masks cost nothing.
        temporal_prior: False = image-based pruning, the paper's baseline (no Map-SM; with
            `keep_ratio` the selective modules' budgets are scaled to reach it alone).
        reuse: sparse temporal reuse in the pixel decoder (None = off: the dense decoder, outputs
            unchanged); see `vppcli.model.temporal_reuse`.
    """

    def __init__(self, model: VppModel, keep_ratio: float | None = None, reference_noise: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 long_side: int | None = None, record_masks: bool = False, temporal_prior: bool = True,
                 reuse: TemporalReuse | None = None) -> None:
        if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32 or bfloat16")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        if long_side is not None:
            self.config = self.config.replace(preprocess=_with_long_side(self.config, long_side))
        self.keep_ratio = keep_ratio
        self.reference_noise = reference_noise
        self.seed = seed
        self.dtype = dtype
        self.record_masks = record_masks
        self.temporal_prior = temporal_prior
        self.reuse = reuse
        if keep_ratio is not None and self.config.pruning.enabled:
            keep_budgets(self._fractions(), keep_ratio, 100)  # an unreachable ratio fails here, not mid-video
        self.stages = pruning_stages(self.config)

    def new_video(self, record_masks: bool | None = None) -> VideoState:
        """The state of a new video; `record_masks` overrides the predictor's setting for it."""
        generator = None
        if self.reference_noise:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(self.seed)
        return VideoState(generator=generator, seed=self.seed if self.reference_noise else None,
                          record_masks=self.record_masks if record_masks is None else record_masks)

    def plan_for(self, geometry: FrameGeometry, state: VideoState) -> PruningPlan:
        budgets = None
        pruning = self.config.pruning
        if self.keep_ratio is not None and pruning.enabled:
            height, width = geometry.grid
            budgets = keep_budgets(self._fractions(), self.keep_ratio, height * width)
        return PruningPlan(budgets=budgets, generator=state.generator, tau=pruning.tau,
                           # temporal reuse reads the last block's keep mask
                           record_masks=state.record_masks or self.reuse is not None,
                           temporal_prior=self.temporal_prior)

    def _fractions(self) -> tuple[float, ...]:
        """The per-block keep shape that budgets scale: the trained schedule, with the Map-SM's
        blocks dense for image-based pruning."""
        pruning = self.config.pruning
        fractions = pruning.trained_fractions(self.config.vit.depth)
        if self.temporal_prior:
            return fractions
        return image_based_fractions(fractions, pruning.map_block, pruning.selective_blocks[0])

    @torch.inference_mode()
    def step(self, state: VideoState, frame_rgb: np.ndarray, timer: SectionTimer | None = None) -> FrameInstances:
        """Segment and track one frame ([H, W, 3] uint8 RGB); frames must come in order."""
        with timed(timer, "preprocess"):
            images, geometry = preprocess_frame(frame_rgb, self.config.preprocess, self.device)
        grid = geometry.grid
        if self.config.pruning.enabled and state.prior_grid != grid:
            state.prior = distance_prior(grid[0], grid[1], self.device)
            state.prior_grid = grid
        queries, _ = track_queries(state.tracker)
        num_track_queries = 0 if queries is None else int(queries.shape[0])
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.dtype == torch.bfloat16 else contextlib.nullcontext()
        )
        with autocast:
            output = self.model(
                images, None if queries is None else queries[None], state.cache,
                self.plan_for(geometry, state), state.prior, timer,
                reuse=self.reuse, reuse_cache=state.reuse_cache,
            )
        head = output.head
        with timed(timer, "tracker"):
            detections = detections_from_predictions(
                head.class_logits[0].float(), head.mask_logits[0].float(), self.config.head.num_queries,
                geometry.padded_size, geometry.image_size, geometry.original_size, self.config.tracker,
            )
            instances = update(state.tracker, detections, head.query_features[0].float(),
                               state.frame_index, self.config.tracker)
        state.cache = output.backbone.cache
        state.reuse_cache = output.reuse_cache
        state.tracks.add(instances)
        pruning = self._pruning_masks(output.backbone, geometry) if state.record_masks else None
        reuse = output.reuse
        reuse_stats = {} if reuse is None else {"encoder_queries": reuse.computed, "fpn_pixels": reuse.fpn_pixels,
                                                "reuse_refreshed": reuse.refreshed, "reuse_change": reuse.change}
        instances.stats = FrameStats(output.backbone.tokens_per_block, grid[0] * grid[1],
                                     output.backbone.map_candidates, geometry.padded_size, num_track_queries,
                                     pruning, **reuse_stats)
        state.frame_index += 1
        return instances

    def _pruning_masks(self, backbone: BackboneOutput, geometry: FrameGeometry) -> PruningMasks:
        if backbone.block_masks is None:
            raise RuntimeError("the backbone recorded no keep masks although the plan asked for them")
        # Blocks of a stage share one mask tensor: copy each to the CPU once.
        on_cpu: dict[int, Tensor] = {}
        for mask in backbone.block_masks:
            if mask is not None and id(mask) not in on_cpu:
                on_cpu[id(mask)] = mask.reshape(geometry.grid).cpu()
        blocks = tuple(None if mask is None else on_cpu[id(mask)] for mask in backbone.block_masks)
        # Image-based pruning never uses a prior: its dense Map-SM stage is no first frame.
        first_frame = self.config.pruning.enabled and self.temporal_prior and backbone.map_candidates is None
        return PruningMasks(geometry.grid, geometry.image_size, blocks, self.stages, first_frame)

    def stream(self, frames: Iterable[np.ndarray], state: VideoState | None = None) -> Iterator[FrameInstances]:
        """Lazily segment a sequence of frames of one video."""
        state = state if state is not None else self.new_video()
        for frame in frames:
            yield self.step(state, frame)


def pruning_stages(config: VppConfig) -> tuple[PruningStage, ...]:
    """The stages of the pruning schedule: the Map-SM's block to the first selective module's, and
    each selective module's block to the next one's (the last to the final block)."""
    pruning = config.pruning
    starts = [(pruning.map_block, "map"), *((block, f"sm{i}") for i, block in enumerate(pruning.selective_blocks, 1))]
    ends = [block - 1 for block, _ in starts[1:]] + [config.vit.depth - 1]
    return tuple(PruningStage(name, (start, end)) for (start, name), end in zip(starts, ends))


def _with_long_side(config: VppConfig, long_side: int) -> PreprocessConfig:
    if long_side < 32:
        raise ValueError(f"long side must be at least 32 pixels, got {long_side}")
    return dataclasses.replace(config.preprocess, long_side=long_side)
