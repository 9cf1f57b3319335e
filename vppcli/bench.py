"""`vpp bench`: dense vs pruned on the same weights and frames, in one process.

Frames are synthetic (a textured background with moving shapes) at exactly the requested
network size, so no resizing or padding is measured. The first `warmup` frames of the video are
run but not timed: a video's first frame is dense up to the first selective module, and the
first calls pay one-off allocation costs.

Each component's achieved GFLOP/s (analytical FLOPs / measured time) is reported next to the
machine's matmul GFLOP/s measured in the same run, so one reads how close each part runs to the
limit; the deformable attention is also timed against its former `grid_sample` formulation.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from vppcli.config import preset
from vppcli.inference import VideoPredictor
from vppcli.kernel_bench import compare_deform_attn, matmul_gflops
from vppcli.model.flops import frame_flops
from vppcli.model.rovis import build_model
from vppcli.model.temporal_reuse import TemporalReuse
from vppcli.profiling import SectionTimer, peak_memory, timed

logger = logging.getLogger(__name__)

COMPONENTS = ("spatial_prior", "vit_blocks", "adapter", "pruning", "pixel_decoder", "transformer_decoder", "tracker")
# Timed component -> the FLOP parts it runs (the "vit_blocks" section also embeds the patches).
_COMPONENT_FLOPS = {
    "spatial_prior": ("spatial_prior",), "vit_blocks": ("patch_embed", "vit_blocks"), "adapter": ("adapter",),
    "pruning": ("pruning",), "pixel_decoder": ("pixel_decoder",), "transformer_decoder": ("transformer_decoder",),
}


@dataclass
class RunReport:
    label: str
    keep_ratio: float | None
    ms_per_frame: float
    component_ms: dict[str, float]
    tokens_per_block: list[float]  # mean over timed frames
    realised_keep_ratio: float
    gflops: dict[str, float]
    peak_memory_mb: float
    peak_memory_kind: str
    gflops_per_s: dict[str, float] = field(default_factory=dict)  # achieved, per component and "total"
    reuse_budget: float | None = None  # temporal reuse in the pixel decoder (None = off)
    encoder_query_ratio: float = 1.0  # mean fraction of encoder queries recomputed per layer
    fpn_pixel_ratio: float = 1.0  # mean fraction of stride-4 pixels the FPN convolution computed
    refreshes: int = 0  # dense pixel-decoder frames among the timed ones (temporal reuse)


@dataclass
class BenchReport:
    preset: str
    size: tuple[int, int]
    frames: int
    warmup: int
    dtype: str
    device: str
    threads: int
    runs: list[RunReport] = field(default_factory=list)
    matmul_gflops_per_s: dict[str, float] = field(default_factory=dict)  # the machine's, per dtype
    deform_attn: dict[str, float] = field(default_factory=dict)  # pixel-decoder MSDA vs grid_sample

    def ratios(self) -> dict[str, float]:
        """Pruned / dense ratios of the first two runs, and dense over each later run (reuse)."""
        dense, pruned = self.runs[0], self.runs[1]
        later = {
            f"{run.label}_{name}": value for run in self.runs[2:] for name, value in (
                ("model_speedup", dense.ms_per_frame / run.ms_per_frame),
                ("model_flops_speedup", dense.gflops["total"] / run.gflops["total"]),
            )
        }
        return {
            "token_ratio": pruned.realised_keep_ratio / dense.realised_keep_ratio,
            "vit_time_ratio": pruned.component_ms["vit_blocks"] / dense.component_ms["vit_blocks"],
            "vit_flops_ratio": pruned.gflops["vit_blocks"] / dense.gflops["vit_blocks"],
            "model_speedup": dense.ms_per_frame / pruned.ms_per_frame,
            "model_flops_speedup": dense.gflops["total"] / pruned.gflops["total"],
            **{f"dense_{name}_of_matmul": self.fraction_of_matmul(dense, name) for name in dense.gflops_per_s},
            **later,
        }

    def fraction_of_matmul(self, run: RunReport, component: str) -> float:
        """A component's achieved GFLOP/s over this run's matmul GFLOP/s in the same dtype."""
        return run.gflops_per_s[component] / self.matmul_gflops_per_s[self.dtype]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ratios"] = self.ratios()
        return data


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """A smooth textured background with three shapes moving across it (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([
        127 + 60 * np.sin(xs / 37.0 + c) * np.cos(ys / 23.0 - c) for c in range(3)
    ], -1)
    background += rng.normal(0, 6, background.shape)
    frames = []
    for t in range(count):
        frame = background.copy()
        for k, colour in enumerate(((230, 40, 40), (40, 200, 60), (50, 80, 230))):
            cy = int(height * (0.3 + 0.2 * k) + 0.05 * height * np.sin(t / 3 + k))
            cx = int((0.15 + 0.25 * k) * width + 4 * t) % width
            radius = max(4, min(height, width) // (6 + 2 * k))
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 < radius**2
            frame[mask] = colour
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def _run(model: torch.nn.Module, frames: list[np.ndarray], warmup: int, keep_ratio: float | None, label: str,
         device: torch.device, dtype: torch.dtype, reuse: TemporalReuse | None = None) -> RunReport:
    predictor = VideoPredictor(model, keep_ratio=keep_ratio, device=device, dtype=dtype,
                               long_side=max(frames[0].shape[:2]), reuse=reuse)
    state = predictor.new_video()
    timer = SectionTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens = np.zeros(model.config.vit.depth)
    flops_total: dict[str, float] = {}
    num_tokens = 0
    encoder_fraction, fpn_fraction, refreshes = 0.0, 0.0, 0
    height, width = frames[0].shape[:2]
    encoder_tokens = sum((height // s) * (width // s) for s in (8, 16, 32))
    for index, frame in enumerate(frames):
        frame_timer = timer if index >= warmup else None
        with timed(frame_timer, "total"):
            instances = predictor.step(state, frame, frame_timer)
        if frame_timer is None:
            continue
        stats = instances.stats
        assert stats is not None
        tokens += stats.tokens_per_block
        num_tokens = stats.num_tokens
        encoder_queries, fpn_pixels = stats.encoder_queries, stats.fpn_pixels
        encoder_fraction += 1.0 if encoder_queries is None else encoder_queries / encoder_tokens
        fpn_fraction += 1.0 if fpn_pixels is None else fpn_pixels / ((height // 4) * (width // 4))
        refreshes += int(stats.reuse_refreshed)
        for name, value in frame_flops(model.config, stats.padded_size, stats.tokens_per_block,
                                       stats.num_track_queries, stats.map_candidates,
                                       encoder_queries, fpn_pixels).as_gflops().items():
            flops_total[name] = flops_total.get(name, 0.0) + value
    measured = len(frames) - warmup
    mean_tokens = tokens / measured
    peak, kind = peak_memory(device)
    component_ms = {name: timer.totals_ms.get(name, 0.0) / measured for name in COMPONENTS}
    gflops = {name: value / measured for name, value in flops_total.items()}
    ms_per_frame = timer.totals_ms["total"] / measured
    return RunReport(
        label=label,
        keep_ratio=keep_ratio,
        ms_per_frame=ms_per_frame,
        component_ms=component_ms,
        tokens_per_block=[round(float(t), 1) for t in mean_tokens],
        realised_keep_ratio=float(mean_tokens.sum() / (len(mean_tokens) * num_tokens)),
        gflops=gflops,
        peak_memory_mb=peak,
        peak_memory_kind=kind,
        gflops_per_s=achieved_rates(component_ms, ms_per_frame, gflops),
        reuse_budget=None if reuse is None else reuse.budget,
        encoder_query_ratio=encoder_fraction / measured,
        fpn_pixel_ratio=fpn_fraction / measured,
        refreshes=refreshes,
    )


def achieved_rates(component_ms: dict[str, float], ms_per_frame: float, gflops: dict[str, float]) -> dict[str, float]:
    """GFLOP/s per timed component and for the whole frame ("total")."""
    rates = {
        name: sum(gflops[part] for part in parts) / (component_ms[name] / 1e3)
        for name, parts in _COMPONENT_FLOPS.items() if component_ms.get(name, 0.0) > 0
    }
    rates["total"] = gflops["total"] / (ms_per_frame / 1e3)
    return rates


def run_benchmark(preset_name: str, size: tuple[int, int], keep_ratio: float | None, frames: int, warmup: int = 2,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", seed: int = 0,
                  reuse_budgets: tuple[float, ...] = ()) -> BenchReport:
    """Time a random-weight preset dense (keep ratio 1) and pruned (`keep_ratio`, None = native),
    then pruned with temporal reuse in the pixel decoder at each of `reuse_budgets`."""
    height, width = size
    if height % 32 or width % 32:
        raise ValueError(f"size {height}x{width} must be a multiple of 32 on both sides")
    if frames < 1:
        raise ValueError("need at least one timed frame")
    device = torch.device(device)
    config = preset(preset_name)
    model = build_model(config, seed).to(device)
    clip = synthetic_frames(warmup + frames, height, width, seed)
    report = BenchReport(preset_name, size, frames, warmup, str(dtype).removeprefix("torch."), str(device),
                         torch.get_num_threads())
    logger.info("measuring the machine's matmul rate")
    for matmul_dtype in dict.fromkeys((torch.float32, dtype)):
        report.matmul_gflops_per_s[str(matmul_dtype).removeprefix("torch.")] = matmul_gflops(matmul_dtype, device)
    runs: list[tuple[str, float | None, TemporalReuse | None]] = [("dense", 1.0, None), ("pruned", keep_ratio, None)]
    runs += [(f"reuse{budget:g}", keep_ratio, TemporalReuse(budget=budget)) for budget in reuse_budgets]
    for label, ratio, reuse in runs:
        logger.info("running %s (%d frames)", label, warmup + frames)
        report.runs.append(_run(model, clip, warmup, ratio, label, device, dtype, reuse))
    logger.info("timing the deformable attention against its grid_sample formulation")
    comparison = compare_deform_attn(config, size, dtype, device)
    report.deform_attn = {
        **asdict(comparison),
        "speedup": comparison.reference_ms / comparison.ms,
        "sampling_speedup": comparison.sampling_reference_ms / comparison.sampling_ms,
    }
    return report
