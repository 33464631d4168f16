"""Datasets (Pascal VOC, a generic folder layout, a synthetic set), transforms and collate.

This package imports torchvision; ``import segzoo`` does not import it.
"""

from __future__ import annotations

from .datasets import (
    VOC_CLASSES,
    FolderSegmentation,
    SegmentationDataset,
    VOCSegmentation,
    detect_format,
    open_dataset,
    read_class_names,
)
from .io import DataError, list_images, read_image, read_mask
from .synthetic import SYNTHETIC_CLASSES, SyntheticSegmentation, write_synthetic
from .transforms import (
    PadIfSmaller,
    collate,
    eval_transforms,
    pad_stack,
    preset_from_config,
    train_transforms,
)

__all__ = [
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "DataError",
    "FolderSegmentation",
    "PadIfSmaller",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "collate",
    "detect_format",
    "eval_transforms",
    "list_images",
    "open_dataset",
    "pad_stack",
    "preset_from_config",
    "read_class_names",
    "read_image",
    "read_mask",
    "train_transforms",
    "write_synthetic",
]
