"""Which layout a dataset folder has, opening it, and the colours of each dataset's classes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._viz import palette
from .ade20k import ADE20K_CLASSES, ADE20K_COLOURS, ADE20KSegmentation, ade20k_root
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_COLOURS, CityscapesSegmentation
from .coco import COCOSegmentation
from .datasets import FolderSegmentation, SegmentationDataset, Transforms, VOCSegmentation, _voc_root
from .io import DataError

__all__ = ["FORMATS", "detect_format", "open_dataset", "palette_for_labels"]

FORMATS = ("voc", "folder", "coco", "cityscapes", "ade20k")


def detect_format(root: str | os.PathLike[str]) -> str:
    """``"folder"``, ``"cityscapes"``, ``"ade20k"``, ``"coco"`` or ``"voc"``, from what the folder holds."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folder"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if ade20k_root(root) is not None:
        return "ade20k"
    if any((root / "annotations").glob("instances_*.json")):
        return "coco"
    try:
        _voc_root(root)
    except DataError:
        raise DataError(
            f"cannot tell the layout of {root}: expected images/ + masks/ (folder), JPEGImages/ + "
            "SegmentationClass/ (voc), annotations/instances_*.json (coco), leftImg8bit/ + gtFine/ "
            "(cityscapes) or ADEChallengeData2016/ (ade20k); pass the format explicitly"
        ) from None
    return "voc"


def open_dataset(
    root: str | os.PathLike[str],
    format: str | None = None,
    split: str | None = "val",
    *,
    num_classes: int | None = None,
    transforms: Transforms | None = None,
    categories: Sequence[str | int] | None = None,
    labels: Sequence[str] | None = None,
) -> SegmentationDataset:
    """A dataset on disk, its format (one of :data:`FORMATS`) detected when not given.

    ``num_classes`` names the classes of a folder dataset without ``classes.txt``; ``categories``
    and ``labels`` choose the categories of a COCO dataset (see :class:`COCOSegmentation`).
    """
    fmt = format or detect_format(root)
    if fmt == "folder":
        return FolderSegmentation(root, split, num_classes=num_classes, transforms=transforms)
    if split is None:
        raise ValueError(f"a {fmt} dataset is read by split: name one (train, val, ...)")
    if fmt == "voc":
        return VOCSegmentation(root, split, transforms=transforms)
    if fmt == "coco":
        return COCOSegmentation(root, None, categories, split, labels=labels, transforms=transforms)
    if fmt == "cityscapes":
        return CityscapesSegmentation(root, split, transforms=transforms)
    if fmt == "ade20k":
        return ADE20KSegmentation(root, split, transforms=transforms)
    raise ValueError(f"unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}")


def palette_for_labels(labels: Sequence[str] | None) -> np.ndarray:
    """The 256 x 3 colours to draw a model's classes with: Cityscapes' or ADE20K's own colours when
    its labels are exactly that dataset's classes, else the Pascal VOC colour map (which VOC and
    COCO-with-VOC-classes models use too)."""
    colours = palette()
    own = {CITYSCAPES_CLASSES: CITYSCAPES_COLOURS, ADE20K_CLASSES: ADE20K_COLOURS}.get(tuple(labels or ()))
    if own is not None:
        colours[: len(own)] = np.array(own, dtype=np.uint8)
    return colours
