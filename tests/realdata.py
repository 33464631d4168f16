"""Miniature COCO, Cityscapes and ADE20K trees with each dataset's real file naming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# COCO's ids and names of the 20 Pascal VOC classes, plus two others that are never kept by default
COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 25: "giraffe",
    44: "bottle", 62: "chair", 63: "couch", 64: "potted plant", 67: "dining table", 72: "tv",
}  # fmt: skip
W, H = 64, 48


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE, written here from its definition: run lengths over the
    column-major pixels, starting with a run of zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as api

    rle = api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def coco_scene(first_id: int) -> tuple[list[dict], list[dict]]:
    """Images and annotations with every case: polygons (one and two parts), overlaps of
    different and equal classes, a category not kept, a crowd region as uncompressed RLE, a
    compressed RLE, a polygon partly outside the image, a tiny annotation, and no annotation."""
    ids = [first_id + k for k in range(6)]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W, "license": 1} for i in ids]
    crowd = np.zeros((H, W), dtype=bool)
    crowd[5:30, 30:60] = True
    blob = np.zeros((H, W), dtype=bool)
    blob[20:44, 2:26] = True
    blob[30:34, 8:12] = False
    anns = [
        (ids[0], 17, [rect(4, 4, 40, 36)], 0),  # cat
        (ids[0], 18, [rect(30, 20, 60, 44), [50, 2, 62, 2, 56, 12]], 0),  # dog, two parts, overlaps the cat
        (ids[0], 8, [rect(0, 0, 20, 20)], 0),  # truck: not a VOC class, not kept by default
        (ids[1], 1, uncompressed_rle(crowd), 1),  # a crowd of people
        (ids[1], 1, [rect(20, 10, 40, 40)], 0),  # a person overlapping the crowd (same class)
        (ids[1], 6, compressed_rle(blob), 0),  # a bus
        (ids[1], 17, [[1, 1, 2, 1]], 0),  # a degenerate polygon of two points: no area
        # ids[2]: no annotations at all
        (ids[3], 17, [rect(10, 10, 16, 16)], 0),  # a small cat: too little area for training
        (ids[4], 18, [rect(30, -10, 80, 40)], 0),  # a dog partly outside the image: clipped
        (ids[5], 18, [rect(2, 2, 50, 40)], 0),  # a dog
        (ids[5], 18, [rect(30, 20, 62, 46)], 0),  # another dog overlapping it
    ]
    out = []
    for k, (img, cat, seg, crowd_flag) in enumerate(anns):
        out.append({"id": first_id * 10 + k, "image_id": img, "category_id": cat, "segmentation": seg,
                    "iscrowd": crowd_flag, "area": _area(seg), "bbox": [0, 0, 1, 1]})  # fmt: skip
    return images, out


def _area(seg: Any) -> float:
    from pycocotools import mask as api

    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        return float(api.area(api.frPyObjects(polys, H, W)).sum()) if polys else 0.0
    rle = (
        api.frPyObjects(seg, H, W)
        if isinstance(seg["counts"], list)
        else dict(seg, counts=seg["counts"].encode())
    )
    return float(api.area(rle))


def write_coco_json(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_CATEGORIES.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"info": {}, "images": images, "annotations": annotations, "categories": cats})
    )
    return path


def write_images(folder: Path, images: list[dict], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for img in images:
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / img["file_name"], quality=95)


def write_coco(root: Path) -> Path:
    """root/{train2017,val2017}/*.jpg and root/annotations/instances_{train2017,val2017}.json."""
    for split, first in (("train2017", 100), ("val2017", 200)):
        images, anns = coco_scene(first)
        write_images(root / split, images, seed=first)
        write_coco_json(root / "annotations" / f"instances_{split}.json", images, anns)
    return root


# Cityscapes: the 19 training classes' labelIds, in trainId order (the official table, written
# differently from segzoo's)
CITYSCAPES_TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def write_cityscapes(root: Path, seed: int = 0) -> Path:
    """leftImg8bit/{train,val}/{city}/*_leftImg8bit.png and gtFine's labelIds, color, instanceIds
    and polygons files, as the official packages name them."""
    rng = np.random.default_rng(seed)
    for split, cities in (("train", ["aachen", "bochum"]), ("val", ["frankfurt"])):
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                blocks = rng.integers(0, 34, (H // 8, W // 8), dtype=np.uint8)
                ids = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
                gt = root / "gtFine" / split / city
                Image.fromarray(ids, mode="L").save(gt / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(pixels).save(gt / f"{stem}_gtFine_color.png")
                Image.fromarray(ids.astype(np.uint16) * 1000).save(gt / f"{stem}_gtFine_instanceIds.png")
                (gt / f"{stem}_gtFine_polygons.json").write_text(
                    '{"imgHeight": 48, "imgWidth": 64, "objects": []}'
                )
    return root


def write_ade20k(root: Path, seed: int = 0) -> Path:
    """ADEChallengeData2016/images/{training,validation}/ADE_*.jpg and annotations/.../ADE_*.png."""
    rng = np.random.default_rng(seed)
    ade = root / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for k in range(1, 4):
            name = f"{prefix}_{k:08d}"
            pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(ade / "images" / split / f"{name}.jpg", quality=95)
            blocks = rng.integers(0, 151, (H // 8, W // 8), dtype=np.uint8)
            labels = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))
            Image.fromarray(labels, mode="L").save(ade / "annotations" / split / f"{name}.png")
    (ade / "sceneCategories.txt").write_text("ADE_train_00000001 bathroom\n")
    return root
