"""Pictures of segmentations with Pillow: palette masks, overlays with a legend, confusion matrices.

Every file is written to a temporary name in its folder and renamed into place, so a crash never
leaves half a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._files import atomic_path
from .errors import UsageError

__all__ = ["confusion_matrix_image", "overlay", "palette", "save_image", "save_mask"]


def palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: an n x 3 uint8 array (class 0 black, 255 the ignore colour)."""
    idx = np.arange(n)
    out = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for ch in range(3):
            out[:, ch] |= ((idx >> (3 * shift + ch)) & 1) << (7 - shift)
    return out.astype(np.uint8)


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a PNG atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def mask_image(mask: Any, colours: np.ndarray | None = None) -> Image.Image:
    """An H x W array or tensor of class indices (0..255) as a palette (mode P) image, coloured
    with ``colours`` (256 x 3 uint8; default the VOC colour map)."""
    arr = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    if arr.ndim != 2:
        raise UsageError(f"a mask must be H x W, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise UsageError("a palette PNG holds class indices 0..255; this mask has values outside them")
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette((palette() if colours is None else colours).tobytes())
    return img


def save_mask(mask: Any, path: str | os.PathLike[str], *, colours: np.ndarray | None = None) -> Path:
    """Save class indices as a palette PNG: the pixel values are the classes, the colours VOC's
    (or ``colours``)."""
    return save_image(mask_image(mask, colours), path)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def overlay(
    image: Any,
    mask: Any,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    colours: np.ndarray | None = None,
) -> Image.Image:
    """The image blended with its mask's class colours (``colours``, 256 x 3; default the VOC
    colour map), and a legend of the classes present on the right (so the result is wider than
    the image)."""
    colours = palette() if colours is None else colours
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)  # C x H x W tensor layout
    m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask).astype(np.int64)
    if img.shape[:2] != m.shape:
        raise UsageError(f"image {img.shape[:2]} and mask {m.shape} differ in size")
    blended = img.astype(np.float32) * (1 - alpha) + colours[np.clip(m, 0, 255)].astype(np.float32) * alpha
    picture = Image.fromarray((blended + 0.5).astype(np.uint8))
    present = [int(c) for c in np.unique(m)]
    return _with_legend(picture, present, labels, colours)


def _with_legend(
    picture: Image.Image, classes: list[int], labels: Sequence[str] | None, colours: np.ndarray
) -> Image.Image:
    font = _font(12)
    line, swatch, pad = 16, 12, 6
    names = [
        labels[c] if labels is not None and 0 <= c < len(labels) else ("ignore" if c == 255 else f"class_{c}")
        for c in classes
    ]
    text_w = max((math.ceil(font.getlength(n)) for n in names), default=0)
    width = pad * 3 + swatch + text_w
    height = max(picture.height, pad * 2 + line * len(classes))
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + pad
    for k, (c, name) in enumerate(zip(classes, names, strict=True)):
        y = pad + k * line
        draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=tuple(int(v) for v in colours[c]),
                       outline=(0, 0, 0))  # fmt: skip
        draw.text((x + swatch + pad, y), name, fill=(0, 0, 0), font=font)
    return canvas


def confusion_matrix_image(matrix: Any, labels: Sequence[str]) -> Image.Image:
    """A confusion matrix (rows: true class, columns: predicted) with each row normalised to sum
    to 1, shaded white to blue, class names on both axes; rows without pixels are grey."""
    mat = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    n = mat.shape[0]
    sums = mat.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(sums > 0, mat / sums, np.nan)
    cell = max(12, min(44, 900 // max(n, 1)))
    font = _font(max(8, min(12, cell // 3)))
    label_w = max(math.ceil(font.getlength(s)) for s in labels) + 8
    title = 16
    left, top = title + label_w, title + label_w
    canvas = Image.new("RGB", (left + n * cell + 8, top + n * cell + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            colour = (200, 200, 200) if np.isnan(v) else tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
            if cell >= 28 and not np.isnan(v):
                text = f"{v:.2f}"
                tw = font.getlength(text)
                draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 6), text, font=font,
                          fill=(255, 255, 255) if v > 0.5 else (0, 0, 0))  # fmt: skip
    for i, name in enumerate(labels):
        tw = font.getlength(name)
        draw.text((left - 4 - tw, top + i * cell + cell / 2 - 6), name, fill=(0, 0, 0), font=font)
        # column labels: drawn horizontally on a strip, then turned to read bottom to top
        strip = Image.new("RGB", (label_w, cell), (255, 255, 255))
        ImageDraw.Draw(strip).text((4, cell / 2 - 6), name, fill=(0, 0, 0), font=font)
        canvas.paste(strip.rotate(90, expand=True), (left + i * cell, title))
    axis_font = _font(11)
    draw.text((left + (n * cell - axis_font.getlength("predicted")) / 2, 2), "predicted", fill=(0, 0, 0),
              font=axis_font)  # fmt: skip
    strip = Image.new("RGB", (math.ceil(axis_font.getlength("true")) + 4, title), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 2), "true", fill=(0, 0, 0), font=axis_font)
    canvas.paste(strip.rotate(90, expand=True), (0, top + (n * cell - strip.width) // 2))
    return canvas
