"""ADE20K SceneParsing (``ADEChallengeData2016/``): 150 classes, 0 unlabelled."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .datasets import Transforms, _FileDataset
from .io import DataError

__all__ = ["ADE20K_CLASSES", "ADE20K_COLOURS", "ADE20KSegmentation"]

# objectInfo150 order (the first name of each entry), as the benchmark's class indices 1..150
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
# the colour table of the benchmark's toolkit (color150), one colour per class above
ADE20K_COLOURS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)  # fmt: skip
_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


def ade20k_root(root: Path) -> Path | None:
    """The ``ADEChallengeData2016`` folder: ``root`` itself or the one folder of that name in it."""
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations" / "training").is_dir():
            return candidate
        if (candidate / "images").is_dir() and (candidate / "annotations" / "validation").is_dir():
            return candidate
    return None


def reduce_labels(labels: np.ndarray, where: str, ignore_index: int = 255) -> np.ndarray:
    """SceneParsing labels (0 unlabelled, 1..150) as class indices 0..149 with 0 -> ``ignore_index``."""
    if labels.size and (labels.min() < 0 or labels.max() > len(ADE20K_CLASSES)):
        bad = np.unique(labels[(labels < 0) | (labels > len(ADE20K_CLASSES))]).tolist()
        raise DataError(
            f"{where}: label values {bad[:10]} are outside ADE20K SceneParsing's 0..150 "
            "(0 unlabelled, 1..150 the classes): use the annotations of ADEChallengeData2016"
        )
    return np.where(labels == 0, ignore_index, labels - 1)


class ADE20KSegmentation(_FileDataset):
    """ADE20K SceneParsing: ``images/{training,validation}/*.jpg`` with
    ``annotations/{training,validation}/*.png``; 150 classes, 0 (unlabelled) becomes 255 and
    every other label is shifted down by one (the usual reduce-labels rule).

    ``root`` is ``ADEChallengeData2016`` or the folder holding it; ``split`` is ``train`` /
    ``val`` (or ``training`` / ``validation``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        *,
        transforms: Transforms | None = None,
        ignore_index: int = 255,
    ) -> None:
        given = Path(root)
        found = ade20k_root(given)
        if found is None:
            if not given.is_dir():
                raise DataError(f"dataset folder {given} does not exist")
            raise DataError(
                f"{given} is not an ADE20K SceneParsing folder: expected ADEChallengeData2016/ with "
                "images/{training,validation}/ and annotations/{training,validation}/"
            )
        if split not in _SPLITS:
            raise DataError(f"ADE20K has the splits train (training) and val (validation), not {split!r}")
        folder = _SPLITS[split]
        images, labels = found / "images" / folder, found / "annotations" / folder
        for d in (images, labels):
            if not d.is_dir():
                raise DataError(f"{d} does not exist: the {split} split of {found} is incomplete")
        samples: list[tuple[Path, Path]] = []
        for image in sorted(images.glob("*.jpg")):
            mask = labels / f"{image.stem}.png"
            if not mask.is_file():
                raise DataError(f"image {image} has no annotation: expected {mask}")
            samples.append((image, mask))
        if not samples:
            raise DataError(f"{images} holds no .jpg images")
        super().__init__(samples, ADE20K_CLASSES, transforms=transforms, ignore_index=ignore_index)
        self.root, self.split = found, split

    def _classes(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        return torch.from_numpy(reduce_labels(mask.numpy(), str(path), self.ignore_index))
