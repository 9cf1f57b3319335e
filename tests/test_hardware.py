"""Native-bf16 detection and the dtype that `auto` and `bf16` resolve to (no timings)."""

from __future__ import annotations

import logging

import pytest
import torch

import vppcli.hardware as hardware
from vppcli.hardware import CpuCapabilities, resolve_dtype

CPU = torch.device("cpu")
AVX2_ONLY = CpuCapabilities(avx512_bf16=False, amx=False, aten_kernels="AVX2", onednn_cap=None)
BF16_CPU = CpuCapabilities(avx512_bf16=True, amx=False, aten_kernels="AVX512", onednn_cap=None)


@pytest.mark.parametrize(("caps", "native"), [
    (AVX2_ONLY, False),
    (BF16_CPU, True),
    (CpuCapabilities(avx512_bf16=False, amx=True, aten_kernels="AVX512", onednn_cap=None), True),
    # a bf16 CPU restricted to AVX2 kernels (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) emulates bf16
    (CpuCapabilities(avx512_bf16=True, amx=False, aten_kernels="AVX2", onednn_cap=None), False),
    (CpuCapabilities(avx512_bf16=True, amx=False, aten_kernels="AVX512", onednn_cap="avx2"), False),
    (CpuCapabilities(avx512_bf16=True, amx=False, aten_kernels="AVX512", onednn_cap="AVX512_CORE_BF16"), True),
])
def test_native_bf16(caps, native):
    assert caps.native_bf16 is native


def test_auto_picks_fp32_and_bf16_warns_once_without_native_bf16(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: AVX2_ONLY)
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("auto", CPU) == torch.float32
        assert resolve_dtype("fp32", CPU) == torch.float32
        assert not caplog.records
        assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert len(caplog.records) == 1
    assert f"about {hardware.EMULATED_BF16_SLOWDOWN}x slower" in caplog.records[0].getMessage()


def test_auto_picks_bf16_on_native_bf16_cpus(monkeypatch, caplog):
    monkeypatch.setattr(hardware, "cpu_capabilities", lambda: BF16_CPU)
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("auto", CPU) == torch.bfloat16
        assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert not caplog.records


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp16", CPU)
