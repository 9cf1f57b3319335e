"""Model configuration: frozen dataclasses, presets, and (de)serialisation to JSON.

One `VppConfig` describes a whole model (backbone, pruning, head, tracker, pre-processing,
classes). It is stored as JSON in a checkpoint's metadata, so a model can be rebuilt from the
checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from vppcli.errors import UsageError

YTVIS_2021_CLASSES: tuple[str, ...] = (
    "airplane", "bear", "bird", "boat", "car", "cat", "cow", "deer", "dog", "duck",
    "earless_seal", "elephant", "fish", "flying_disc", "fox", "frog", "giant_panda", "giraffe",
    "horse", "leopard", "lizard", "monkey", "motorbike", "mouse", "parrot", "person", "rabbit",
    "shark", "skateboard", "snake", "snowboard", "squirrel", "surfboard", "tennis_racket",
    "tiger", "train", "truck", "turtle", "whale", "zebra",
)  # fmt: skip


@dataclass(frozen=True)
class ViTConfig:
    """Plain ViT trunk of the ViT-Adapter."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 16
    pretrain_grid: int = 14  # pos_embed is a 14x14 grid (224 px pre-training), resized bicubically
    # The VPP checkpoints use PyTorch-style blocks with eps 1e-5; dense ViT-Adapter ones use 1e-6.
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.1


@dataclass(frozen=True)
class AdapterConfig:
    """Spatial prior CNN and the injector/extractor interactions around the ViT."""

    conv_inplane: int = 64
    deform_num_heads: int = 6
    deform_num_points: int = 4
    cffn_ratio: float = 0.25
    interaction_indexes: tuple[tuple[int, int], ...] = ((0, 2), (3, 5), (6, 8), (9, 11))
    norm_eps: float = 1e-6
    extra_extractors: int = 2  # extra extractors after the last interaction


@dataclass(frozen=True)
class PruningConfig:
    """Where and how much the VPP selective modules prune (the trained schedule).

    `map_keep_ratio` and `selective_keep_ratios` are the fractions the checkpoint was trained
    for; they define the *shape* of the per-block budget that `keep_ratio` scales.
    """

    enabled: bool = True
    map_block: int = 1  # Mapping-Selective Module decides tokens from this block on
    map_keep_ratio: float = 0.7
    map_hidden_dim: int = 96
    map_smoothing: int = 9  # box filter size applied to the Map-SM scores (pooling_size 4)
    selective_blocks: tuple[int, ...] = (3, 6, 9)
    selective_keep_ratios: tuple[float, ...] = (0.56, 0.448, 0.358)
    selective_hidden_dim: int = 48
    cache_block: int = 5  # output of this block is mapped onto the next frame
    tau: float = 10.0  # Gumbel temperature (reference-noise mode only)
    # The reference caches the Map-SM keys by aliasing, which at inference yields the block-2
    # output; the released numbers were produced that way (reference-architecture.md, 8.1).
    xref_source: Literal["block2_aliased", "block0"] = "block2_aliased"

    def trained_fractions(self, depth: int) -> tuple[float, ...]:
        """Nominal keep fraction of every ViT block, e.g. (1, .7, .7, .56, ...) for depth 12."""
        fractions = []
        current = 1.0
        for block in range(depth):
            if not self.enabled:
                fractions.append(1.0)
                continue
            if block == self.map_block:
                current = self.map_keep_ratio
            if block in self.selective_blocks:
                current = self.selective_keep_ratios[self.selective_blocks.index(block)]
            fractions.append(current)
        return tuple(fractions)


@dataclass(frozen=True)
class HeadConfig:
    """Mask2Former head (deformable pixel decoder + masked-attention decoder)."""

    num_classes: int = 40
    num_queries: int = 100
    feat_channels: int = 256
    num_decoder_layers: int = 9
    num_decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    num_encoder_layers: int = 6
    num_encoder_heads: int = 8
    num_encoder_points: int = 4
    encoder_ffn_dim: int = 1024
    num_feature_levels: int = 3
    gn_groups: int = 32


