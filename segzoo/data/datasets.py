"""Segmentation datasets on disk: Pascal VOC and a generic images/ + masks/ folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, DataError, check_relative_name, read_image, read_mask

__all__ = [
    "VOC_CLASSES",
    "FolderSegmentation",
    "SegmentationDataset",
    "VOCSegmentation",
    "read_class_names",
]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

Transforms = Callable[[Any, Any], tuple[Any, Any]]


class SegmentationDataset(Dataset):
    """Base class: ``dataset[i]`` is ``(image, mask)``.

    Without ``transforms`` the image is a ``tv_tensors.Image`` (3 x H x W, uint8) and the mask a
    ``tv_tensors.Mask`` (H x W, int64 class indices, ``ignore_index`` where unlabelled). With
    ``transforms`` (a callable taking and returning ``(image, mask)``, e.g.
    :func:`segzoo.data.train_transforms`) the result of the transforms. Subclasses implement
    ``__len__``, ``load(i)`` and ``describe(i)``.
    """

    def __init__(
        self, classes: Sequence[str], *, ignore_index: int = 255, transforms: Transforms | None = None
    ) -> None:
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw sample: a 3 x H x W uint8 image and an H x W int64 mask."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""
        return f"sample {index}"

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask = self.load(index)
        self._check(index, image, mask)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask

    def _check(self, index: int, image: torch.Tensor, mask: torch.Tensor) -> None:
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            (h, w), (mh, mw) = image.shape[-2:], mask.shape
            raise DataError(
                f"{self.describe(index)}: the mask is {mw}x{mh} but the image is {w}x{h} (width x height): "
                "a mask must have its image's size, pixel for pixel"
            )
        bad = ((mask >= self.num_classes) & (mask != self.ignore_index)) | (mask < 0)
        if bad.any():
            values = mask[bad].unique().tolist()
            raise DataError(
                f"{self.describe(index)}: the mask has values {values[:10]} outside the "
                f"{self.num_classes} classes 0..{self.num_classes - 1} (and ignore_index {self.ignore_index}): "
                "fix the mask, or list every class in the dataset's class names"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


class _FileDataset(SegmentationDataset):
    """Samples as (image path, mask path) pairs; a dataset whose label files hold other values than
    class indices (Cityscapes' label ids, ADE20K's shifted labels) maps them in ``_classes``."""

    def __init__(self, samples: list[tuple[Path, Path]], classes: Sequence[str], **kwargs: Any) -> None:
        super().__init__(classes, **kwargs)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        return read_image(image_path), self._classes(read_mask(mask_path), mask_path)

    def _classes(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        return mask

    def describe(self, index: int) -> str:
        image_path, mask_path = self.samples[index]
        return f"{mask_path} (mask of {image_path})"


def _read_split(path: Path, hint: str) -> list[str]:
    if not path.is_file():
        found = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"split file {path} does not exist ({'splits found: ' + ', '.join(found) if found else hint})"
        )
    ids = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        i = line.strip()
        if i and not i.startswith("#"):
            ids.append(check_relative_name(i, f"split file {path}, line {n}"))
    return ids


def _nonempty(samples: list[Any], where: str) -> None:
    if not samples:
        raise DataError(f"the dataset at {where} is empty: it lists no images")


class VOCSegmentation(_FileDataset):
    """Pascal VOC: ``JPEGImages/``, ``SegmentationClass/`` palette PNGs and
    ``ImageSets/Segmentation/{split}.txt``; the 21 VOC classes, 255 for the unlabelled borders.

    ``root`` is the folder holding ``JPEGImages`` (``VOCdevkit/VOC2012``), or a folder above it
    with exactly one such folder (``VOCdevkit``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        classes: Sequence[str] = VOC_CLASSES,
        transforms: Transforms | None = None,
        ignore_index: int = 255,
    ) -> None:
        root = _voc_root(Path(root))
        ids = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt", "expected train.txt, val.txt")
        samples = []
        for i in ids:
            image = root / "JPEGImages" / f"{i}.jpg"
            mask = root / "SegmentationClass" / f"{i}.png"
            for what, p in (("image", image), ("mask", mask)):
                if not p.is_file():
                    raise FileNotFoundError(f"{what} {p}, listed as {i!r} in split {split!r}, does not exist")
            samples.append((image, mask))
        _nonempty(samples, f"{root} (split {split!r})")
        super().__init__(samples, classes, transforms=transforms, ignore_index=ignore_index)
        self.root, self.split = root, split


