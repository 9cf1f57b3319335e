"""vppcli's safetensors format: metadata, strict loading, dtypes, name resolution, the cache."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vppcli.checkpoints import cache_dir, load_model, read_metadata, resolve_weights, save_model
from vppcli.checkpoints.format import FORMAT_VERSION, METADATA_KEY, config_overrides
from vppcli.checkpoints.registry import BUNDLED, OFFICIAL, bundled_dirs
from vppcli.config import preset
from vppcli.errors import CheckpointError, OutputError
from vppcli.model.official_keys import is_reference_unused

from official_checkpoint import official_shapes


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("VPP_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def saved(compact_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "compact.safetensors"
    return save_model(compact_model, path, provenance={"source": "unit test"}, notes="random weights")


def test_metadata_alone_rebuilds_the_model(compact_model, saved: Path):
    metadata = read_metadata(saved)
    assert metadata.config == compact_model.config
    assert metadata.format_version == FORMAT_VERSION
    assert metadata.num_parameters == sum(p.numel() for p in compact_model.parameters())
    assert metadata.input_size == (544, 960)
    assert metadata.provenance["source"] == "unit test" and metadata.provenance["written_by"].startswith("vppcli")
    assert metadata.notes == "random weights"
    blob = json.loads(safe_open(str(saved), "pt").metadata()[METADATA_KEY])
    assert blob["classes"] == list(compact_model.config.class_names)
    assert blob["category_ids"] == list(range(1, 41))
    assert blob["schedule"]["name"] == "0.55" and blob["schedule"]["block_fractions"][:4] == [1.0, 0.7, 0.7, 0.56]
    assert type(metadata).from_dict(metadata.to_dict()) == metadata


def test_load_is_exact_in_eval_mode_and_leaves_the_global_rng_alone(compact_model, saved: Path):
    torch.manual_seed(5)
    model = load_model(saved)
    after_load = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_load, torch.rand(3))
    assert not model.training
    reference = compact_model.state_dict()
    assert all(torch.equal(value, reference[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_half_precision_files_are_upcast(compact_model, tmp_path: Path, stored: torch.dtype):
    path = save_model(copy.deepcopy(compact_model).to(stored), tmp_path / "half.safetensors")
    assert load_file(str(path))["head.query_feat.weight"].dtype == stored
    model = load_model(path, dtype=torch.float32)
    weight = model.head.query_feat.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, compact_model.head.query_feat.weight.detach().to(stored).float())
    assert load_model(path, dtype=torch.bfloat16).head.query_feat.weight.dtype == torch.bfloat16


def _rewrite(saved: Path, target: Path, change) -> Path:
    tensors = load_file(str(saved))
    header = safe_open(str(saved), "pt").metadata()
    change(tensors)
    save_file(tensors, str(target), metadata=header)
    return target


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.pop("head.query_feat.weight"), "1 missing tensor (head.query_feat.weight)"),
    (lambda t: t.update(extra=torch.zeros(2)), "1 unexpected tensor (extra)"),
    (lambda t: t.update({"head.query_feat.weight": torch.zeros(3, 128)}),
     "head.query_feat.weight: file [3, 128] vs model [50, 128]"),
    (lambda t: t.update({"head.query_feat.weight": torch.zeros(50, 128, dtype=torch.int32)}),
     "head.query_feat.weight: file torch.int32 vs model torch.float32"),
])  # fmt: skip
def test_strict_loading_names_every_difference_in_one_line(saved: Path, tmp_path: Path, change, expected: str):
    broken = _rewrite(saved, tmp_path / "broken.safetensors", change)
    with pytest.raises(CheckpointError) as error:
        load_model(broken)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_non_strict_loading_tolerates_missing_and_unexpected(saved: Path, tmp_path: Path):
    def change(tensors):
        tensors.pop("head.query_feat.weight")
        tensors["extra"] = torch.zeros(1)

    model = load_model(_rewrite(saved, tmp_path / "loose.safetensors", change), strict=False)
    assert model.head.query_feat.weight.shape == (50, 128)


def test_wrong_shapes_fail_even_non_strictly(saved: Path, tmp_path: Path):
    broken = _rewrite(saved, tmp_path / "b.safetensors", lambda t: t.update({"head.query_feat.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(broken, strict=False)


def test_unreadable_files_are_refused_with_their_path(tmp_path: Path, saved: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.safetensors is not a safetensors checkpoint"):
        load_model(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(CheckpointError, match="no vppcli metadata"):
        read_metadata(plain)
    newer = tmp_path / "newer.safetensors"
    blob = json.loads(safe_open(str(saved), "pt").metadata()[METADATA_KEY])
    save_file({"x": torch.zeros(1)}, str(newer), metadata={METADATA_KEY: json.dumps({**blob, "format_version": 99})})
    with pytest.raises(CheckpointError, match="format 99, newer"):
        read_metadata(newer)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_model(truncated)


def _with_metadata(saved: Path, target: Path, blob: Any) -> Path:
    """A copy of `saved` whose vppcli metadata is `blob` (any JSON value)."""
    save_file(load_file(str(saved)), str(target), metadata={"format": "pt", METADATA_KEY: json.dumps(blob)})
    return target


def _set(path: str, value: Any):
    """A change that sets the dotted metadata field `path` to `value`."""

    def change(blob: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            blob = blob[key]
        blob[last] = value

    return change


@pytest.mark.parametrize(("change", "expected"), [
    (_set("provenance", ["a", "list"]), "provenance must be an object of strings, not a list"),
    (_set("provenance", {"source": 3}), "provenance.source must be a string, not an integer"),
    (_set("num_parameters", "9541489"), "num_parameters must be an integer, not a string"),
    (_set("num_parameters", 1.5), "num_parameters must be an integer, not a number"),
    (_set("input_size", 960), "input_size must be [height, width] in positive integers, not 960"),
    (_set("input_size", [544, "960"]), "input_size must be [height, width]"),
    (_set("notes", ["a"]), "notes must be a string, not a list"),
    (_set("license", None), "license must be a string, not null"),
    (_set("dataset", {}), "dataset must be a string, not an object"),
    (_set("missing_keys", "head.x"), "missing_keys must be a list of strings, not a string"),
    (_set("missing_keys", ["head.x", 7]), "missing_keys[1] must be a string, not an integer"),
    (_set("format_version", "1"), "format_version must be an integer, not a string"),
    (_set("format_version", True), "format_version must be an integer, not a boolean"),
    (lambda blob: blob.pop("num_parameters"), "num_parameters is missing"),
    (_set("config", [1, 2]), "config must be an object, not a list"),
    (_set("config.head", "big"), "config.head must be an object, not a string"),
    (_set("config.head.num_classes", "40"), "config.head.num_classes must be an integer, not a string"),
    (_set("config.vit.depth", 0), "config.vit.depth must be at least 1, not 0"),
    (_set("config.pruning.enabled", 1), "config.pruning.enabled must be true or false, not an integer"),
    (_set("config.pruning.tau", float("nan")), "config.pruning.tau must be a finite number, not nan"),
    (_set("config.pruning.xref_source", "block9"), "config.pruning.xref_source must be one of"),
    (_set("config.preprocess.mean", [1, 2]), "config.preprocess.mean must have 3 items, not 2"),
    (_set("config.adapter.interaction_indexes", [[0, "2"]]), "config.adapter.interaction_indexes[0][1] must be"),
    (_set("config.class_names", "cat"), "config.class_names must be a list, not a string"),
    (_set("config.vit.colour", "red"), "config.vit.colour is not a ViTConfig field"),
    (_set("config.category_ids", [1, 2]), "config is inconsistent: need 40 distinct category ids"),
])  # fmt: skip
def test_malformed_metadata_is_one_line_naming_the_field_and_the_file(saved: Path, tmp_path: Path, change,
                                                                      expected: str):
    blob = json.loads(safe_open(str(saved), "pt").metadata()[METADATA_KEY])
    change(blob)
    crafted = _with_metadata(saved, tmp_path / "crafted.safetensors", blob)
    for read in (read_metadata, load_model):
        with pytest.raises(CheckpointError) as error:
            read(crafted)
        message = str(error.value)
        assert message.startswith(f"{crafted} has invalid vppcli metadata: ") and expected in message, message
        assert "\n" not in message


def test_metadata_that_is_not_an_object_is_refused(saved: Path, tmp_path: Path):
    with pytest.raises(CheckpointError, match="metadata must be a JSON object, not a list"):
        read_metadata(_with_metadata(saved, tmp_path / "list.safetensors", [1, 2]))


def test_a_config_that_cannot_build_is_a_checkpoint_error(saved: Path, tmp_path: Path):
    blob = json.loads(safe_open(str(saved), "pt").metadata()[METADATA_KEY])
    blob["config"]["head"]["feat_channels"] = 100  # not divisible into the head's 32 GroupNorm groups
    crafted = _with_metadata(saved, tmp_path / "odd.safetensors", blob)
    with pytest.raises(CheckpointError, match="does not describe a model vppcli can build"):
        load_model(crafted, strict=False)



@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_saved_files_get_the_mode_of_any_new_file(compact_model, tmp_path: Path, umask_022, mask: int, mode: int):
    os.umask(mask)
    path = save_model(compact_model, tmp_path / "shared.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.umask(mask) == mask  # reading the umask did not change it


def test_missing_files_and_names_say_what_to_do(tmp_path: Path):
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nothere.safetensors"):
        load_model(tmp_path / "nothere.safetensors")
    with pytest.raises(CheckpointError, match="run: vpp weights download vpp-tiny-pkr53$"):
        load_model("vpp-tiny-pkr53")
    with pytest.raises(CheckpointError, match="did you mean vpp-tiny-pkr41"):
        resolve_weights("vpp-tiny-pkr40")
    with pytest.raises(CheckpointError, match="is a directory"):
        resolve_weights(tmp_path)


def test_names_resolve_to_the_cache_first(saved: Path, _private_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "vpp-compact.safetensors").write_bytes(saved.read_bytes())
    monkeypatch.setattr("vppcli.checkpoints.registry.bundled_dirs", lambda: (bundled,))
    assert resolve_weights("vpp-compact") == bundled / "vpp-compact.safetensors"
    _private_cache.mkdir()
    (_private_cache / "vpp-compact.safetensors").write_bytes(saved.read_bytes())
    assert resolve_weights("vpp-compact") == _private_cache / "vpp-compact.safetensors"
    assert load_model("vpp-compact").config.name == "compact"


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("VPP_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("VPP_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "vppcli"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vppcli"


def test_bundled_directories_are_the_package_and_the_checkout():
    package, checkout = bundled_dirs()
    assert package.parent.name == "vppcli" and checkout == package.parent.parent / "weights"
    assert [b.name for b in BUNDLED] == ["vpp-compact"]


def test_a_bundled_model_without_its_file_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr("vppcli.checkpoints.registry.bundled_dirs", lambda: (tmp_path / "empty",))
    with pytest.raises(CheckpointError) as error:
        resolve_weights("vpp-compact")
    assert "bundled model vpp-compact is not in this installation" in str(error.value)
    assert str(tmp_path / "empty") in str(error.value)


def test_writes_are_atomic(compact_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "out" / "model.safetensors"
    save_model(compact_model, target)
    before = target.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vppcli.checkpoints.format.save_file", disk_full)
    with pytest.raises(OutputError, match="No space left on device"):
        save_model(compact_model, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]


def test_registry_parameter_counts_match_the_official_shapes():
    """The sizes `vpp weights list` shows, from the key lists (no model build)."""
    counts = {}
    for variant in ("tiny", "small"):
        shapes = {k: s for k, s in official_shapes(variant).items()
                  if not is_reference_unused(k) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        pruning = sum(torch.Size(s).numel() for k, s in shapes.items()
                      if ".selective_modules." in k or ".matching_module." in k)
        total = sum(torch.Size(s).numel() for s in shapes.values())
        counts[variant, "dense"], counts[variant, "pruned"] = total - pruning, total
    for entry in OFFICIAL:
        assert entry.params == counts[entry.variant, "dense" if entry.schedule == "dense" else "pruned"], entry.name


def test_overrides_are_reported_against_the_preset():
    config = preset("tiny")
    changed = config.replace(pruning=dataclasses.replace(config.pruning, map_keep_ratio=0.6))
    assert config_overrides(config) == {}
    assert config_overrides(changed) == {"pruning.map_keep_ratio": 0.6}


def test_mismatch_counts_are_plural_english():
    from vppcli.checkpoints.format import StateProblems

    text = StateProblems(shapes=("a: file [1] vs model [2]", "b: file [1] vs model [2]"),
                         missing=("c", "d")).describe()
    assert "2 shape mismatches" in text and "2 missing tensors" in text and "mismatchs" not in text
