"""COCO instance annotations as semantic masks, with torchvision's segmentation references' rules.

The rules (``references/segmentation/coco_utils.py``): keep the annotations of the chosen
categories (crowd regions included, labelled like any other), number the categories 1..K in the
order given (0 = background), mark every pixel covered by two or more kept instances 255, and for
training drop the images whose kept annotations cover 1000 pixels or less (by their ``area``).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._viz import mask_image
from ..errors import UsageError
from .datasets import VOC_CLASSES, SegmentationDataset, Transforms
from .io import DataError, building_dataset_folder, check_relative_name, read_image

__all__ = ["COCO_VOC_CATEGORIES", "COCOSegmentation", "write_coco_subset"]

# the references' CAT_LIST without its leading 0: the COCO ids of the 20 Pascal VOC classes, in
# VOC's order (aeroplane = airplane 5, bicycle 2, bird 16, ...), remapped to 1..20
COCO_VOC_CATEGORIES = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
MIN_AREA = 1000  # the references' _coco_remove_images_without_annotations threshold (pixels)


def _mask_api() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        raise UsageError(
            "reading COCO annotations needs pycocotools, an optional dependency: pip install 'segzoo[coco]'"
        ) from None
    return mask


def _short(x: Any) -> str:
    """repr of a value from an untrusted file, cut to a readable length."""
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Annotations:
    """A COCO annotation file, parsed and checked: the file is untrusted input."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise DataError(f"COCO annotation file {path} does not exist")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise DataError(f"{path} is not a valid JSON file ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict):
            raise DataError(
                f"{path}: a COCO annotation file is a JSON object, this one is a {type(data).__name__}"
            )
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(
                    f"{path}: {key!r} must be a list (a COCO instances file, e.g. instances_val2017.json)"
                )
        self.images: dict[int, dict[str, Any]] = {}
        for i, img in enumerate(data["images"]):
            where = f"{path}, images[{i}]"
            if not isinstance(img, dict):
                raise DataError(f"{where} is not an object")
            for key in ("id", "height", "width"):
                if not isinstance(img.get(key), int) or isinstance(img.get(key), bool):
                    raise DataError(f"{where}: {key!r} must be an integer, got {_short(img.get(key))}")
            if img["height"] <= 0 or img["width"] <= 0:
                raise DataError(f"{where}: height and width must be positive")
            if not isinstance(img.get("file_name"), str):
                raise DataError(f"{where}: 'file_name' must be a string")
            check_relative_name(img["file_name"], f"{where} (file_name)", folders=True)
            if img["id"] in self.images:
                raise DataError(f"{where}: image id {img['id']} appears twice")
            self.images[img["id"]] = img
        self.categories: dict[int, str] = {}
        for i, cat in enumerate(data["categories"]):
            if (
                not isinstance(cat, dict)
                or not isinstance(cat.get("id"), int)
                or not isinstance(cat.get("name"), str)
            ):
                raise DataError(
                    f"{path}, categories[{i}]: a category needs an integer 'id' and a string 'name'"
                )
            self.categories[cat["id"]] = cat["name"]
        self.annotations: list[dict[str, Any]] = []
        for i, ann in enumerate(data["annotations"]):
            # the checks every annotation needs, cheap for COCO's 860,000 (the message is built on failure)
            ok_ids = isinstance(ann, dict) and _is_int(ann.get("image_id")) and ann["image_id"] in self.images
            if not (
                ok_ids
                and _is_int(ann.get("category_id"))
                and ann["category_id"] in self.categories
                and ann.get("iscrowd", 0) in (0, 1)
                and _is_number(ann.get("area", 0))
            ):
                raise DataError(self._annotation_problem(i, ann))
            ann["_index"] = i
            self.annotations.append(ann)

    def where(self, ann: dict[str, Any]) -> str:
        return f"{self.path}, annotations[{ann['_index']}]"

    def _annotation_problem(self, i: int, ann: Any) -> str:
        where = f"{self.path}, annotations[{i}]"
        if not isinstance(ann, dict):
            return f"{where} is not an object"
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in self.images:
            return f"{where} (id {_short(ann.get('id'))}) points at image_id {_short(ann.get('image_id'))}, which is not in 'images'"
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in self.categories:
            return f"{where}: category_id {_short(ann.get('category_id'))} is not in 'categories'"
        if ann.get("iscrowd", 0) not in (0, 1):
            return f"{where}: 'iscrowd' must be 0 or 1"
        return f"{where}: 'area' must be a number"

    def category_ids(self, categories: Sequence[str | int] | None) -> list[int]:
        """COCO category ids for names or ids, in the order given (the VOC 20 by default)."""
        if categories is None:
            missing = [c for c in COCO_VOC_CATEGORIES if c not in self.categories]
            if missing:
                raise DataError(
                    f"{self.path} lacks the COCO categories {missing} that the default 20 Pascal VOC classes "
                    "need: choose the categories to read (categories=[...], --categories a,b)"
                )
            return list(COCO_VOC_CATEGORIES)
        if not categories:
            raise DataError("no categories chosen: name at least one (e.g. cat,dog)")
        by_name = {name: cid for cid, name in self.categories.items()}
        by_lower = {name.lower(): cid for cid, name in self.categories.items()}
        ids = []
        for c in categories:
            if isinstance(c, int) and not isinstance(c, bool):
                cid = c if c in self.categories else None
            elif isinstance(c, str):
                name = c.strip()
                cid = by_name.get(name, by_lower.get(name.lower()))
                if cid is None and name.isdigit() and int(name) in self.categories:
                    cid = int(name)
            else:
                raise UsageError(f"a category is a name or an id, not {c!r}")
            if cid is None:
                close = difflib.get_close_matches(str(c).lower(), list(by_lower), n=5, cutoff=0.5)
                hint = (
                    f"close: {', '.join(close)}"
                    if close
                    else f"it has {len(by_name)}: {', '.join(list(by_name)[:12])}, ..."
                )
                raise DataError(f"{self.path} has no category {c!r} ({hint})")
            if cid in ids:
                raise DataError(f"category {c!r} is chosen twice")
            ids.append(cid)
        return ids


