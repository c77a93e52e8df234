"""Data: benchmark class lists and splits, mmseg-layout datasets, joint v2 transforms (docs/protocol.md)."""

from .classes import (
    BENCHMARKS,
    COCO_TEMPLATES,
    DATASET_LAYOUTS,
    IGNORE_INDEX,
    VOC_TEMPLATES,
    Benchmark,
    DatasetLayout,
    class_index,
    get_benchmark,
    layout,
)
from .dataset import SegDataset, build_dataset, read_label
from .normalize import CLIP_MEAN, CLIP_STD
from .transforms import (
    KeepRatioRescale,
    PadToSize,
    PhotoMetricDistortion,
    RandomCropCatMax,
    build_test_transform,
    build_train_transform,
    keep_ratio_size,
)

__all__ = [
    "BENCHMARKS",
    "COCO_TEMPLATES",
    "DATASET_LAYOUTS",
    "IGNORE_INDEX",
    "VOC_TEMPLATES",
    "Benchmark",
    "DatasetLayout",
    "class_index",
    "get_benchmark",
    "layout",
    "SegDataset",
    "build_dataset",
    "read_label",
    "CLIP_MEAN",
    "CLIP_STD",
    "KeepRatioRescale",
    "PadToSize",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "build_test_transform",
    "build_train_transform",
    "keep_ratio_size",
]
