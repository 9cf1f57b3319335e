"""How much class information a checkpoint's features hold: a linear probe on ground-truth masks.

    python benchmarks/feature_probe.py --weights runs/bundled/dense/last.safetensors \
        --train runs/bundled/data/train --val runs/bundled/data/valid [--videos 120] [--name NAME]

For every object of a few frames per video, the backbone's four maps and the pixel decoder's
mask features and memories are averaged under the object's ground-truth mask; a linear
classifier per map is fitted on the training split's objects and scored on the validation
split's. Chance is 1 / classes. A training run whose validation AP stays at 0 while the probe
stays near chance has not learnt class features yet (the decoder cannot classify what the
features do not hold); a probe well above chance with AP at 0 points at the head instead.
Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vppcli.checkpoints import load_model
from vppcli.evaluation.dataset import load_dataset
from vppcli.hardware import cpu_description
from vppcli.model.rovis import VppModel
from vppcli.outputs.rle import decode_rle
from vppcli.preprocess import preprocess_frame
from vppcli.video.images import read_image

RESULTS = Path(__file__).parent / "results"
MAP_NAMES = ("mask_features", "memory_s32", "memory_s16", "memory_s8",
             "backbone_s4", "backbone_s8", "backbone_s16", "backbone_s32")


def pooled_features(model: VppModel, split: Path, videos: int | None, frames: tuple[int, ...],
                    ) -> tuple[list[list[Tensor]], Tensor]:
    """Per object and frame: each map averaged under its mask (compressed RLE, as `vpp synth`
    writes); and the objects' class indices."""
    dataset = load_dataset(split / "instances.json", split / "JPEGImages")
    labels = {category.id: index for index, category in enumerate(dataset.categories)}
    rows, classes = [], []
    for video in dataset.select(limit=videos):
        annotations = [a for a in dataset.data["annotations"] if a["video_id"] == video.id]
        for frame in (f for f in frames if f < video.length):
            pixels, geometry = preprocess_frame(read_image(dataset.frame_files(video)[frame]), model.config.preprocess)
            with torch.no_grad():
                backbone = model.backbone(pixels)
                mask_features, memories = model.head.pixel_decoder(backbone.features)
            maps = [mask_features, *memories, *backbone.features]
            for annotation in annotations:
                segmentation = annotation["segmentations"][frame]
                mask = None if segmentation is None else decode_rle(segmentation)
                if mask is None or mask.sum() < 30:
                    continue
                rows.append([_masked_mean(feature, mask, geometry.image_size, pixels.shape[-2:]) for feature in maps])
                classes.append(labels[annotation["category_id"]])
    return rows, torch.tensor(classes)


def _masked_mean(feature: Tensor, mask: np.ndarray, image_size: tuple[int, int], padded: torch.Size) -> Tensor:
    """[1, C, h, w] map, [H0, W0] mask of the original frame -> [C] mean under the mask."""
    stride = padded[0] // feature.shape[-2]
    height, width = max(image_size[0] // stride, 1), max(image_size[1] // stride, 1)
    resized = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(height, width), mode="area")
    weights = torch.zeros(1, 1, *feature.shape[-2:])
    weights[..., :height, :width] = resized
    return (feature * weights).sum((-1, -2))[0] / weights.sum().clamp(min=1e-6)


def probe_accuracy(train: Tensor, train_classes: Tensor, val: Tensor, val_classes: Tensor, classes: int,
                   seed: int = 0) -> tuple[float, float]:
    """Train and validation accuracy of a standardised linear classifier (Adam, fixed steps)."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    train, val = (train - mean) / std, (val - mean) / std
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(train.shape[1], classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(linear(train), train_classes).backward()
        optimizer.step()
    with torch.no_grad():
        return ((linear(train).argmax(1) == train_classes).float().mean().item(),
                (linear(val).argmax(1) == val_classes).float().mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--train", type=Path, required=True, help="split directory the probe is fitted on")
    parser.add_argument("--val", type=Path, required=True, help="split directory the probe is scored on")
    parser.add_argument("--videos", type=int, default=120, help="training videos used (2 frames each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None, help="result file stem [default: feature_probe_<weights>]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    train_rows, train_classes = pooled_features(model, args.train, args.videos, (0, 12))
    val_rows, val_classes = pooled_features(model, args.val, None, (0, 8, 16))
    classes = len(model.config.class_names)
    maps = {}
    for index, name in enumerate(MAP_NAMES):
        train = torch.stack([row[index] for row in train_rows])
        val = torch.stack([row[index] for row in val_rows])
        train_accuracy, val_accuracy = probe_accuracy(train, train_classes, val, val_classes, classes)
        maps[name] = {"train_accuracy": round(train_accuracy, 3), "val_accuracy": round(val_accuracy, 3)}
        print(f"{name:14s} train {train_accuracy:.3f}  val {val_accuracy:.3f}", flush=True)
    report = {"weights": args.weights, "train": str(args.train), "val": str(args.val), "train_objects": len(train_rows),
              "val_objects": len(val_rows), "chance": round(1 / classes, 3), "cpu": cpu_description(), "maps": maps}
    stem = args.name or f"feature_probe_{Path(args.weights).name.removesuffix('.safetensors')}"
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
