"""Prediction on images of any size: the model's own preprocessing, batches, sliding windows.

torchvision is imported only when a prediction runs, so ``import segzoo`` stays light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Prediction", "class_names", "iter_predictions", "predict", "write_prediction"]

ImageLike = Any  # a path (file or folder), a PIL image, a 3 x H x W tensor or an H x W x 3 array


@dataclass
class Prediction:
    """One image's result: ``mask`` is H x W class indices (int64) at the image's own size."""

    name: str
    image: Tensor  # 3 x H x W uint8, as read
    mask: Tensor


def class_names(model: nn.Module) -> list[str] | None:
    """The model's class names (``config["labels"]``), else ``class_0``, ``class_1``, ...; None when
    the model does not say how many classes it has."""
    config = getattr(model, "config", None) or {}
    labels, n = config.get("labels"), config.get("num_classes")
    if labels:
        return list(labels)
    return [f"class_{i}" for i in range(n)] if n else None


def _expand(images: ImageLike | Iterable[ImageLike]) -> list[tuple[str, Any]]:
    """(name, source) per image; folders become their image files, sorted."""
    from ..data.io import IMAGE_EXTENSIONS, list_images

    if isinstance(images, Tensor) and images.ndim == 4:
        images = list(images)  # a batch N x 3 x H x W
    elif isinstance(images, str | os.PathLike | np.ndarray | Tensor) or hasattr(images, "getpixel"):
        images = [images]
    out: list[tuple[str, Any]] = []
    for k, item in enumerate(images):
        if isinstance(item, str | os.PathLike):
            path = Path(item)
            if path.is_dir():
                found = list_images(path)
                if not found:
                    raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
                out += [(p.stem, p) for p in found]
            elif path.is_file():
                out.append((path.stem, path))
            else:
                raise FileNotFoundError(f"image {path} does not exist")
        else:
            out.append((f"image_{k:05d}", item))
    if not out:
        raise ValueError("predict() got no images")
    seen: dict[str, Any] = {}
    for name, src in out:
        if name in seen:
            raise ValueError(f"{seen[name]} and {src} would both be written as {name!r}: rename one of them")
        seen[name] = src
    return out


def _to_uint8(src: Any) -> Tensor:
    """A source as a 3 x H x W uint8 tensor."""
    from ..data.io import read_image

    if isinstance(src, Path):
        return read_image(src)
    if hasattr(src, "getpixel"):  # a PIL image
        arr = np.asarray(src.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1) if isinstance(src, np.ndarray) else src
    if not isinstance(t, Tensor) or t.ndim != 3 or t.shape[0] not in (1, 3):
        shape = getattr(src, "shape", None)
        raise TypeError(
            f"predict() takes image paths, folders, PIL images, 3 x H x W tensors or H x W x 3 arrays; "
            f"got {type(src).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")
        )
    if t.is_floating_point():
        t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
    return t.to(torch.uint8).expand(3, -1, -1).contiguous()


def sliding_window_logits(
    model: nn.Module, x: Tensor, tile: int, overlap: float = 0.25, batch_size: int = 1
) -> Tensor:
    """Logits of one normalised image (C x H x W) from ``tile`` x ``tile`` windows that step by
    ``tile * (1 - overlap)``; where windows overlap their logits are averaged. A tile as large
    as the image gives exactly the whole-image logits."""
    if tile < 1 or not 0 <= overlap < 1:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < 1, got tile={tile}, overlap={overlap}")
    _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    stride = max(1, int(tile * (1 - overlap)))

    def starts(length: int, size: int) -> list[int]:
        n = math.ceil((length - size) / stride) + 1 if length > size else 1
        return sorted({min(i * stride, length - size) for i in range(n)})

    windows = [(y, xx) for y in starts(h, th) for xx in starts(w, tw)]
    total: Tensor | None = None
    count = torch.zeros(1, h, w, device=x.device)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        batch = torch.stack([x[:, y : y + th, xx : xx + tw] for y, xx in chunk])
        out = model(batch)["out"]
        if total is None:
            total = torch.zeros(out.shape[1], h, w, device=x.device, dtype=out.dtype)
        for (y, xx), logits in zip(chunk, out, strict=True):
            total[:, y : y + th, xx : xx + tw] += logits
            count[:, y : y + th, xx : xx + tw] += 1
    assert total is not None
    return total / count if len(windows) > 1 else total


def _resize(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def iter_predictions(
    model: nn.Module,
    images: ImageLike | Iterable[ImageLike],
    *,
    size: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    progress: bool = False,
) -> Iterator[Prediction]:
    """Predict image by image (see :func:`predict`), yielding each result as its batch finishes."""
    from torchvision import tv_tensors
    from tqdm.auto import tqdm

    from ..data.transforms import pad_stack, preset_from_config

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sources = _expand(images)
    preset = preset_from_config((getattr(model, "config", None) or {}).get("preprocessing"), size=size)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(sources), unit="img", disable=None if progress else True) as bar,
        ):
            for i in range(0, len(sources), batch_size):
                chunk = sources[i : i + batch_size]
                raw = [_to_uint8(src) for _, src in chunk]
                xs = [preset(tv_tensors.Image(r)).to(device) for r in raw]
                if tile:
                    logits = [sliding_window_logits(model, x, tile, overlap, batch_size) for x in xs]
                else:
                    out = model(pad_stack(xs, 0) if len(xs) > 1 else xs[0][None])["out"]
                    logits = [o[:, : x.shape[-2], : x.shape[-1]] for o, x in zip(out, xs, strict=True)]
                for (name, _), r, lg in zip(chunk, raw, logits, strict=True):
                    yield Prediction(name, r, _resize(lg, r.shape[-2:]).argmax(0).cpu())
                bar.update(len(chunk))
    finally:
        model.train(was_training)


def write_prediction(
    pred: Prediction, out_dir: str | os.PathLike[str], labels: Sequence[str] | None = None, alpha: float = 0.5
) -> tuple[Path, Path]:
    """Write ``masks/NAME.png`` (palette PNG, pixel = class index) and ``overlays/NAME.png`` (the
    image blended with the class colours, a legend of the classes present on the right)."""
    from .._viz import overlay, save_image, save_mask

    out_dir = Path(out_dir)
    mask_path = save_mask(pred.mask, out_dir / "masks" / f"{pred.name}.png")
    overlay_path = save_image(
        overlay(pred.image, pred.mask, labels, alpha=alpha), out_dir / "overlays" / f"{pred.name}.png"
    )
    return mask_path, overlay_path


def predict(
    model: nn.Module,
    images: ImageLike | Iterable[ImageLike],
    *,
    size: int | None = None,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    tile: int | None = None,
    overlap: float = 0.25,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> list[Tensor]:
    """Segment images: one H x W mask of class indices (int64) per image, at the image's size.

    ``images`` are paths (a folder means its images), PIL images, 3 x H x W tensors (uint8, or
    float in [0, 1]) or H x W x 3 uint8 arrays, of any size. Each is preprocessed as
    ``model.config["preprocessing"]`` says (shorter side resized to ``resize``, normalised with
    ``mean``/``std``; ImageNet statistics and 520 where the model says nothing; ``size``
    overrides the resize, 0 keeps the image's size), run in batches of ``batch_size`` (padded
    with zeros where sizes differ), and the logits are resized back to the image before the
    argmax. ``tile`` runs sliding windows of that size with ``overlap`` (a fraction) over each
    resized image, averaging logits where windows overlap. With ``out_dir``, also writes a
    palette PNG mask and an overlay per image (see :func:`write_prediction`).
    """
    palette_ok = (getattr(model, "config", None) or {}).get("num_classes", 0) <= 256
    if out_dir is not None and not palette_ok:
        raise ValueError("masks are written as palette PNGs, which hold at most 256 classes")
    labels = class_names(model)
    masks = []
    for pred in iter_predictions(
        model, images, size=size, batch_size=batch_size, device=device, tile=tile, overlap=overlap,
        progress=progress,
    ):  # fmt: skip
        if out_dir is not None:
            write_prediction(pred, out_dir, labels)
        masks.append(pred.mask)
    return masks
