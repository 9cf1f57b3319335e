"""`vpp bench` through the real Typer app (small sizes; counts only, never timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vppcli.cli import app

runner = CliRunner()
SMALL = ["bench", "--preset", "compact", "--size", "64x96", "--frames", "1", "--warmup", "1", "--threads", "1"]


def test_bench_json_reports_dense_and_pruned_runs():
    result = runner.invoke(app, [*SMALL, "--keep-ratio", "0.45", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    dense, pruned = report["runs"]
    assert dense["realised_keep_ratio"] == 1.0
    assert abs(pruned["realised_keep_ratio"] - 0.45) <= 1 / 24  # within one of 24 tokens per block
    assert pruned["gflops"]["vit_blocks"] < dense["gflops"]["vit_blocks"]
    assert set(dense["component_ms"]) >= {"vit_blocks", "adapter", "pixel_decoder", "transformer_decoder", "tracker"}
    assert report["ratios"]["token_ratio"] == pytest.approx(pruned["realised_keep_ratio"])
    # achieved rates next to the machine's matmul rate, and the grid_sample comparison
    assert set(dense["gflops_per_s"]) == {"spatial_prior", "vit_blocks", "adapter", "pruning", "pixel_decoder",
                                          "transformer_decoder", "total"}
    assert all(rate > 0 for rate in dense["gflops_per_s"].values())
    assert set(report["matmul_gflops_per_s"]) == {"float32"} and report["matmul_gflops_per_s"]["float32"] > 0
    assert report["ratios"]["dense_total_of_matmul"] > 0
    assert report["deform_attn"]["queries"] == 2 * 3 + 4 * 6 + 8 * 12
    assert all(report["deform_attn"][key] > 0 for key in ("ms", "reference_ms", "sampling_ms", "sampling_reference_ms"))


def test_bench_table_and_native_mode():
    result = runner.invoke(app, SMALL)
    assert result.exit_code == 0, result.output
    assert "pruned (r=native)" in result.stdout and "ViT blocks: time ratio" in result.stdout
    assert "float32 matmul" in result.stdout and "with grid_sample" in result.stdout


@pytest.mark.parametrize("args", [
    ["--size", "60x96"],  # not a multiple of 32
    ["--size", "big"],
    ["--keep-ratio", "1.5"],
    ["--keep-ratio", "0.05"],  # below the always-dense block 0
])
def test_bad_options_fail_with_one_line_and_exit_2(args):
    result = runner.invoke(app, [*SMALL, *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("vppcli ")


@pytest.mark.parametrize(("args", "message"), [
    (["segment", "clip.mp4", "--threads", "0"], "Invalid value for '--threads'"),
    (["segment"], "Missing argument 'INPUTS'"),
    (["segment", "clip.mp4", "--bogus"], "No such option: --bogus"),
    (["nosuch"], "No such command 'nosuch'"),
    (["bench", "--preset", "huge"], "Invalid value for '--preset'"),
    (["segment", "clip.mp4", "--preset", "huge"], "Invalid value for '--preset'"),
    (["segment", "clip.mp4", "--backend", "gpu"], "Invalid value for '--backend'"),
])
def test_click_usage_errors_are_one_line_with_exit_2(args: list[str], message: str) -> None:
    root = Path(__file__).resolve().parents[1]
    completed = subprocess.run([sys.executable, "-m", "vppcli", *args], capture_output=True, text=True,
                               cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert completed.returncode == 2 and completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_error_lines_are_plain_text_not_markup() -> None:
    result = runner.invoke(app, ["segment", "missing [final] [/x].mp4", "--preset", "compact", "-f", "jsonl"])
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines()[-1] == "error: no such file or directory: missing [final] [/x].mp4"
