"""Write-to-temporary-then-rename, so that a final name only ever holds a complete output.

Temporaries are hidden siblings of their final name (`.<name>.tmp-<pid>`): the same directory
means the same filesystem, where `os.replace` is atomic. A crash can leave such a hidden
temporary behind, never a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from vppcli.errors import OutputError

logger = logging.getLogger(__name__)


def temporary_sibling(final: Path, suffix: str = "") -> Path:
    """Hidden temporary path next to `final`; `suffix` keeps an extension tools look at."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}{suffix}")


def ensure_output_dir(directory: Path) -> None:
    """Create `directory` (and parents) and check that files can be created in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output directory {directory}: {error.strerror or error}") from error
    # Creating a real file is the only reliable test: os.access says yes to root, whatever the mode.
    probe = temporary_sibling(directory / "write-test")
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise OutputError(f"output directory {directory} is not writable: {error.strerror or error}") from error


def remove_quietly(path: Path) -> None:
    """Remove a temporary file or directory; failing to clean up must not hide the real error."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not remove temporary %s: %s", path, error)


def check_free_for_file(final: Path) -> None:
    """Fail now, not at the rename, when a file cannot replace `final`: a directory is in the way."""
    if final.is_dir() and not final.is_symlink():
        raise OutputError(f"cannot write {final}: a directory is in the way")


class AtomicFile:
    """A file written under a hidden temporary name and renamed into place.

    Two phases: `finish()` does everything that can fail (close, flush to disk, check that the
    final name can be replaced), `commit()` only renames. Write through `open()` (once), or let
    something else (an encoder) write `temporary`; `commit()` alone finishes first; `discard()`
    removes the temporary and is a no-op after `commit()`. An exception inside a `with` block
    discards, an OSError coming out as an OutputError; leaving the block commits.
    """

    def __init__(self, final: Path, mode: str = "w", suffix: str = "") -> None:
        self.final = final
        self.temporary = temporary_sibling(final, suffix)
        self._mode = mode
        self._handle: IO[Any] | None = None
        self._finished = False
        self._committed = False

    def open(self) -> IO[Any]:
        encoding = None if "b" in self._mode else "utf-8"
        try:
            self._handle = open(self.temporary, self._mode, encoding=encoding)
        except OSError as error:
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        return self._handle

    @contextlib.contextmanager
    def filling(self) -> Iterator[IO[Any]]:
        """`open()`, let the block write, then `finish()` (not commit): for a later `commit()`.
        An exception inside the block discards, as in a `with AtomicFile(...)` block."""
        check_free_for_file(self.final)  # before the block's work, not only after it
        handle = self.open()
        try:
            yield handle
        except BaseException as error:
            self._abandon(error)
            raise
        self.finish()

    def finish(self) -> None:
        """Close and flush the temporary to disk; it is discarded if that fails."""
        try:
            check_free_for_file(self.final)
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            with open(self.temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError as error:
            self.discard()
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        except BaseException:
            self.discard()
            raise
        self._finished = True

    def commit(self) -> Path:
        """Rename into place (replacing an older `final`)."""
        if not self._finished:
            self.finish()
        try:
            os.replace(self.temporary, self.final)
        except OSError as error:
            self.discard()
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        self._committed = True
        return self.final

    def discard(self) -> None:
        if self._committed:
            return
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass  # the file is deleted next; its content no longer matters
            self._handle = None
        remove_quietly(self.temporary)

    def __enter__(self) -> IO[Any]:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._abandon(error)

    def _abandon(self, error: BaseException | None) -> None:
        """Discard after a failed write; an OSError (e.g. a full disk) comes out as an OutputError."""
        self.discard()
        if isinstance(error, OSError):
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error


class AtomicDirectory:
    """A directory filled under a hidden temporary name and renamed into place: `finish()` clears
    the way, `commit()` renames, `discard()` removes the temporary (a no-op after `commit()`)."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temporary = temporary_sibling(final)
        # Where an existing `final` is moved while the new one takes its place.
        self._previous = final.with_name(f".{final.name}.old-{os.getpid()}")
        self._committed = False
        try:
            if self.temporary.exists():  # left by a crashed run whose pid we now reuse
                shutil.rmtree(self.temporary)
            self.temporary.mkdir()
        except OSError as error:
            raise OutputError(f"cannot create {final}: {error.strerror or error}") from error

    def finish(self) -> None:
        """Remove what a crashed run with our pid left where `commit()` moves the old directory."""
        if os.path.lexists(self._previous):
            try:
                if self._previous.is_dir() and not self._previous.is_symlink():
                    shutil.rmtree(self._previous)
                else:
                    self._previous.unlink()
            except OSError as error:
                raise OutputError(f"cannot write {self.final}: cannot remove {self._previous}: "
                                  f"{error.strerror or error}") from error

    def commit(self) -> Path:
        """Rename into place. An existing directory is moved aside first and removed after (a
        directory cannot be replaced in one step): readers see the old one, for an instant none,
        then the new one, never a mix."""
        previous = self._previous
        try:
            if os.path.lexists(self.final):
                os.replace(self.final, previous)
            os.replace(self.temporary, self.final)
        except OSError as error:
            if os.path.lexists(previous) and not os.path.lexists(self.final):
                try:
                    os.replace(previous, self.final)
                except OSError:
                    logger.warning("the previous %s is left at %s", self.final, previous)
            remove_quietly(self.temporary)
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        self._committed = True
        if os.path.lexists(previous):
            remove_quietly(previous)
        return self.final

    def discard(self) -> None:
        if not self._committed:
            remove_quietly(self.temporary)
