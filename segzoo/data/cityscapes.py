"""Cityscapes (``leftImg8bit/`` + ``gtFine/``): the official labelIds mapped to the 19 trainIds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .datasets import Transforms, _FileDataset
from .io import DataError

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_COLOURS", "CITYSCAPES_LABEL_TO_TRAIN", "CityscapesSegmentation"]

# cityscapesScripts' helpers/labels.py: (labelId, trainId) for ids 0..33; 255 = ignored in training
# and evaluation. The license plate (id -1) is never written into the labelIds PNGs.
CITYSCAPES_LABEL_TO_TRAIN = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3,
    13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_COLOURS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

_LUT = np.full(256, -1, dtype=np.int64)
for _label, _train in CITYSCAPES_LABEL_TO_TRAIN.items():
    _LUT[_label] = _train


def label_ids_to_train_ids(ids: np.ndarray, where: str) -> np.ndarray:
    """A labelIds array as trainIds (0..18, 255 for the rest); ids outside the table are refused."""
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise DataError(
            f"{where}: labelIds must lie in 0..33, this file holds {int(ids.min())}..{int(ids.max())}"
        )
    out = _LUT[ids]
    if (out < 0).any():
        bad = np.unique(ids[out < 0]).tolist()
        raise DataError(
            f"{where}: label ids {bad[:10]} are not in the Cityscapes table (ids 0..33): use the "
            "*_gtFine_labelIds.png files of the official gtFine package"
        )
    return out


class CityscapesSegmentation(_FileDataset):
    """Cityscapes fine annotations: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png``; the 19 training classes, 255 for the rest.

    ``root`` is the folder holding ``leftImg8bit/`` and ``gtFine/``; ``split`` is ``train``,
    ``val`` or ``test`` (whose public labels are empty).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        *,
        transforms: Transforms | None = None,
        ignore_index: int = 255,
    ) -> None:
        root = Path(root)
        if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
            if not root.is_dir():
                raise DataError(f"dataset folder {root} does not exist")
            raise DataError(
                f"{root} is not a Cityscapes folder: expected leftImg8bit/ and gtFine/ in it "
                "(from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip)"
            )
        images = root / "leftImg8bit" / split
        if not images.is_dir():
            found = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
            raise DataError(f"{images} does not exist: the splits of {root} are {', '.join(found) or 'none'}")
        samples: list[tuple[Path, Path]] = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if not mask.is_file():
                raise DataError(f"image {image} has no label file: expected {mask}")
            samples.append((image, mask))
        if not samples:
            raise DataError(f"{images} holds no */*_leftImg8bit.png images")
        super().__init__(samples, CITYSCAPES_CLASSES, transforms=transforms, ignore_index=ignore_index)
        self.root, self.split = root, split

    def _classes(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        train_ids = label_ids_to_train_ids(mask.numpy(), str(path))
        train_ids[train_ids == 255] = self.ignore_index
        return torch.from_numpy(train_ids)
