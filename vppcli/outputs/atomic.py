"""Write-to-temporary-then-rename, so that a final name only ever holds a complete output.

Temporaries are hidden siblings of their final name (`.<name>.tmp-<pid>`): the same directory
means the same filesystem, where `os.replace` is atomic. A crash can leave such a hidden
temporary behind, never a truncated file under the final name.
"""

from __future__ import annotations

import logging
import os
import shutil
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


def commit_file(temporary: Path, final: Path) -> None:
    """Flush `temporary` to disk and rename it to `final` (replacing an older `final`)."""
    try:
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except OSError as error:
        remove_quietly(temporary)
        raise OutputError(f"cannot write {final}: {error.strerror or error}") from error


class AtomicFile:
    """A file written under a hidden temporary name and renamed into place by `commit()`.

    Use `open()` once, write, then `commit()` or `discard()`; an exception inside a `with`
    block discards (an OSError comes out as an OutputError).
    """

    def __init__(self, final: Path, mode: str = "w", suffix: str = "") -> None:
        self.final = final
        self.temporary = temporary_sibling(final, suffix)
        self._mode = mode
        self._handle: IO[Any] | None = None

    def open(self) -> IO[Any]:
        encoding = None if "b" in self._mode else "utf-8"
        try:
            self._handle = open(self.temporary, self._mode, encoding=encoding)
        except OSError as error:
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        return self._handle

    def commit(self) -> Path:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as error:
                self.discard()
                raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
            self._handle = None
        commit_file(self.temporary, self.final)
        return self.final

    def discard(self) -> None:
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
            return
        self.discard()
        if isinstance(error, OSError):  # e.g. a full disk while writing
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error


class AtomicDirectory:
    """A directory filled under a hidden temporary name and renamed into place by `commit()`."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temporary = temporary_sibling(final)
        try:
            if self.temporary.exists():  # left by a crashed run whose pid we now reuse
                shutil.rmtree(self.temporary)
            self.temporary.mkdir()
        except OSError as error:
            raise OutputError(f"cannot create {final}: {error.strerror or error}") from error

    def commit(self) -> Path:
        """Rename into place. An existing directory is moved aside first and removed after (a
        directory cannot be replaced in one step): readers see the old one, for an instant none,
        then the new one, never a mix."""
        previous = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
        try:
            if self.final.exists():
                os.replace(self.final, previous)
            os.replace(self.temporary, self.final)
        except OSError as error:
            if previous.exists() and not self.final.exists():
                try:
                    os.replace(previous, self.final)
                except OSError:
                    logger.warning("the previous %s is left at %s", self.final, previous)
            remove_quietly(self.temporary)
            raise OutputError(f"cannot write {self.final}: {error.strerror or error}") from error
        if previous.exists():
            remove_quietly(previous)
        return self.final

    def discard(self) -> None:
        remove_quietly(self.temporary)
