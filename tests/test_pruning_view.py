"""The pruning view (`-f pruning`, `-f pruning-json`) and the per-block keep masks of the API."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vppcli.cli.segment as segment_cli
from examples.make_clip import scene_frames
from tests.helpers import dense_twin
from tests.video_files import write_frames, write_video
from vppcli.cli import app
from vppcli.errors import OutputError
from vppcli.inference import VideoPredictor
from vppcli.model.rovis import VppModel
from vppcli.outputs import PRUNING_FILE_NAMES
from vppcli.outputs.pruning import (
    CAPTION_HEIGHT,
    GAP,
    PRUNED_SHIFT,
    panel_layout,
    patch_lookup,
    render_pruning_view,
)
from vppcli.outputs.pruning_json import decode_bits, encode_bits
from vppcli.preprocess import frame_geometry
from vppcli.results import FrameInstances, PruningMasks, PruningStage
from vppcli.segmenter import Segmenter

HEIGHT, WIDTH, FRAMES, FPS, SIZE = 48, 80, 5, 12.0, 96
GREY = 200  # a uniform frame: kept patches stay GREY, pruned ones become GREY >> PRUNED_SHIFT
STAGES = (PruningStage("map", (1, 2)), PruningStage("sm1", (3, 5)), PruningStage("sm2", (6, 8)),
          PruningStage("sm3", (9, 11)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", list(scene_frames(FRAMES, HEIGHT, WIDTH)), FPS)


def recorded_frames(model: VppModel, count: int = 3) -> list[FrameInstances]:
    predictor = VideoPredictor(model, long_side=SIZE, record_masks=True)
    state = predictor.new_video()
    return [predictor.step(state, frame) for frame in scene_frames(count, HEIGHT, WIDTH)]


def recorded(instances: FrameInstances) -> PruningMasks | None:
    assert instances.stats is not None  # the predictor always sets them
    return instances.stats.pruning


def darkened(view: np.ndarray, stage_index: int, pruning: PruningMasks) -> np.ndarray:
    """[H, W] bool: where stage `stage_index`'s panel of a GREY frame shows a pruned patch."""
    layout = panel_layout(HEIGHT, WIDTH, len(pruning.stages))
    top, left = layout.panel_origin(stage_index)
    height, width = layout.panel_size
    panel = view[top : top + height, left : left + width]
    assert set(np.unique(panel)) <= {GREY, GREY >> PRUNED_SHIFT}
    return panel[..., 0] == GREY >> PRUNED_SHIFT


def expected_dark(mask: torch.Tensor, pruning: PruningMasks) -> np.ndarray:
    """The stage mask painted over the panel independently of the renderer's lookup: patch rows
    and columns through the padded input's pixels, then cropped to the resized frame."""
    height, width = panel_layout(HEIGHT, WIDTH, len(pruning.stages)).panel_size
    pixels = np.repeat(np.repeat(mask.numpy(), 16, 0), 16, 1)[: pruning.input_size[0], : pruning.input_size[1]]
    ys = ((np.arange(height) + 0.5) * pruning.input_size[0] / height).astype(int)
    xs = ((np.arange(width) + 0.5) * pruning.input_size[1] / width).astype(int)
    return ~pixels[ys[:, None], xs[None, :]]


def grey() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)


def test_the_view_has_one_panel_per_stage_in_a_2x2_grid_of_even_size() -> None:
    layout = panel_layout(HEIGHT, WIDTH, 4)
    assert (layout.rows, layout.cols, layout.panel_size) == (2, 2, (288, 480))
    assert layout.canvas_size == (2 * (CAPTION_HEIGHT + 288) + GAP, 2 * 480 + GAP)
    assert panel_layout(1080, 1920, 4).panel_size == (270, 480)
    odd = panel_layout(1081, 721, 3)  # three stages: 2x2 with one cell empty; sizes stay even for H.264 4:2:0
    assert (odd.rows, odd.cols) == (2, 2) and all(side % 2 == 0 for side in odd.canvas_size)
    # every panel pixel maps to a patch of the resized frame, never to the padding
    rows, cols = patch_lookup((288, 480), (4, 6), (58, 96))
    assert rows.max() == 3 and cols.max() == 5 and rows[-1] == 57 // 16


