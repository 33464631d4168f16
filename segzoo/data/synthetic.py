"""A synthetic segmentation dataset generated in code: textured shapes on cluttered backgrounds.

Sample ``i`` of seed ``s`` depends on ``(s, i)`` only (numpy's PCG64 seeded with both), so any
subset, order or worker count gives the same pixels, on every machine.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._viz import save_mask
from .datasets import SegmentationDataset, Transforms
from .io import building_dataset_folder

__all__ = ["SYNTHETIC_CLASSES", "SyntheticSegmentation", "write_synthetic"]

SHAPES = ("circle", "square", "triangle", "cross", "ring")
SYNTHETIC_CLASSES = ("background", *SHAPES)
TEXTURES = ("dots", "stripes", "checker", "speckle", "grid")  # shape k usually wears texture k


def _inside(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside a shape of radius ``r`` in its own rotated coordinates ``(u, v)``."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "triangle":
        out = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            out &= u * math.cos(a) + v * math.sin(a) <= 0.5 * r
        return out
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= 0.4 * r)) | ((av <= r) & (au <= 0.4 * r))
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    raise ValueError(shape)


def _texture(name: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over the object's coordinates (it turns with the object)."""
    p = rng.uniform(6.0, 10.0)  # period in pixels
    if name == "grid":
        return ((u % p < 0.3 * p) | (v % p < 0.3 * p)).astype(np.float32)
    if name == "stripes":
        return (np.floor(u / p) % 2).astype(np.float32)
    if name == "checker":
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    if name == "dots":
        du, dv = u % p - p / 2, v % p - p / 2
        return (du * du + dv * dv <= (0.3 * p) ** 2).astype(np.float32)
    if name == "speckle":
        return (rng.random(u.shape) < 0.5).astype(np.float32)
    raise ValueError(name)


