"""Per-component wall-clock timing (passed explicitly to the code it measures) and peak memory."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class SectionTimer:
    """Accumulates milliseconds per named section; synchronises CUDA so GPU work is counted."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.totals_ms: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals_ms[name] += (time.perf_counter() - start) * 1e3


def timed(timer: SectionTimer | None, name: str) -> contextlib.AbstractContextManager[None]:
    """`timer.section(name)`, or a no-op when no timer is given."""
    return timer.section(name) if timer is not None else contextlib.nullcontext()


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(MiB, what was measured): CUDA max allocated on a GPU, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"