def test_a_dropped_patch_is_dark_from_its_stage_on() -> None:
    grid = (4, 6)
    masks = [torch.ones(grid, dtype=torch.bool) for _ in STAGES]
    masks[1][2, 3] = False  # dropped by the first selective module
    for later in masks[2:]:
        later[2, 3] = False
    masks[3][0, 0] = False  # dropped by the last one only
    blocks = (None, masks[0], masks[0], *[masks[i] for i in (1, 2, 3) for _ in range(3)])
    pruning = PruningMasks(grid, (HEIGHT, WIDTH), blocks, STAGES, first_frame=False)
    view = render_pruning_view(grey(), FrameInstances.empty(0, HEIGHT, WIDTH), pruning)
    assert view.shape == (*panel_layout(HEIGHT, WIDTH, 4).canvas_size, 3)
    centre = (round((2.5 * 16) * 288 / HEIGHT), round((3.5 * 16) * 480 / WIDTH))  # patch (2, 3) in a panel
    corner = (round(8 * 288 / HEIGHT), round(8 * 480 / WIDTH))  # patch (0, 0)
    assert [bool(darkened(view, i, pruning)[centre]) for i in range(4)] == [False, True, True, True]
    assert [bool(darkened(view, i, pruning)[corner]) for i in range(4)] == [False, False, False, True]
    for index, mask in enumerate(masks):
        np.testing.assert_array_equal(darkened(view, index, pruning), expected_dark(mask, pruning))


def test_recorded_masks_are_per_block_nested_and_count_the_processed_tokens(compact_model: VppModel) -> None:
    for instances in recorded_frames(compact_model):
        pruning = recorded(instances)
        assert instances.stats is not None and pruning is not None
        stats = instances.stats
        assert len(pruning.blocks) == 12 and pruning.blocks[0] is None
        assert [stage.blocks for stage in pruning.stages] == [(1, 2), (3, 5), (6, 8), (9, 11)]
        previous = torch.ones(pruning.grid, dtype=torch.bool)
        for block in range(12):
            mask = pruning.block_mask(block)
            assert mask.shape == pruning.grid and int(mask.sum()) == stats.tokens_per_block[block]
            assert not bool((mask & ~previous).any())  # never re-activated
            previous = mask
        for stage in pruning.stages:
            first, last = stage.blocks
            assert all(torch.equal(pruning.block_mask(b), pruning.stage_mask(stage)) for b in range(first, last + 1))


def test_the_first_frame_has_dense_early_stages_and_the_next_one_is_pruned(compact_model: VppModel) -> None:
    first, second = (recorded(f) for f in recorded_frames(compact_model, 2))
    assert first is not None and second is not None
    assert first.first_frame and first.blocks[:3] == (None, None, None)
    assert not second.first_frame and second.blocks[1] is not None
    assert 0 < int(second.blocks[1].sum()) < second.grid[0] * second.grid[1]
    views = [render_pruning_view(grey(), FrameInstances.empty(0, HEIGHT, WIDTH), p) for p in (first, second)]
    assert not darkened(views[0], 0, first).any()
    for pruning, view in zip((first, second), views):
        for index, stage in enumerate(pruning.stages):
            expected = expected_dark(pruning.stage_mask(stage), pruning)
            np.testing.assert_array_equal(darkened(view, index, pruning), expected)


def test_image_based_pruning_has_no_first_frame_mark(compact_model: VppModel) -> None:
    predictor = VideoPredictor(compact_model, long_side=SIZE, record_masks=True, temporal_prior=False)
    state = predictor.new_video()
    for frame in scene_frames(2, HEIGHT, WIDTH):
        pruning = recorded(predictor.step(state, frame))
        assert pruning is not None and not pruning.first_frame and pruning.blocks[1] is None


def test_masks_are_recorded_only_when_asked(compact_model: VppModel, tmp_path: Path) -> None:
    predictor = VideoPredictor(compact_model, long_side=SIZE)
    state = predictor.new_video()
    frame = next(scene_frames(1, HEIGHT, WIDTH))
    geometry = frame_geometry(HEIGHT, WIDTH, predictor.config.preprocess)
    assert not predictor.plan_for(geometry, state).record_masks  # the backbone keeps no mask list
    assert recorded(predictor.step(state, frame)) is None
    assert recorded(predictor.step(predictor.new_video(record_masks=True), frame)) is not None
    (source,) = write_frames(tmp_path / "frames", [frame])  # a one-frame video
    segmenter = Segmenter(compact_model, long_side=SIZE, record_pruning=True)
    assert recorded(next(iter(segmenter.stream(source))).instances) is not None
    assert recorded(next(iter(segmenter.stream(source, record_pruning=False))).instances) is None


