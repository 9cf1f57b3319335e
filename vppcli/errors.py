"""Errors users can act on, each with the exit code the CLI returns for it.

Library code raises these with a one-line message naming the culprit; the CLI prints the
message (no traceback) and exits with `exit_code`. Anything else is a bug (exit 1).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CHECKPOINT = 4
EXIT_OUTPUT = 5
EXIT_DOWNLOAD = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what shells report for a writer whose reader went away

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 internal error or out of memory; 2 usage error (bad option or value); "
    "3 unreadable input (missing, corrupt or empty video, frame directory or dataset); "
    "4 bad checkpoint; 5 output could not be written; 6 download failed; 130 interrupted; "
    "141 stdout closed early (e.g. piped into head)."
)


class VppError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = EXIT_INTERNAL


class UsageError(VppError, ValueError):
    exit_code = EXIT_USAGE


class InputError(VppError):
    """An input (video, frames, dataset) cannot be read."""

    exit_code = EXIT_INPUT


class CheckpointError(VppError):
    """A checkpoint is missing, unsafe, or does not match the model."""

    exit_code = EXIT_CHECKPOINT


class OutputError(VppError):
    """An output file or directory cannot be written."""

    exit_code = EXIT_OUTPUT


class DownloadError(VppError):
    exit_code = EXIT_DOWNLOAD


class ResourceError(VppError):
    """The machine ran out of something (memory) that a smaller setting may fit in."""

    exit_code = EXIT_INTERNAL
