"""What every `vpp` command shares: fast start-up (no torch for --help), help placeholders and
defaults, Ctrl-C and internal errors as one line, the shared option checks, plain progress."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vppcli.cli
from vppcli.cli import progress as progress_module
from vppcli.cli.progress import RunProgress
from vppcli.config import PRESETS, preset
from vppcli.errors import UsageError
from vppcli.limits import check_keep_ratio, parse_size
from vppcli.model.pruning import keep_budgets
from vppcli.results import FrameInstances
from vppcli.track_ids import DenseTrackIds

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [[], ["segment"], ["eval"], ["eval-split"], ["bench"], ["convert"], ["info"], ["weights"],
            ["weights", "list"], ["weights", "download"], ["weights", "export"], ["train"], ["synth"]]


def vpp(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vppcli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env})


def test_the_cli_and_its_help_do_not_import_torch():
    code = ("import sys, vppcli.cli, vppcli.cli.dispatch, vppcli.checkpoints.metadata, vppcli.limits; vppcli.cli.app; "
            "print(sorted({'torch', 'cv2', 'numpy'} & set(sys.modules)))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert completed.stdout.strip() == "[]", completed.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vpp")
def test_help_shows_names_choices_and_every_default(command: list[str]) -> None:
    completed = vpp(*command, "--help")
    assert completed.returncode == 0 and completed.stderr == ""
    text = completed.stdout
    assert not re.search(r"<(list\[\w+\]|str|bool|int|float|path)[^>]*>", text), text  # no Python types
    assert "{inputs}" not in text and not re.search(r" \.(\s|$)", text)  # no `[default: ...]` eaten by rich
    if command == ["segment"]:
        assert "[default: (overlay,ytvis)]" in text and "[default: (the model's, 960)]" in text
        assert "[auto|decord|opencv]" in text and "[tiny|small|compact]" in text and "--preset" in text
    if command == ["eval"]:
        assert "[default: (runs/eval)]" in text and "[ytvis19|ytvis21]" in text and "--quiet" in text


@pytest.mark.parametrize("command", [[], ["weights"]])
def test_no_arguments_prints_the_help_only(command: list[str]) -> None:
    completed = vpp(*command)
    assert completed.returncode == 0 and "Usage: vpp" in completed.stdout
    assert "error" not in completed.stderr.lower() and "NoArgsIsHelpError" not in completed.stdout


def test_verbose_and_quiet_work_after_the_command_name():
    completed = vpp("info", "no-such-model", "-v")
    assert completed.returncode == 4 and completed.stderr.startswith("error: ")
    assert vpp("eval", "--help").stdout.count("--verbose") == 1


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["vpp", *argv])
    with pytest.raises(SystemExit) as exit_info:
        vppcli.cli.main()
    return int(exit_info.value.code), capsys.readouterr().err


def test_ctrl_c_anywhere_is_one_line_and_130(monkeypatch, capsys):
    def interrupt(*_args: object) -> None:
        raise KeyboardInterrupt

    # during start-up, before any command runs
    monkeypatch.setattr(vppcli.cli, "run", interrupt)
    code, err = _main(monkeypatch, capsys, "segment", "clip.mp4")
    assert code == 130 and err.strip() == "error: interrupted"
    monkeypatch.undo()
    # inside a command that does not handle it itself
    import vppcli.checkpoints.registry as registry

    monkeypatch.setattr(registry, "resolve_weights", interrupt)
    code, err = _main(monkeypatch, capsys, "info", "model.safetensors")
    assert code == 130 and err.strip().splitlines() == ["error: interrupted"]


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, capsys):
    import vppcli.checkpoints.registry as registry

    def bug(*_args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(registry, "resolve_weights", bug)
    code, err = _main(monkeypatch, capsys, "info", "model.safetensors")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: internal error: ZeroDivisionError: a bug") and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_keep_ratio_check_agrees_with_the_budgets(name: str) -> None:
    config = preset(name)
    fractions = config.pruning.trained_fractions(config.vit.depth)
    for ratio in (0.01, 1 / 12, 0.0834, 0.2, 0.45, 1.0):
        try:
            keep_budgets(fractions, ratio, 600)
            reachable = True
        except ValueError:
            reachable = False
        if reachable:
            check_keep_ratio(ratio, config)
        else:
            with pytest.raises(UsageError):
                check_keep_ratio(ratio, config)


def test_sizes_are_a_long_side_or_height_x_width():
    assert parse_size("960").long_side == 960 and parse_size("960").shape is None
    assert parse_size("544x960").long_side == 960 and parse_size("544x960").shape == (544, 960)
    for text in ("100000", "16", "big", "960x", "0x960"):
        with pytest.raises(UsageError):
            parse_size(text)


def test_track_ids_are_dense_in_order_of_first_appearance():
    def frame(ids: list[int]) -> FrameInstances:
        count = len(ids)
        return FrameInstances(0, torch.tensor(ids), torch.zeros(count, dtype=torch.int64), torch.ones(count),
                              torch.zeros(count, 2, 2, dtype=torch.bool), torch.zeros(count, 4))

    numbering = DenseTrackIds()
    assert numbering.apply(frame([22, 1])).track_ids.tolist() == [1, 2]
    assert numbering.apply(frame([54, 1, 22])).track_ids.tolist() == [3, 2, 1]
    assert numbering.apply(frame([])).track_ids.tolist() == []


def test_plain_progress_lines_without_a_terminal(monkeypatch, capsys):
    times = iter(float(t) for t in range(100))
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(times))
    with RunProgress("clip", 4, "frames", quiet=False, interval=2.0) as bar:
        assert not bar.terminal  # pytest's stderr is not a terminal
        for done in range(1, 5):
            bar.advance(done, keep=0.45)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(re.fullmatch(r"clip: \d/4 frames, [\d.]+ fps, keep 0\.450(, ETA \d+:\d\d:\d\d)?", line)
                         for line in lines), lines
    assert lines[-1].startswith("clip: 4/4 frames")
    with RunProgress("clip", 4, "frames", quiet=True, interval=0.0) as bar:
        bar.advance(1)
    assert capsys.readouterr().err == ""


def test_log_lines_after_an_in_process_run_reach_the_current_stderr(capsys):
    from typer.testing import CliRunner

    from vppcli.cli.app import app

    assert CliRunner().invoke(app, ["weights", "list"]).exit_code == 0  # its stderr is closed now
    logging.getLogger("vppcli.test").warning("after the run")  # through the handler the run installed
    err = capsys.readouterr().err
    assert "after the run" in err and "Logging error" not in err