def test_bits_round_trip() -> None:
    rng = np.random.default_rng(0)
    for grid in [(1, 1), (3, 5), (34, 60)]:
        mask = rng.random(grid) > 0.5
        np.testing.assert_array_equal(decode_bits(encode_bits(mask), grid), mask)


def test_segment_writes_the_view_and_bitmaps_of_every_frame(clip: Path, tmp_path: Path,
                                                            detecting_model: VppModel) -> None:
    segmenter = Segmenter(detecting_model, long_side=SIZE)  # the pruning formats ask for the masks themselves
    result = segmenter.segment(clip, formats=("overlay", "pruning", "pruning-json"), output_dir=tmp_path)
    assert sorted(p.name for p in result.outputs) == ["overlay.mp4", "pruning.jsonl", "pruning.mp4"]
    overlay, view = (decord.VideoReader(str(tmp_path / name)) for name in ("overlay.mp4", "pruning.mp4"))
    assert len(view) == len(overlay) == FRAMES and view.get_avg_fps() == pytest.approx(overlay.get_avg_fps())
    assert view[0].shape == (*panel_layout(HEIGHT, WIDTH, 4).canvas_size, 3)

    lines = [json.loads(line) for line in (tmp_path / "pruning.jsonl").read_text().splitlines()]
    frames = Segmenter(detecting_model, long_side=SIZE).stream(clip, record_pruning=True)
    masks = [recorded(frame.instances) for frame in frames]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["first_frame"] for line in lines] == [True] + [False] * (FRAMES - 1)
    for line, pruning in zip(lines, masks):
        assert pruning is not None
        grid = tuple(line["grid"])
        assert grid == pruning.grid and line["input_size"] == list(pruning.input_size)
        assert [stage["name"] for stage in line["stages"]] == ["map", "sm1", "sm2", "sm3"]
        for stage, expected in zip(line["stages"], pruning.stages):
            mask = decode_bits(stage["bits"], grid)
            np.testing.assert_array_equal(mask, pruning.stage_mask(expected).numpy())
            first, last = stage["blocks"]
            processed = {line["tokens_per_block"][b] for b in range(first, last + 1)}
            assert processed == {stage["tokens"]} == {int(mask.sum())}
            assert stage["keep"] == pytest.approx(stage["tokens"] / (grid[0] * grid[1]), abs=1e-4)


def test_a_dense_model_shows_every_patch_kept(clip: Path, tmp_path: Path, compact_model: VppModel) -> None:
    Segmenter(dense_twin(compact_model), long_side=SIZE).segment(clip, formats=("pruning-json",), output_dir=tmp_path)
    for line in map(json.loads, (tmp_path / "pruning.jsonl").read_text().splitlines()):
        assert not line["first_frame"] and {stage["keep"] for stage in line["stages"]} == {1.0}


def test_a_failure_leaves_no_file_of_any_format(clip: Path, tmp_path: Path, detecting_model: VppModel) -> None:
    (tmp_path / "pruning.jsonl").mkdir()
    with pytest.raises(OutputError, match="pruning.jsonl: a directory is in the way"):
        Segmenter(detecting_model, long_side=SIZE).segment(
            clip, formats=("overlay", "pruning", "pruning-json", "ytvis"), output_dir=tmp_path, stream=io.StringIO())
    assert os.listdir(tmp_path) == ["pruning.jsonl"]


def test_cli_writes_the_pruning_formats(clip: Path, tmp_path: Path, compact_model: VppModel,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_cli, "_load_model", lambda weights, preset, device: compact_model)
    result = CliRunner().invoke(app, ["segment", str(clip), "-f", "pruning,pruning-json", "-o", str(tmp_path),
                                      "--size", str(SIZE), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    written = sorted(name for name in os.listdir(tmp_path / "clip") if not name.startswith("."))  # not the run record
    assert written == sorted(PRUNING_FILE_NAMES.values())
    unknown = CliRunner().invoke(app, ["segment", str(clip), "-f", "prune", "--preset", "compact"])
    assert unknown.exit_code == 2 and "pruning, pruning-json" in unknown.stderr