def render(
    seed: int,
    index: int,
    *,
    num_classes: int = len(SYNTHETIC_CLASSES),
    size: tuple[int, int] = (96, 160),
    objects: tuple[int, int] = (1, 4),
    radius: tuple[float, float] = (0.22, 0.4),
    texture_swap: float = 0.1,
    colour_cue: float = 1.0,
    noise: tuple[float, float] = (0.02, 0.06),
    void: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of seed ``seed``: an H x W x 3 uint8 image and its H x W uint8 mask.

    Each side is drawn from ``size``; ``objects`` shapes (radius a fraction of the shorter side)
    are placed at random and may occlude each other or leave the frame. A shape usually wears its
    class's texture; with probability ``texture_swap`` it wears another. With probability
    ``colour_cue`` its colour has the class's hue (one of five bands, saturation and brightness
    random), else any colour. Backgrounds take any colour, so colour alone does not find objects.
    As in Pascal VOC, the boundaries between classes are unlabelled (255): pixels within ``void``
    pixels of another class (0: none).
    The defaults are calibrated so that a small model learns them in minutes on a CPU
    (``benchmarks/calibrate_synth.py``); ``colour_cue=0, texture_swap=0.2`` is a harder set.
    """
    rng = np.random.default_rng([seed, index])
    h, w = (int(x) for x in rng.integers(size[0], size[1] + 1, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # background: a two-colour gradient with soft blotches
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(a) + yy * math.sin(a)) / max(h, w)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(0.08, 0.3) * min(h, w)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        img += blob[..., None] * rng.uniform(-0.25, 0.25, 3).astype(np.float32)

    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        cls = int(rng.integers(1, num_classes))
        r = rng.uniform(*radius) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a = rng.uniform(0, 2 * math.pi)
        u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
        v = (yy - cy) * math.cos(a) - (xx - cx) * math.sin(a)
        inside = _inside(SHAPES[cls - 1], u, v, r)
        texture = TEXTURES[cls - 1] if rng.random() >= texture_swap else TEXTURES[int(rng.integers(5))]
        pattern = _texture(texture, u, v, rng)[inside][:, None]
        if rng.random() < colour_cue:
            hue = ((cls - 1) / len(SHAPES) + rng.uniform(-0.06, 0.06)) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
            ca = np.array(rgb, dtype=np.float32)
        else:
            ca = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        cb = ca * 0.3 if ca.mean() > 0.5 else ca + (1 - ca) * 0.7  # a contrasting second colour
        img[inside] = ca * (1 - pattern) + cb * pattern
        mask[inside] = cls

    img += rng.normal(0.0, rng.uniform(*noise), img.shape).astype(np.float32)
    if void:
        mask[_boundary(mask, void)] = 255
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mask


def _boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels with a pixel of another class within ``width`` (a square neighbourhood)."""
    h, w = mask.shape
    padded = np.pad(mask, width, mode="edge")
    out = np.zeros(mask.shape, dtype=bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            if dy or dx:
                out |= padded[width + dy : width + dy + h, width + dx : width + dx + w] != mask
    return out


def split_indices(n: int, split: str | None, val_fraction: float) -> range:
    """The documented split scheme: the last ``round(n * val_fraction)`` samples are ``val``."""
    n_val = round(n * val_fraction)
    if split is None:
        return range(n)
    if split == "train":
        return range(n - n_val)
    if split == "val":
        return range(n - n_val, n)
    raise ValueError(f"unknown split {split!r} for the synthetic dataset: use 'train', 'val' or None")


class SyntheticSegmentation(SegmentationDataset):
    """``n`` generated samples; ``split`` takes the train (first) or val (last ``val_fraction``) part.

    ``SyntheticSegmentation(200, seed=0, split="val")`` holds exactly the images and masks that
    ``segzoo data synth OUT --n 200 --seed 0`` writes to ``OUT`` for the val split. Keyword
    arguments of :func:`render` (``size``, ``objects``, ``radius``, ``texture_swap``,
    ``colour_cue``, ``noise``) change the generator. ``cache=True`` keeps rendered samples in
    memory (about 60 KB each), so epochs after the first only run the transforms.
    """

    def __init__(
        self,
        n: int = 200,
        *,
        seed: int = 0,
        split: str | None = None,
        num_classes: int = len(SYNTHETIC_CLASSES),
        val_fraction: float = 0.2,
        transforms: Transforms | None = None,
        cache: bool = False,
        **render_kwargs: Any,
    ) -> None:
        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(f"num_classes must be 2..{len(SYNTHETIC_CLASSES)}, got {num_classes}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        super().__init__(SYNTHETIC_CLASSES[:num_classes], transforms=transforms)
        self.seed, self.split = seed, split
        self.indices = split_indices(n, split, val_fraction)
        if not self.indices:
            raise ValueError(f"the {split} split of {n} synthetic samples is empty: raise n")
        self.render_kwargs = render_kwargs
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        render(seed, 0, num_classes=num_classes, **render_kwargs)  # a bad keyword fails here, not later

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.sample(index)
        return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.from_numpy(mask).long()

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as numpy arrays (H x W x 3 uint8 image, H x W uint8 mask)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        out = render(self.seed, self.indices[index], num_classes=self.num_classes, **self.render_kwargs)
        if self._cache is not None:
            self._cache[index] = out
        return out

    def name(self, index: int) -> str:
        """The file stem ``write_synthetic`` gives sample ``index``."""
        return f"{self.indices[index]:05d}"

    def describe(self, index: int) -> str:
        return f"synthetic sample {self.indices[index]} (seed {self.seed})"


def write_synthetic(
    out: str | os.PathLike[str],
    n: int = 200,
    *,
    seed: int = 0,
    num_classes: int = len(SYNTHETIC_CLASSES),
    val_fraction: float = 0.2,
    progress: Callable[[Any], Any] | None = None,
    **render_kwargs: Any,
) -> Path:
    """Write the synthetic dataset in the folder layout (``images/``, palette ``masks/``,
    ``classes.txt``, ``splits/train.txt`` and ``splits/val.txt``).

    The folder is built beside ``out`` and moved into place at the end, so ``out`` never holds a
    partial dataset. ``out`` must not exist or be empty.
    """
    from PIL import Image

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: choose a new folder or remove it")
    data = SyntheticSegmentation(
        n, seed=seed, num_classes=num_classes, val_fraction=val_fraction, **render_kwargs
    )
    with building_dataset_folder(out) as tmp:
        indices = range(len(data))
        for i in progress(indices) if progress else indices:
            img, mask = data.sample(i)
            Image.fromarray(img).save(tmp / "images" / f"{data.name(i)}.png")
            save_mask(mask, tmp / "masks" / f"{data.name(i)}.png")
        (tmp / "classes.txt").write_text("\n".join(data.classes) + "\n")
        for split in ("train", "val"):
            names = [f"{i:05d}" for i in split_indices(n, split, val_fraction)]
            (tmp / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    return out
