"""`vpp weights download` against a local HTTP server on 127.0.0.1 (never the internet): a
synthetic official checkpoint, a truncated one, an HTML page, a 404, and a full disk."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import io
import json
import stat
import threading
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vppcli.checkpoints import download_weights, load_model, read_metadata
from vppcli.checkpoints import download as download_module
from vppcli.checkpoints import registry
from vppcli.cli import app
from vppcli.errors import DownloadError, UsageError

from official_checkpoint import mmengine_checkpoint, random_official_state

NAME = "vpp-tiny-pkr41"
runner = CliRunner()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.payload` in the way `server.mode` says; honours `Range: bytes=N-`."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        server.ranges.append(self.headers.get("Range"))
        payload = server.payload
        if server.mode == "404":
            self.send_error(404, "Not Found")
        elif server.mode == "html":
            page = b"<!DOCTYPE html><html><body>Please sign in to OSF</body></html>"
            self._respond(200, page, {"Content-Type": "text/html; charset=utf-8"})
        elif server.mode == "cut":  # announces the whole file, sends half, hangs up
            self._respond(200, payload[: len(payload) // 2], {"Content-Length": str(len(payload))})
        elif server.mode == "short":  # a complete response of a truncated file
            self._respond(200, payload[: len(payload) // 2])
        else:
            start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else None
            if start is None:
                self._respond(200, payload)
            elif start >= len(payload):
                self._respond(416, b"", {"Content-Range": f"bytes */{len(payload)}"})
            else:
                self._respond(206, payload[start:], {"Content-Range": f"bytes {start}-{len(payload) - 1}/{len(payload)}"})

    def _respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
                   "Content-Disposition": 'attachment; filename="epoch_6.pth"', **(headers or {})}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    mode = "full"
    payload = b""
    ranges: list[str | None]

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-file are part of the tests


Served = namedtuple("Served", "server payload sha256")


@pytest.fixture(scope="module")
def payload() -> bytes:
    buffer = io.BytesIO()
    torch.save(mmengine_checkpoint(random_official_state("tiny", seed=3)), buffer)  # silent meta: the registry knows
    return buffer.getvalue()


@pytest.fixture
def served(payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.payload, server.ranges = payload, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/download/{NAME}"
    entries = tuple(dataclasses.replace(e, url=url) if e.name == NAME else e for e in registry.OFFICIAL)
    monkeypatch.setattr(registry, "OFFICIAL", entries)
    monkeypatch.setenv("VPP_CACHE", str(tmp_path / "cache"))
    yield Served(server, payload, hashlib.sha256(payload).hexdigest())
    server.shutdown()
    server.server_close()



def _cache(tmp_path: Path) -> list[str]:
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_interrupted_download_resumes_then_verifies_converts_and_records(served: Served, tmp_path: Path, umask_022):
    served.server.mode = "cut"
    with pytest.raises(DownloadError, match="interrupted at .* run the same command again to resume"):
        download_weights(NAME)
    assert _cache(tmp_path) == [f"{NAME}.pth.part"]
    half = len(served.payload) // 2
    assert (tmp_path / "cache" / f"{NAME}.pth.part").stat().st_size == half

    served.server.mode = "full"
    seen: list[tuple[int, int | None]] = []
    path = download_weights(NAME, progress=lambda done, total: seen.append((done, total)))
    assert served.server.ranges[-1] == f"bytes={half}-"
    assert seen[0] == (half, len(served.payload)) and seen[-1] == (len(served.payload), len(served.payload))
    assert _cache(tmp_path) == ["checksums.json", f"{NAME}.safetensors"]
    assert json.loads((tmp_path / "cache" / "checksums.json").read_text())[NAME]["sha256"] == served.sha256
    for written in ("checksums.json", f"{NAME}.safetensors"):  # a shared cache stays readable to its other users
        assert stat.S_IMODE((tmp_path / "cache" / written).stat().st_mode) == 0o644, written

    metadata = read_metadata(path)
    assert metadata.provenance["source_sha256"] == served.sha256
    assert metadata.provenance["source"] == "epoch_6.pth" and metadata.provenance["name"] == NAME
    assert metadata.schedule == "0.4" and metadata.provenance["schedule_source"] == "registry entry"
    assert load_model(NAME).config.pruning.map_keep_ratio == 0.6  # the name now resolves to the cache


def test_cli_download_keeps_the_original_and_later_checks_the_recorded_sha256(served: Served, tmp_path: Path):
    result = runner.invoke(app, ["weights", "download", NAME, "--keep-original"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "cache" / f"{NAME}.safetensors")
    assert _cache(tmp_path) == ["checksums.json", f"{NAME}.pth", f"{NAME}.safetensors"]
    again = runner.invoke(app, ["weights", "download", NAME])
    assert again.exit_code == 0 and "already downloaded" in again.stderr

    listing = json.loads(runner.invoke(app, ["weights", "list", "--json"]).stdout)
    row = next(r for r in listing["weights"] if r["name"] == NAME)
    assert row["local_path"] == str(tmp_path / "cache" / f"{NAME}.safetensors") and row["ap_track"] == 40.9

    served.server.payload = served.payload[:-1] + bytes([served.payload[-1] ^ 1])  # the upload changed
    changed = runner.invoke(app, ["weights", "download", NAME, "--force"])
    assert changed.exit_code == 6 and "sha256" in changed.stderr and "does not match" in changed.stderr
    assert _cache(tmp_path) == ["checksums.json", f"{NAME}.pth", f"{NAME}.safetensors"]


@pytest.mark.parametrize(("mode", "message"), [
    ("html", "HTML page instead of a checkpoint"),
    ("404", "HTTP 404"),
    ("short", "not a usable checkpoint and was deleted"),
])  # fmt: skip
def test_bad_answers_give_one_clear_line_and_leave_nothing(served: Served, tmp_path: Path, mode: str, message: str):
    served.server.mode = mode
    result = runner.invoke(app, ["weights", "download", NAME])
    assert result.exit_code == 6
    assert message in result.stderr and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [result.stderr.splitlines()[-1]]
    assert _cache(tmp_path) in ([], ["checksums.json"])
    assert not (tmp_path / "cache" / f"{NAME}.safetensors").exists()


def test_too_little_free_space_is_refused_before_downloading(served: Served, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(DownloadError, match="not enough disk space"):
        download_weights(NAME)
    assert _cache(tmp_path) == [] and served.server.ranges == [None]


class _FillsUp(io.FileIO):
    """A file on a disk that fills up after a few bytes."""

    def write(self, data: bytes) -> int:
        super().write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_that_fills_up_is_reported_and_leaves_nothing(served: Served, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(download_module, "open", _FillsUp, raising=False)
    with pytest.raises(DownloadError, match="disk holding .* is full; free some space"):
        download_weights(NAME)
    assert _cache(tmp_path) == []


def test_network_failures_are_download_errors(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    served.server.shutdown()
    served.server.server_close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match="cannot reach"):
        download_weights(NAME, timeout=5)
    assert _cache(tmp_path) == []


def test_names_that_cannot_be_downloaded(served: Served):
    with pytest.raises(UsageError, match="vpp-compact is bundled with vppcli; there is nothing to download"):
        download_weights("vpp-compact")
    result = runner.invoke(app, ["weights", "download", "vpp-tiny-pkr4"])
    assert result.exit_code == 2 and "did you mean vpp-tiny-pkr41" in result.stderr
