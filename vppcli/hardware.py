"""What the CPU can do fast, and the precision that fits it.

bf16 only pays off on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX). Without it,
oneDNN and ATen emulate bf16 matmuls with conversions and run them about 100x slower than
fp32 (measured on a 2-core AVX2 machine: under 1 GFLOP/s vs about 80), so `auto` picks fp32
there and an explicit bf16 request is warned about.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Slow-down of the whole model in bf16 without native bf16, measured (see benchmarks/README.md).
EMULATED_BF16_SLOWDOWN = 100

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 is emulated even on a bf16-capable CPU.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class CpuCapabilities:
    avx512_bf16: bool
    amx: bool
    aten_kernels: str  # the SIMD level ATen dispatches to: DEFAULT, AVX2, AVX512, ...
    onednn_cap: str | None  # ONEDNN_MAX_CPU_ISA, if set

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls run in hardware: the CPU has the instructions and neither ATen nor
        oneDNN was restricted below them."""
        if not (self.avx512_bf16 or self.amx):
            return False
        if self.aten_kernels not in ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX"):
            return False
        return self.onednn_cap is None or self.onednn_cap.upper() not in _ONEDNN_ISAS_WITHOUT_BF16

    def describe(self) -> str:
        features = [name for name, present in (("AVX512-BF16", self.avx512_bf16), ("AMX", self.amx)) if present]
        text = f"ATen {self.aten_kernels} kernels, {'+'.join(features) or 'no native bf16'}"
        if self.onednn_cap:
            text += f", oneDNN capped at {self.onednn_cap}"
        return text


def cpu_capabilities() -> CpuCapabilities:
    return CpuCapabilities(
        avx512_bf16=bool(torch.cpu._is_avx512_bf16_supported()),
        amx=bool(torch.cpu._is_amx_tile_supported()),
        aten_kernels=torch.backends.cpu.get_cpu_capability(),
        onednn_cap=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
    )


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `requested` ("auto", "fp32" or "bf16") on `device`.

    auto: bf16 on CUDA devices that support it and on CPUs with native bf16, else fp32.
    bf16 on a CPU without native bf16 runs (it is correct), after one warning naming the cost.
    """
    if requested == "fp32":
        return torch.float32
    if device.type == "cuda":
        if requested == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16
    caps = cpu_capabilities()
    if requested == "auto":
        return torch.bfloat16 if caps.native_bf16 else torch.float32
    if requested != "bf16":
        raise ValueError(f"unknown dtype {requested!r}; use auto, fp32 or bf16")
    if not caps.native_bf16:
        logger.warning("bf16 on this CPU is emulated (%s): expect about %dx slower than fp32; "
                       "use --dtype fp32 or auto", caps.describe(), EMULATED_BF16_SLOWDOWN)
    return torch.bfloat16


def cpu_description() -> str:
    """The CPU model and the vector extensions that decide its speed, for benchmark reports."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model} ({', '.join(wanted) or 'no AVX2'})"
