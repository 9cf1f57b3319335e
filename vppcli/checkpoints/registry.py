"""Models known by name: the authors' released checkpoints and the bundled model, and where their
converted `.safetensors` files live (the user cache, the bundled `weights/` directory)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from vppcli.errors import CheckpointError, UsageError

SUFFIX = ".safetensors"
# Suffixes that mark an argument as a file path rather than a registered name.
_FILE_SUFFIXES = (SUFFIX, ".pth", ".pt", ".ckpt", ".bin")

_OSF = "https://osf.io/{}/?action=download"
# The authors' README: "Checkpoints to the model are available at" this OSF project.
OSF_PROJECT = "https://osf.io/u2x34/files/osfstorage"
OFFICIAL_LICENSE = (
    "Weights by P. Glandorf, T. Norrenbrock, B. Rosenhahn (Video Patch Pruning, CVPRW 2026), released on OSF "
    f"({OSF_PROJECT}) without a stated licence; cite the paper when you use them."
)
OFFICIAL_DATASET = "YouTube-VIS 2021"


@dataclass(frozen=True)
class OfficialWeights:
    """One released checkpoint and the numbers the authors report for it on YouTube-VIS 2021."""

    name: str
    variant: str  # preset it converts to: tiny | small
    schedule: str  # trained pruning schedule: dense | 0.55 | 0.4 (see schedules.SCHEDULES)
    keep_ratio: float  # realised patch keep ratio (PKR) in the authors' table
    ap_track: float
    map_bbox: float
    map_segm: float
    url: str
    log_url: str
    params: int  # parameters of the converted model
    size: int | None = None  # bytes of the original file, when known (else recorded on first download)
    sha256: str | None = None  # of the original file, when known (else recorded on first download)

    @property
    def file_name(self) -> str:
        return self.name + SUFFIX


@dataclass(frozen=True)
class BundledWeights:
    """A model shipped inside vppcli (no download)."""

    name: str
    variant: str  # preset
    description: str

    @property
    def file_name(self) -> str:
        return self.name + SUFFIX


_TINY, _TINY_DENSE, _SMALL, _SMALL_DENSE = 27_729_009, 27_680_665, 47_598_753, 47_409_913
OFFICIAL: tuple[OfficialWeights, ...] = (
    OfficialWeights("vpp-small-dense", "small", "dense", 1.0, 50.4, 57.3, 52.3,
                    _OSF.format("kxfrd"), _OSF.format("vhcqf"), _SMALL_DENSE),
    OfficialWeights("vpp-small-pkr52", "small", "0.55", 0.515, 49.8, 56.1, 51.3,
                    _OSF.format("m8kjw"), _OSF.format("kzy87"), _SMALL),
    OfficialWeights("vpp-small-pkr39", "small", "0.4", 0.393, 48.5, 54.3, 49.9,
                    _OSF.format("yxjk6"), _OSF.format("2kxcg"), _SMALL),
    OfficialWeights("vpp-tiny-dense", "tiny", "dense", 1.0, 42.2, 49.1, 44.8,
                    _OSF.format("pq9jd"), _OSF.format("75ucm"), _TINY_DENSE),
    OfficialWeights("vpp-tiny-pkr53", "tiny", "0.55", 0.527, 42.3, 49.9, 45.7,
                    _OSF.format("e6fa9"), _OSF.format("v7jdc"), _TINY),
    OfficialWeights("vpp-tiny-pkr41", "tiny", "0.4", 0.409, 40.9, 47.6, 43.6,
                    _OSF.format("bwhge"), _OSF.format("tg5ap"), _TINY),
)  # fmt: skip
# Listed (and resolvable) only where `local_path` finds its file: an installation can lack it.
BUNDLED: tuple[BundledWeights, ...] = (
    BundledWeights("vpp-compact", "compact",
                   "bundled: compact preset trained on `vpp synth` data (10 synthetic shape categories)"),
)
DEFAULT_MODEL = "vpp-compact"  # what segment, eval and Segmenter run when no model is named
# One stderr line whenever the bundled model runs: its classes are not real-world ones.
SYNTHETIC_NOTICE = ("{name} is the bundled model: it knows only the 10 synthetic shape categories of `vpp synth`, "
                    "no real objects; for real video run `vpp weights download vpp-tiny-pkr53` and pass "
                    "--weights vpp-tiny-pkr53")


def find_entry(name: str) -> OfficialWeights | BundledWeights | None:
    for entry in (*OFFICIAL, *BUNDLED):
        if entry.name == name:
            return entry
    return None


def official_entry(name: str) -> OfficialWeights:
    """The released checkpoint called `name`; a one-line `UsageError` (with a close name) otherwise."""
    entry = find_entry(name)
    if isinstance(entry, OfficialWeights):
        return entry
    if isinstance(entry, BundledWeights):
        raise UsageError(f"{name} is bundled with vppcli; there is nothing to download")
    raise UsageError(f"unknown weights {name!r}{_suggestion(name)}; `vpp weights list` shows the names")


def cache_dir() -> Path:
    """Where downloaded and converted weights live: $VPP_CACHE, else $XDG_CACHE_HOME/vppcli, else
    ~/.cache/vppcli. Not created here."""
    if os.environ.get("VPP_CACHE"):
        return Path(os.environ["VPP_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vppcli"
    return Path.home() / ".cache" / "vppcli"


def bundled_dirs() -> tuple[Path, ...]:
    """`vppcli/weights/` of an installed package, then `weights/` of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    return package / "weights", package.parent / "weights"


