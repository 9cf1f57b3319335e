"""`vpp weights export`: a smaller copy of a checkpoint that loads to the same model."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from vppcli.checkpoints import load_model, read_metadata, save_model
from vppcli.cli import app
from vppcli.config import compact_config
from vppcli.model.rovis import build_model


def test_fp16_export_keeps_metadata_and_loads_close(tmp_path):
    model = build_model(compact_config(), seed=1)
    source = save_model(model, tmp_path / "last.safetensors", provenance={"step": "7"})
    target = tmp_path / "small.safetensors"
    result = CliRunner().invoke(app, ["weights", "export", str(source), str(target)])
    assert result.exit_code == 0, result.output
    assert target.stat().st_size < 0.6 * source.stat().st_size
    metadata = read_metadata(target)
    assert metadata.config == model.config and metadata.provenance["step"] == "7"
    assert metadata.provenance["stored_dtype"] == "fp16"
    loaded = load_model(target)
    for name, tensor in model.state_dict().items():
        other = loaded.state_dict()[name]
        assert other.dtype == tensor.dtype
        assert torch.allclose(other, tensor, rtol=1e-3, atol=1e-4) if tensor.is_floating_point() else torch.equal(other, tensor)


def test_export_refuses_to_overwrite_and_bad_dtypes(tmp_path):
    source = save_model(build_model(compact_config(), seed=1), tmp_path / "a.safetensors")
    runner = CliRunner()
    assert runner.invoke(app, ["weights", "export", str(source), str(source)]).exit_code == 5
    result = runner.invoke(app, ["weights", "export", str(source), str(tmp_path / "b.safetensors"), "--dtype", "int8"])
    assert result.exit_code == 2 and "Traceback" not in result.output