def _voc_root(root: Path) -> Path:
    if (root / "JPEGImages").is_dir():
        return root
    found = sorted(p.parent for pattern in ("*/JPEGImages", "*/*/JPEGImages") for p in root.glob(pattern))
    if len(found) == 1:
        return found[0]
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    raise DataError(
        f"{root} is not a Pascal VOC folder: expected JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/ in it (or in exactly one folder below it, e.g. VOCdevkit/VOC2012)"
    )


def read_class_names(root: Path, num_classes: int | None = None) -> list[str]:
    """Class names from ``classes.txt`` (one per line) or ``classes.json`` (a list, or
    ``{"classes": [...]}``); ``class_0``, ``class_1``, ... when neither exists and ``num_classes``
    is given."""
    txt, js = root / "classes.txt", root / "classes.json"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text().splitlines() if line.strip()]
        source = txt
    elif js.is_file():
        try:
            data = json.loads(js.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{js} is not valid JSON ({err})") from None
        names = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f'{js} must hold a list of class names, or {{"classes": [names...]}}')
        source = js
    elif num_classes is not None:
        return [f"class_{i}" for i in range(num_classes)]
    else:
        raise DataError(
            f"{root} has no classes.txt or classes.json: write the class names there, one per line in "
            "class-index order (or pass num_classes)"
        )
    if not names:
        raise DataError(f"{source} lists no classes")
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"{source} lists {len(names)} classes, but {num_classes} were expected")
    return names


class FolderSegmentation(_FileDataset):
    """A generic layout: ``images/`` and ``masks/`` with the same file stems, class names in
    ``classes.txt`` or ``classes.json``, and optional ``splits/{split}.txt`` listing stems.

    Masks are index or palette PNGs (pixel value = class index, ``ignore_index`` unlabelled).
    ``split=None`` takes every image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        num_classes: int | None = None,
        transforms: Transforms | None = None,
        ignore_index: int = 255,
    ) -> None:
        root = Path(root)
        for sub in ("images", "masks"):
            if not (root / sub).is_dir():
                if not root.is_dir():
                    raise FileNotFoundError(f"dataset folder {root} does not exist")
                raise DataError(
                    f"{root} has no {sub}/ folder: the folder layout is images/ and masks/ with the same "
                    "file names (masks as index or palette PNGs), plus classes.txt"
                )
        classes = read_class_names(root, num_classes)
        images = _by_stem(root / "images", IMAGE_EXTENSIONS)
        masks = _by_stem(root / "masks", MASK_EXTENSIONS)
        if split is None:
            stems = sorted(images)
        else:
            stems = _read_split(
                root / "splits" / f"{split}.txt", "write one image stem per line, or use every image"
            )
        samples = []
        for stem in stems:
            if stem not in images:
                raise FileNotFoundError(f"no image for {stem!r} in {root / 'images'}")
            if stem not in masks:
                raise FileNotFoundError(
                    f"image {images[stem]} has no mask: expected {root / 'masks' / stem}.png"
                )
            samples.append((images[stem], masks[stem]))
        _nonempty(samples, str(root) + (f" (split {split!r})" if split else ""))
        super().__init__(samples, classes, transforms=transforms, ignore_index=ignore_index)
        self.root, self.split = root, split


def _by_stem(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in extensions:
            continue
        if p.stem in out:
            raise DataError(f"{out[p.stem]} and {p} have the same name: keep one file per stem in {folder}")
        out[p.stem] = p
    return out
