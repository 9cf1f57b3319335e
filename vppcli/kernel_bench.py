"""Yardsticks that `vpp bench` measures next to the model, in the same process.

* The machine's matmul rate: what a large, well-shaped GEMM reaches here, so that every
  component's achieved GFLOP/s can be read as a fraction of the limit.
* The deformable attention on the pixel decoder's shapes, today's implementation against the
  `grid_sample` formulation it replaced (same weights and inputs, timed alternately).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vppcli.config import VppConfig
from vppcli.model.deform_attn import MSDeformAttn, deformable_sample
from vppcli.model.deform_reference import grid_sample_deformable, grid_sample_forward
from vppcli.model.pixel_decoder import pixel_centres

MATMUL_SIZE = 2048  # 17 GFLOP per product: long enough to time, large enough for full speed


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Median GFLOP/s of a square `MATMUL_SIZE` matmul in `dtype` (one untimed warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator).to(device, dtype) for _ in range(2))
    torch.matmul(a, b)
    times = [_seconds(lambda: torch.matmul(a, b), device) for _ in range(repeats)]
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


@dataclass
class DeformAttnComparison:
    """Milliseconds of one pixel-decoder deformable attention (median of alternate runs)."""

    queries: int
    ms: float  # the whole module: projections, sampling, output projection
    reference_ms: float  # the same with the grid_sample formulation, same weights and inputs
    sampling_ms: float  # the sampling alone (what changed), on the module's own locations
    sampling_reference_ms: float


@torch.inference_mode()
def compare_deform_attn(config: VppConfig, size: tuple[int, int], dtype: torch.dtype, device: torch.device,
                        repeats: int = 5, seed: int = 0) -> DeformAttnComparison:
    """Time `MSDeformAttn` against its `grid_sample` reference on the pixel decoder's shapes at
    network input `size` (levels at strides 32, 16, 8; queries = values = every pixel)."""
    head = config.head
    height, width = size
    shapes = [(height // s, width // s) for s in (32, 16, 8)][: head.num_feature_levels]
    torch.manual_seed(seed)
    module = MSDeformAttn(head.feat_channels, head.num_encoder_heads, len(shapes), head.num_encoder_points)
    module = module.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    query = torch.randn(1, tokens, head.feat_channels, generator=generator).to(device)
    reference = pixel_centres(shapes, device, torch.float32)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fast() -> object:
        with autocast:
            return module(query, reference, query, shapes)

    def slow() -> object:
        with autocast:
            return grid_sample_forward(module, query, reference, query, shapes)

    fast(), slow()
    pairs = [(_seconds(fast, device), _seconds(slow, device)) for _ in range(repeats)]

    # The sampling alone, on the locations and weights the module predicts for this query.
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    values = module.value_proj(query).view(1, tokens, heads, -1)
    offsets = module.sampling_offsets(query).view(1, tokens, heads, levels, points, 2)
    weights = module.attention_weights(query).view(1, tokens, heads, -1).softmax(-1).view(offsets.shape[:-1])
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=device)
    locations = reference[:, :, None, :, None, :] + offsets / sizes[:, None, :]
    pixels = locations * sizes[:, None, :] - 0.5
    pixel_x, pixel_y = (pixels[..., axis].reshape(1, tokens, -1) for axis in (0, 1))
    flat_weights = weights.reshape(1, tokens, -1)
    sampling = [
        (_seconds(lambda: deformable_sample(values, shapes, pixel_x, pixel_y, flat_weights, points), device),
         _seconds(lambda: grid_sample_deformable(values, shapes, locations, weights), device))
        for _ in range(repeats)
    ]
    return DeformAttnComparison(
        queries=tokens,
        ms=statistics.median(p[0] for p in pairs) * 1e3,
        reference_ms=statistics.median(p[1] for p in pairs) * 1e3,
        sampling_ms=statistics.median(p[0] for p in sampling) * 1e3,
        sampling_reference_ms=statistics.median(p[1] for p in sampling) * 1e3,
    )
