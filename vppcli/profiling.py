"""Per-component wall-clock timing, passed explicitly to the code it measures."""

from __future__ import annotations

import contextlib
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
