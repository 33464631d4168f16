"""Constants shared across segzoo: one definition each."""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "resize": 520,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "interpolation": "bilinear",
}
IGNORE_INDEX = 255

# torchvision's _VOC_CATEGORIES: the labels of its COCO-with-VOC-labels weights and of Pascal VOC
VOC_LABELS = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def default_labels(num_classes: int) -> list[str]:
    """Labels for a model or dataset without names: ``class_0``, ``class_1``, ..."""
    return [f"class_{i}" for i in range(num_classes)]