def _check_segmentation(ann: dict[str, Any], height: int, width: int, where: str) -> None:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if not seg:
            raise DataError(f"{where}: 'segmentation' is an empty list of polygons")
        xs: list[float] = []
        ys: list[float] = []
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly) or len(poly) % 2:
                raise DataError(f"{where}: polygon {k} must be a flat list of x, y numbers")
            xs += poly[0::2]
            ys += poly[1::2]
        if xs and (max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height):
            raise DataError(
                f"{where} (id {_short(ann.get('id'))}): its polygons lie outside the {width}x{height} image "
                f"(x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}): the annotation belongs to "
                "another image or the image's width/height are wrong"
            )
    elif isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size != [height, width]:
            raise DataError(
                f"{where}: the RLE's size {_short(size)} is not the image's [height, width] [{height}, {width}]"
            )
        if isinstance(counts, list):
            if not all(isinstance(v, int) and v >= 0 for v in counts) or sum(counts) != height * width:
                raise DataError(
                    f"{where}: the uncompressed RLE counts must be non-negative integers summing to "
                    f"height x width = {height * width}"
                )
        elif not isinstance(counts, str):
            raise DataError(f"{where}: RLE 'counts' must be a list (uncompressed) or a string (compressed)")
    else:
        raise DataError(f"{where}: 'segmentation' must be polygons (a list) or an RLE (an object)")


def _decode(seg: list[Any] | dict[str, Any], height: int, width: int, api: Any) -> np.ndarray:
    """One annotation as an H x W bool array, with pycocotools' rasterisation."""
    if isinstance(seg, list):
        # polygons with fewer than 3 points have no area (and pycocotools would read a 4-number
        # first polygon as a box)
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        return api.decode(api.frPyObjects(polys, height, width)).any(axis=2)
    if isinstance(seg["counts"], list):
        rle = api.frPyObjects(seg, height, width)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return api.decode(rle).astype(bool)


