"""Progress on stderr: a rich bar on a terminal, a plain line every few seconds elsewhere.

Logs, CI and `nohup` runs have no terminal; a bar would print nothing there (or garbage), and a
long video would be silent for many minutes. Without a terminal a line like
`clip: 120/480 frames, 3.1 fps, keep 0.452, ETA 0:01:56` is printed every `interval` seconds and
once at the end. `--quiet` silences both.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from vppcli.cli.app import stderr

PLAIN_INTERVAL = 5.0  # seconds between plain lines


class RunProgress:
    """Progress of one task (a video, an evaluation): `advance(done, keep)` after each unit."""

    def __init__(self, name: str, total: int | None, unit: str, quiet: bool,
                 interval: float = PLAIN_INTERVAL) -> None:
        self.name, self.total, self.unit, self.interval = name, total, unit, interval
        self.enabled = not quiet
        self.terminal = stderr.is_terminal
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._last_line = self._started
        self._done = 0
        self._done_printed = 0
        self._keep: float | None = None

    def __enter__(self) -> RunProgress:
        if self.enabled and self.terminal:
            self._bar = Progress(
                TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}", markup=False), TimeRemainingColumn(),
                console=stderr, transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.name, total=self.total, extra="")
        return self

    def advance(self, done: int, keep: float | None = None, total: int | None = None) -> None:
        """`done` units finished so far; `keep` the realised keep ratio, when there is one."""
        self._done, self._keep = done, keep
        if total is not None:
            self.total = total
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=self.total, extra=self._extra())
        elif (self.enabled and not self.terminal and done > self._done_printed
              and time.monotonic() - self._last_line >= self.interval):  # only news, never the same count again
            self._print_line()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self._done / elapsed if elapsed > 0 else 0.0

    def _rate_text(self) -> str:
        rate = self._rate()
        return f"{rate:.2f} fps" if self.unit == "frames" else f"{rate:.3f} {self.unit}/s"

    def _extra(self) -> str:
        return self._rate_text() + (f"  keep {self._keep:.3f}" if self._keep is not None else "")

    def _print_line(self) -> None:
        self._last_line, self._done_printed = time.monotonic(), self._done
        rate = self._rate()
        count = f"{self._done}/{self.total}" if self.total else str(self._done)
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {_duration((self.total - self._done) / rate)}"
        keep = f", keep {self._keep:.3f}" if self._keep is not None else ""
        stderr.print(Text(f"{self.name}: {count} {self.unit}, {self._rate_text()}{keep}{eta}"), soft_wrap=True,
                     highlight=False)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)
        elif self.enabled and not self.terminal and kind is None and self._done > self._done_printed:
            self._print_line()  # the final count, so that a log always shows how far it got


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
