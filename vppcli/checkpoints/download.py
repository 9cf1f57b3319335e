"""Downloading the authors' checkpoints into the cache: resumable, verified, then converted.

Standard library only (urllib). The download goes to `<cache>/<name>.pth.part`; an interrupted
one is resumed with an HTTP Range request. A finished file is checked (size and sha256 when the
registry or an earlier download knows them; otherwise its sha256 is recorded in
`<cache>/checksums.json` once it has converted), converted to `<cache>/<name>.safetensors`, and
deleted unless the original is asked for. A file that cannot be a checkpoint (an HTML page, a
truncated or corrupt archive, a wrong checksum) is deleted, so the cache never holds one.
"""

from __future__ import annotations

import errno
import http.client
import json
import logging
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vppcli.checkpoints.format import first_line, utc_now
from vppcli.checkpoints.official import load_official, sha256_file, write_conversion
from vppcli.checkpoints.registry import OSF_PROJECT, OfficialWeights, cache_dir, official_entry
from vppcli.errors import CheckpointError, DownloadError, OutputError
from vppcli.outputs.atomic import AtomicFile

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)
CHUNK = 1 << 20
TIMEOUT_S = 60.0
CHECKSUMS = "checksums.json"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_FILENAME = re.compile(r"""filename\*?=(?:UTF-8'')?["']?([^"';]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Fetched:
    """A complete download waiting for conversion."""

    path: Path
    sha256: str
    size: int
    source_name: str  # the server's file name (Content-Disposition), else <name>.pth


def part_path(entry: OfficialWeights) -> Path:
    return cache_dir() / f"{entry.name}.pth.part"


def original_path(entry: OfficialWeights) -> Path:
    return cache_dir() / f"{entry.name}.pth"


def recorded_checksums() -> dict[str, dict[str, Any]]:
    """What earlier downloads recorded: name -> {sha256, size, url, date}."""
    path = cache_dir() / CHECKSUMS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s (%s)", path, first_line(error))
        return {}
    return data if isinstance(data, dict) else {}


def download_weights(
    name: str,
    *,
    keep_original: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download, verify and convert the released checkpoint `name`; returns the `.safetensors` path.

    An already converted file is returned as is unless `force`.
    """
    entry = official_entry(name)
    target = cache_dir() / entry.file_name
    if target.is_file() and not force:
        return target
    return install(entry, fetch(entry, progress=progress, timeout=timeout), keep_original=keep_original)


def fetch(entry: OfficialWeights, *, progress: ProgressCallback | None = None, timeout: float = TIMEOUT_S) -> Fetched:
    """Download `entry` into its `.part` file (resuming a partial one) and check size and sha256."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create the cache directory {cache_dir()}: {error.strerror or error}") from None
    part = part_path(entry)
    known = recorded_checksums().get(entry.name, {})
    expected_size = entry.size or known.get("size")
    expected_sha = entry.sha256 or known.get("sha256")
    start = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and start > expected_size:
        part.unlink()
        start = 0
    source_name = f"{entry.name}.pth"
    if expected_size is None or start < expected_size:
        source_name = _transfer(entry, part, start, expected_size, progress, timeout) or source_name
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"{entry.name}: downloaded {size} bytes, expected {expected_size}; the file was deleted, "
                            "run the command again")
    digest = sha256_file(part)
    if expected_sha is not None and digest != expected_sha:
        part.unlink()
        raise DownloadError(f"{entry.name}: sha256 {digest[:12]}... does not match the expected {expected_sha[:12]}...; "
                            "the file was deleted (the upload may have changed; run again or report it)")
    return Fetched(part, digest, size, source_name)


def install(entry: OfficialWeights, fetched: Fetched, *, keep_original: bool = False) -> Path:
    """Convert a fetched file into `<cache>/<name>.safetensors`, record its checksum, tidy up."""
    try:
        checkpoint = load_official(fetched.path)
    except CheckpointError as error:
        fetched.path.unlink(missing_ok=True)
        raise DownloadError(f"{entry.name}: the downloaded file is not a usable checkpoint and was deleted: {error}") from None
    target = cache_dir() / entry.file_name
    try:
        write_conversion(
            checkpoint, target, source=fetched.path, source_name=fetched.source_name, source_sha256=fetched.sha256,
            schedule_hint=None if entry.schedule == "dense" else entry.schedule,
            provenance={"name": entry.name, "url": entry.url},
        )
    except CheckpointError as error:
        kept = original_path(entry)
        os.replace(fetched.path, kept)
        raise CheckpointError(f"{entry.name}: downloaded but not converted ({error}); the original is kept at {kept}") from None
    _record_checksum(entry, fetched)
    if keep_original:
        os.replace(fetched.path, original_path(entry))
    else:
        fetched.path.unlink()
    return target


def _transfer(
    entry: OfficialWeights, part: Path, start: int, expected_size: int | None,
    progress: ProgressCallback | None, timeout: float,
) -> str | None:
    """Stream the URL into `part` from byte `start`; returns the server's file name if it gave one."""
    headers = {"User-Agent": "vppcli", "Accept": "application/octet-stream, */*"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(entry.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the partial file does not fit the server's file: start over
            part.unlink()
            return _transfer(entry, part, 0, expected_size, progress, timeout)
        hint = f" (the file may have moved; see {OSF_PROJECT})" if error.code == 404 else ""
        raise DownloadError(f"{entry.name}: {entry.url} answered HTTP {error.code} {error.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{entry.name}: cannot reach {entry.url} ({reason}); check the connection and run again") from None
    with response:
        total, append = _plan(response, start, entry)
        done = start if append else 0
        content_type = response.headers.get("Content-Type", "")
        if "text/html" in content_type.lower():  # nothing written yet: a partial file stays resumable
            raise DownloadError(f"{entry.name}: {entry.url} returned an HTML page instead of a checkpoint "
                                f"(the link may need a login or have moved; see {OSF_PROJECT})")
        _check_space(part.parent, (total - done) if total is not None else None, entry)
        with open(part, "ab" if append else "wb") as out:
            done = _copy(response, out, entry, part, done, total, progress)
    if total is not None and done < total:
        raise DownloadError(f"{entry.name}: download interrupted at {done} of {total} bytes; run the same command "
                            "again to resume")
    disposition = response.headers.get("Content-Disposition", "")
    match = _FILENAME.search(disposition)
    return os.path.basename(match.group(1)) if match else None


def _plan(response: http.client.HTTPResponse, start: int, entry: OfficialWeights) -> tuple[int | None, bool]:
    """(total size or None, whether to append to the partial file) from the response headers."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != start:
            raise DownloadError(f"{entry.name}: the server resumed at the wrong offset; delete "
                                f"{part_path(entry)} and run again")
        return (int(match.group(3)) if match.group(3) != "*" else None), True
    length = response.headers.get("Content-Length")
    return (int(length) if length and length.isdigit() else None), False  # 200: the whole file again


def _copy(
    response: http.client.HTTPResponse, out: BinaryIO, entry: OfficialWeights, part: Path,
    done: int, total: int | None, progress: ProgressCallback | None,
) -> int:
    first = done == 0
    if progress is not None:
        progress(done, total)
    while True:
        try:
            chunk = response.read(CHUNK)
        except (http.client.HTTPException, OSError, socket.timeout) as error:
            out.flush()
            raise DownloadError(f"{entry.name}: download interrupted at {done} of {total or '?'} bytes "
                                f"({first_line(error)}); run the same command again to resume") from None
        if not chunk:
            return done
        if first and chunk.lstrip()[:1] == b"<":
            out.close()
            part.unlink(missing_ok=True)
            raise DownloadError(f"{entry.name}: {entry.url} returned a web page instead of a checkpoint "
                                f"(the link may need a login or have moved; see {OSF_PROJECT})")
        first = False
        try:
            out.write(chunk)
        except OSError as error:
            out.close()
            part.unlink(missing_ok=True)
            if error.errno == errno.ENOSPC:
                raise DownloadError(f"{entry.name}: the disk holding {part.parent} is full; free some space and "
                                    "run again") from None
            raise DownloadError(f"{entry.name}: cannot write {part}: {error.strerror or error}") from None
        done += len(chunk)
        if progress is not None:
            progress(done, total)


def _check_space(directory: Path, remaining: int | None, entry: OfficialWeights) -> None:
    """Refuse early when the download plus its converted copy cannot fit."""
    needed = (remaining or 0) + entry.params * 4
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DownloadError(f"{entry.name}: not enough disk space in {directory}: about {needed / 1e6:.0f} MB "
                            f"needed, {free / 1e6:.0f} MB free")


def _record_checksum(entry: OfficialWeights, fetched: Fetched) -> None:
    checksums = recorded_checksums()
    if entry.name in checksums:
        return
    checksums[entry.name] = {"sha256": fetched.sha256, "size": fetched.size, "url": entry.url, "date": utc_now()}
    path = cache_dir() / CHECKSUMS
    try:
        with AtomicFile(path) as out:
            json.dump(checksums, out, indent=2, sort_keys=True)
    except OutputError as error:
        log.warning("could not record the checksum of %s (%s)", entry.name, error)
