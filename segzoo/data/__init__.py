"""Datasets (Pascal VOC, COCO, Cityscapes, ADE20K, a generic folder layout, a synthetic set),
transforms and collate.

This package imports torchvision; ``import segzoo`` does not import it.
"""

from __future__ import annotations

from .ade20k import ADE20K_CLASSES, ADE20K_COLOURS, ADE20KSegmentation
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_COLOURS, CityscapesSegmentation
from .coco import COCO_VOC_CATEGORIES, COCOSegmentation, write_coco_subset
from .datasets import (
    VOC_CLASSES,
    FolderSegmentation,
    SegmentationDataset,
    VOCSegmentation,
    read_class_names,
)
from .formats import FORMATS, detect_format, open_dataset, palette_for_labels
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
    "ADE20K_CLASSES",
    "ADE20K_COLOURS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_COLOURS",
    "COCO_VOC_CATEGORIES",
    "FORMATS",
    "SYNTHETIC_CLASSES",
    "VOC_CLASSES",
    "ADE20KSegmentation",
    "COCOSegmentation",
    "CityscapesSegmentation",
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
    "palette_for_labels",
    "preset_from_config",
    "read_class_names",
    "read_image",
    "read_mask",
    "train_transforms",
    "write_coco_subset",
    "write_synthetic",
]