@dataclass(frozen=True)
class TrackerConfig:
    """RoVIS/TrackFormer tracker thresholds (values of the reference)."""

    track_score_threshold: float = 0.25  # keep a detection from a track query above this
    new_score_threshold: float = 0.3  # keep a detection from a static query above this
    query_update_threshold: float = 0.3  # below this a track keeps its old query embedding
    track_nms_iou: float = 0.7  # mask-NMS among continued tracks
    new_nms_iou: float = 0.4  # mask-NMS of new detections against everything kept
    num_frames_retain: int = 10  # a track unseen for this many frames is dropped


@dataclass(frozen=True)
class PreprocessConfig:
    long_side: int = 960
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pad_divisor: int = 32


@dataclass(frozen=True)
class VppConfig:
    name: str = "tiny"
    vit: ViTConfig = field(default_factory=ViTConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    class_names: tuple[str, ...] = YTVIS_2021_CLASSES
    # Dataset category id of each class (label i -> category_ids[i]); empty means 1..num_classes.
    category_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.class_names) != self.head.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for a head with {self.head.num_classes} classes"
            )
        if not self.category_ids:
            object.__setattr__(self, "category_ids", tuple(range(1, self.head.num_classes + 1)))
        if len(self.category_ids) != self.head.num_classes or len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"need {self.head.num_classes} distinct category ids, got {self.category_ids}")
        if self.vit.embed_dim % self.vit.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        p = self.pruning
        if len(p.selective_blocks) != len(p.selective_keep_ratios):
            raise ValueError("one trained keep ratio per selective block is needed")
        if p.enabled and not (0 < p.map_block <= p.cache_block < self.vit.depth):
            raise ValueError("pruning needs 0 < map_block <= cache_block < depth")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VppConfig:
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> VppConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> VppConfig:
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) frozen dataclass from `asdict` output; lists become tuples."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls, "__dataclass_fields__")[name]
        nested = _nested_type(cls, default)
        if nested is not None:
            kwargs[name] = _from_dict(nested, value)
        else:
            kwargs[name] = _tupleize(value)
    return cls(**kwargs)


def _nested_type(cls: type, f: dataclasses.Field) -> type | None:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        produced = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(produced):
            return type(produced)
    return None


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


def tiny_config() -> VppConfig:
    """VPP ViT-Adapter-Tiny, 0.55-PKR schedule (the authors' `vpp_vitTiny_..._0.55PKR`)."""
    return VppConfig(name="tiny")


def small_config() -> VppConfig:
    """VPP ViT-Adapter-Small. Selective-module widths follow the embedding width (384/96, 384/192);
    the authors' config file says 192, which cannot run (reference-architecture.md, 8.2)."""
    return VppConfig(
        name="small",
        vit=ViTConfig(embed_dim=384, num_heads=6, drop_path_rate=0.2),
        pruning=PruningConfig(map_hidden_dim=192, selective_hidden_dim=96),
    )


def compact_config() -> VppConfig:
    """A small model for the bundled default: the Tiny backbone and pruning (so the VPP behaviour
    is the real one) with a lighter head: 128 channels, 2 pixel-decoder layers, 3 decoder
    layers, 50 queries, 512-wide FFNs. About 2.5x cheaper head than Tiny's."""
    return VppConfig(
        name="compact",
        head=HeadConfig(
            num_queries=50,
            feat_channels=128,
            num_decoder_layers=3,
            num_decoder_heads=8,
            decoder_ffn_dim=512,
            num_encoder_layers=2,
            num_encoder_heads=8,
            encoder_ffn_dim=512,
        ),
    )


PRESETS = {"tiny": tiny_config, "small": small_config, "compact": compact_config}


def preset(name: str) -> VppConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
