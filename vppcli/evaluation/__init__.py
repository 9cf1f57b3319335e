"""YouTube-VIS evaluation: the official video AP, dataset discovery, and the `vpp eval` run
(resumable, shardable) with its efficiency report."""

from vppcli.evaluation.dataset import (
    DATASET_YEARS,
    Category,
    ClassMapping,
    Video,
    YtvisDataset,
    load_dataset,
    locate_split,
    match_classes,
)
from vppcli.efficiency import EfficiencyMeter, EfficiencyReport
from vppcli.evaluation.metric import METRIC_NAMES, VideoAP, evaluate_results, load_results

__all__ = [
    "DATASET_YEARS",
    "METRIC_NAMES",
    "Category",
    "ClassMapping",
    "EfficiencyMeter",
    "EfficiencyReport",
    "Video",
    "VideoAP",
    "YtvisDataset",
    "evaluate_results",
    "load_dataset",
    "load_results",
    "locate_split",
    "match_classes",
]