def local_path(name: str) -> Path | None:
    """The converted file of a named model, if present: the cache first, then the bundled directories."""
    for directory in (cache_dir(), *bundled_dirs()):
        candidate = directory / (name + SUFFIX)
        if candidate.is_file():
            return candidate
    return None


def default_weights() -> str:
    """The name of the bundled default model; a one-line `UsageError` where its file is missing."""
    if local_path(DEFAULT_MODEL) is None:
        raise UsageError(f"no model: no --weights given and the bundled default model ({DEFAULT_MODEL}) is not in "
                         "this installation; pass --weights FILE_OR_NAME (see `vpp weights list`), or --preset NAME "
                         "for random weights (testing only)")
    return DEFAULT_MODEL


def bundled_name(path: Path) -> str | None:
    """The bundled model that the checkpoint file `path` is, if it is one."""
    for entry in BUNDLED:
        found = local_path(entry.name)
        if found is not None and found.resolve() == path.resolve():
            return entry.name
    return None


def resolve_weights(weights: str | Path) -> Path:
    """A checkpoint path from a file path or a registered name (cache, then bundled directory).

    Raises `CheckpointError` naming the missing file, or giving the exact download command for a
    registered name that is not downloaded yet.
    """
    text = str(weights)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if isinstance(weights, Path) or os.sep in text or "/" in text or text.endswith(_FILE_SUFFIXES):
        raise CheckpointError(f"checkpoint file not found: {path}")
    found = local_path(text)
    if found is not None:
        return found
    entry = find_entry(text)
    if isinstance(entry, OfficialWeights):
        raise CheckpointError(f"weights {text} are not downloaded yet; run: vpp weights download {text}")
    if isinstance(entry, BundledWeights):
        raise CheckpointError(f"the bundled model {text} is not in this installation ({text}{SUFFIX} is in none "
                              f"of {', '.join(str(d) for d in bundled_dirs())}); `vpp weights list` shows the "
                              "models there are")
    raise CheckpointError(
        f"{text!r} is neither a checkpoint file nor a known model name{_suggestion(text)}; "
        "`vpp weights list` shows the names"
    )


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, [e.name for e in (*OFFICIAL, *BUNDLED)], n=1)
    return f" (did you mean {close[0]}?)" if close else ""
