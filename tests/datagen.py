"""Small datasets written to disk for the tests: VOC and folder layouts with random masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segzoo._viz import save_mask


def random_sample(
    rng: np.random.Generator, h: int, w: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB image and a blocky mask with a few ignore (255) pixels."""
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    blocks = rng.integers(0, num_classes, (h // 8 + 1, w // 8 + 1), dtype=np.uint8)
    mask = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))[:h, :w].copy()
    mask[rng.random((h, w)) < 0.02] = 255
    return img, mask


def write_folder(
    root: Path,
    n: int = 5,
    *,
    num_classes: int = 4,
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
    splits: dict[str, list[int]] | None = None,
    classes_file: str = "txt",
) -> Path:
    """images/*.jpg|png, masks/*.png (palette), classes.txt (or .json) and optional splits/."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = sizes[i % len(sizes)] if sizes else (40 + 4 * i, 56 - 2 * i)
        img, mask = random_sample(rng, h, w, num_classes)
        Image.fromarray(img).save(root / "images" / f"s{i:02d}.png")
        save_mask(mask, root / "masks" / f"s{i:02d}.png")
    names = [f"c{k}" for k in range(num_classes)]
    if classes_file == "txt":
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    elif classes_file == "json":
        import json

        (root / "classes.json").write_text(json.dumps({"classes": names}))
    for split, ids in (splits or {}).items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("".join(f"s{i:02d}\n" for i in ids))
    return root


def write_voc(root: Path, n: int = 4, *, seed: int = 0) -> Path:
    """A VOCdevkit/VOC2012 tree with JPEG images, palette masks and train/val split files."""
    rng = np.random.default_rng(seed)
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        img, mask = random_sample(rng, 48 + 2 * i, 64, 21)
        Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        save_mask(mask, voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[: n // 2]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n // 2 :]) + "\n")
    return voc
