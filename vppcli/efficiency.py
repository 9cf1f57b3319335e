"""Efficiency of a run (`vpp segment`, `vpp eval`): realised patch keep ratio per ViT block and
its mean (the paper's PKR), analytical GFLOPs per frame (backbone vs head), frames per second,
peak memory.

Figures are running sums, so videos, resumed runs and shards merge exactly as one run would
(`vpp eval` stores each video's sums with its predictions and merges them in video-id order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vppcli.config import VppConfig
from vppcli.model.flops import frame_flops
from vppcli.results import FrameStats

GFLOPS_PARTS = ("vit_blocks", "backbone", "head", "total")


@dataclass
class EfficiencyMeter:
    """Running sums over frames. `keep_sums[b]` adds each frame's kept fraction of block b, so
    the per-block keep ratio is a mean over frames (as the per-frame PKR is)."""

    frames: int = 0
    seconds: float = 0.0
    keep_sums: list[float] = field(default_factory=list)
    gflops_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GFLOPS_PARTS, 0.0))
    peak_memory_mb: float = 0.0
    peak_memory_kind: str = ""

    def add_frame(self, config: VppConfig, stats: FrameStats) -> None:
        fractions = [tokens / stats.num_tokens for tokens in stats.tokens_per_block]
        if not self.keep_sums:
            self.keep_sums = [0.0] * len(fractions)
        self.keep_sums = [total + f for total, f in zip(self.keep_sums, fractions)]
        gflops = frame_flops(config, stats.padded_size, stats.tokens_per_block, stats.num_track_queries,
                             stats.map_candidates, stats.encoder_queries, stats.fpn_pixels).as_gflops()
        for part in GFLOPS_PARTS:
            self.gflops_sums[part] += gflops[part]
        self.frames += 1

    def merge(self, other: EfficiencyMeter) -> None:
        if other.keep_sums:
            self.keep_sums = [a + b for a, b in zip(self.keep_sums, other.keep_sums)] if self.keep_sums \
                else list(other.keep_sums)
        for part in GFLOPS_PARTS:
            self.gflops_sums[part] += other.gflops_sums[part]
        self.frames += other.frames
        self.seconds += other.seconds
        if other.peak_memory_mb >= self.peak_memory_mb:
            self.peak_memory_mb, self.peak_memory_kind = other.peak_memory_mb, other.peak_memory_kind

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "seconds": self.seconds, "keep_sums": self.keep_sums,
                "gflops_sums": self.gflops_sums, "peak_memory_mb": self.peak_memory_mb,
                "peak_memory_kind": self.peak_memory_kind}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EfficiencyMeter:
        return cls(int(data["frames"]), float(data["seconds"]), [float(v) for v in data["keep_sums"]],
                   {part: float(data["gflops_sums"][part]) for part in GFLOPS_PARTS},
                   float(data["peak_memory_mb"]), str(data["peak_memory_kind"]))

    def report(self) -> EfficiencyReport:
        frames = max(self.frames, 1)
        per_block = tuple(total / frames for total in self.keep_sums)
        return EfficiencyReport(
            frames=self.frames,
            seconds=self.seconds,
            fps=self.frames / self.seconds if self.seconds > 0 else 0.0,
            keep_ratio_per_block=per_block,
            keep_ratio=sum(per_block) / len(per_block) if per_block else 0.0,
            gflops_per_frame={part: total / frames for part, total in self.gflops_sums.items()},
            peak_memory_mb=self.peak_memory_mb,
            peak_memory_kind=self.peak_memory_kind,
        )


@dataclass(frozen=True)
class EfficiencyReport:
    """frames/seconds/fps: processed frames, seconds spent on them (frame decoding, model and
    tracking; summed over processes when sharded) and frames per second of one process.
    keep_ratio: the PKR, mean of `keep_ratio_per_block` (each a mean over frames).
    gflops_per_frame: analytical, for the tokens actually processed (`GFLOPS_PARTS`).
    peak_memory_mb: the highest of the processes (CUDA max allocated, or peak RSS on CPU)."""

    frames: int
    seconds: float
    fps: float
    keep_ratio_per_block: tuple[float, ...]
    keep_ratio: float
    gflops_per_frame: Mapping[str, float]
    peak_memory_mb: float
    peak_memory_kind: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "seconds": round(self.seconds, 3), "fps": round(self.fps, 3),
            "keep_ratio": round(self.keep_ratio, 4),
            "keep_ratio_per_block": [round(v, 4) for v in self.keep_ratio_per_block],
            "gflops_per_frame": {part: round(v, 3) for part, v in self.gflops_per_frame.items()},
            "peak_memory_mb": round(self.peak_memory_mb, 1), "peak_memory_kind": self.peak_memory_kind,
        }


def merged(meters: Iterable[EfficiencyMeter]) -> EfficiencyMeter:
    total = EfficiencyMeter()
    for meter in meters:
        total.merge(meter)
    return total