class COCOSegmentation(SegmentationDataset):
    """COCO instances as semantic masks (see the module docstring for the rules).

    ``root`` is the COCO folder (``{split}2017/`` images and
    ``annotations/instances_{split}2017.json``), or with ``annotations`` given the images folder.
    ``categories``: COCO names or ids, numbered 1..K in that order; by default the 20 Pascal VOC
    classes as torchvision's references choose them (class names then VOC's). ``labels``: a
    model's class names; when ``categories`` is None and they are ``background`` followed by COCO
    category names, those categories are read. ``min_area``: drop images whose kept annotations'
    total ``area`` is not above it (also images without any); by default 1000 for a split
    starting with ``train`` and no dropping otherwise, as the references do.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        annotations: str | os.PathLike[str] | None = None,
        categories: Sequence[str | int] | None = None,
        split: str = "val",
        *,
        labels: Sequence[str] | None = None,
        min_area: float | None = None,
        transforms: Transforms | None = None,
        ignore_index: int = 255,
    ) -> None:
        api = _mask_api()
        root = Path(root)
        self.images_dir, ann_path = _coco_paths(root, annotations, split)
        ann = _Annotations(ann_path)
        if categories is None and labels is not None:
            categories = _categories_from_labels(labels, ann.categories)
        ids = ann.category_ids(categories)
        index = {cid: k + 1 for k, cid in enumerate(ids)}
        if categories is None:
            classes = list(VOC_CLASSES)
        else:
            classes = ["background", *(ann.categories[c] for c in ids)]
        if len(ids) > 254:
            raise UsageError(
                f"at most 254 categories fit a mask with 255 as the ignore value; {len(ids)} chosen"
            )
        if 0 <= ignore_index <= len(ids):
            raise UsageError(f"ignore_index {ignore_index} collides with the {len(ids)} categories")
        if min_area is None and split.startswith("train"):
            min_area = MIN_AREA
        by_image: dict[int, list[tuple[int, dict[str, Any]]]] = {i: [] for i in ann.images}
        for a in ann.annotations:
            if a["category_id"] in index:
                img = ann.images[a["image_id"]]
                _check_segmentation(a, img["height"], img["width"], ann.where(a))
                by_image[a["image_id"]].append((index[a["category_id"]], a))
        keep = sorted(ann.images)  # torchvision's CocoDetection order
        if min_area is not None:
            keep = [i for i in keep if by_image[i] and _area(by_image[i], ann.images[i], api) > min_area]
        self.ids = keep
        for i in keep:
            path = self.images_dir / ann.images[i]["file_name"]
            if not path.is_file():
                raise DataError(
                    f"{ann_path}: image {ann.images[i]['file_name']!r} (id {i}) is missing: expected {path}"
                )
        self._images, self._anns, self.annotations_path = ann.images, by_image, ann_path
        self.category_ids = ids
        self.split = split
        super().__init__(classes, transforms=transforms, ignore_index=ignore_index)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self._images[self.ids[index]]["file_name"]

    def target(self, index: int) -> np.ndarray:
        """Sample ``index``'s H x W uint8 mask, built from its annotations alone (255 where
        instances overlap)."""
        info = self._images[self.ids[index]]
        h, w = info["height"], info["width"]
        api = _mask_api()
        label = np.zeros((h, w), dtype=np.uint8)
        covered = np.zeros((h, w), dtype=np.uint8)  # 0, 1, or 2 for "two or more"
        for cls, a in self._anns[self.ids[index]]:
            m = _decode(a["segmentation"], h, w, api)
            label[m] = np.maximum(label[m], cls)
            covered += m
            np.minimum(covered, 2, out=covered)
        label[covered > 1] = 255
        return label

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        info = self._images[self.ids[index]]
        image = read_image(self.image_path(index), upright=False)  # annotations are on the stored pixels
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise DataError(
                f"{self.image_path(index)} is {image.shape[-1]}x{image.shape[-2]} but {self.annotations_path} "
                f"says {info['width']}x{info['height']} (image id {self.ids[index]}): the file does not match "
                "its annotations"
            )
        mask = torch.from_numpy(self.target(index).astype(np.int64))
        return image, mask.masked_fill_(mask == 255, self.ignore_index)

    def describe(self, index: int) -> str:
        return f"{self.image_path(index)} (image id {self.ids[index]} of {self.annotations_path})"


def _coco_paths(root: Path, annotations: str | os.PathLike[str] | None, split: str) -> tuple[Path, Path]:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    check_relative_name(split, "the split name")
    folders = [root / split, root / f"{split}2017"]
    images = next((f for f in folders if f.is_dir()), None)
    if annotations is not None:
        return images or root, Path(annotations)
    if images is None:
        raise DataError(f"{root} has no {split}/ or {split}2017/ images folder (the COCO layout)")
    ann = root / "annotations" / f"instances_{images.name}.json"
    if not ann.is_file():
        raise DataError(f"{root} has no annotations/instances_{images.name}.json (the COCO layout)")
    return images, ann


def _categories_from_labels(labels: Sequence[str], names: dict[int, str]) -> list[str] | None:
    labels = list(labels)
    known = set(names.values())
    if labels == list(VOC_CLASSES) or len(labels) < 2 or labels[0] != "background":
        return None
    return labels[1:] if all(n in known for n in labels[1:]) else None


def _area(anns: list[tuple[int, dict[str, Any]]], img: dict[str, Any], api: Any) -> float:
    total = 0.0
    for _, a in anns:
        if "area" in a:
            total += a["area"]
        else:  # a file without areas: count the annotation's pixels
            total += float(_decode(a["segmentation"], img["height"], img["width"], api).sum())
    return total


def write_coco_subset(
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    categories: Sequence[str | int],
    *,
    min_area: float = MIN_AREA,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: Callable[[Any], Any] | None = None,
) -> Path:
    """Write the images with the chosen categories in the folder layout: ``images/`` (the
    original files), ``masks/`` (palette PNGs, COCO's rules), ``classes.txt``, ``splits/train.txt``
    and ``splits/val.txt`` (a seeded random ``val_fraction`` of the images).

    Images whose kept annotations' area is not above ``min_area`` are left out (the references'
    training rule). The folder is built beside ``out`` and renamed into place at the end.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose a new folder or remove it")
    if not 0 <= val_fraction < 1:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    data = COCOSegmentation(images, annotations, categories, split="subset", min_area=min_area)
    if not len(data):
        raise DataError(
            f"{annotations}: no image has annotations of {', '.join(data.classes[1:])} above {min_area} px"
        )
    stems: dict[str, int] = {}
    for i in range(len(data)):
        stem = data.image_path(i).stem
        if stem in stems:
            raise DataError(
                f"{data.image_path(i)} and image id {data.ids[stems[stem]]} share the name {stem!r}"
            )
        stems[stem] = i
    with building_dataset_folder(out) as tmp:
        indices = range(len(data))
        for i in progress(indices) if progress else indices:
            src = data.image_path(i)
            _check_size(src, data, i)
            shutil.copyfile(src, tmp / "images" / src.name)
            mask_image(data.target(i)).save(tmp / "masks" / f"{src.stem}.png")
        (tmp / "classes.txt").write_text("\n".join(data.classes) + "\n")
        order = np.random.default_rng(seed).permutation(len(data))
        n_val = round(len(data) * val_fraction)
        val = set(order[:n_val].tolist())
        for split, chosen in (("train", [i for i in indices if i not in val]), ("val", sorted(val))):
            (tmp / "splits" / f"{split}.txt").write_text(
                "".join(f"{data.image_path(i).stem}\n" for i in chosen)
            )
    return out


def _check_size(path: Path, data: COCOSegmentation, i: int) -> None:
    try:
        with Image.open(path) as img:
            size = img.size
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({type(err).__name__}: {err})") from None
    info = data._images[data.ids[i]]
    if size != (info["width"], info["height"]):
        raise DataError(
            f"{path} is {size[0]}x{size[1]} but {data.annotations_path} says {info['width']}x{info['height']} "
            f"(image id {data.ids[i]}): the file does not match its annotations"
        )
