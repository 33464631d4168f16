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

from .._files import atomic_path
from .._viz import mask_image, overlay
from ..errors import DataError, UsageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Prediction",
    "check_image_size",
    "class_names",
    "iter_predictions",
    "pixel_budget",
    "predict",
    "write_prediction",
]

ImageLike = Any  # a path (file or folder), a PIL image, a 3 x H x W tensor or an H x W x 3 array

# The most pixels one image may have, as read and after the resize (a float32 RGB image of this
# size takes 400 MB, its activations several times that): an 8K UHD frame (7680 x 4320) fits, a
# 1 x 600 strip resized to a shorter side of 520 (520 x 312000) does not.
DEFAULT_MAX_PIXELS = 2**25
MAX_PIXELS_ENV = "SEGZOO_MAX_PIXELS"


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
                    raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
                out += [(p.stem, p) for p in found]
            elif path.is_file():
                out.append((path.stem, path))
            else:
                raise FileNotFoundError(f"image {path} does not exist")
        else:
            out.append((f"image_{k:05d}", item))
    if not out:
        raise UsageError("predict() got no images")
    seen: dict[str, Any] = {}
    for name, src in out:
        if name in seen:
            raise UsageError(f"{seen[name]} and {src} would both be written as {name!r}: rename one of them")
        seen[name] = src
    return out


def pixel_budget(value: int | None = None) -> int:
    """The pixel budget per image: ``value``, else ``$SEGZOO_MAX_PIXELS``, else DEFAULT_MAX_PIXELS."""
    if value is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(env)
        except ValueError:
            raise UsageError(f"{MAX_PIXELS_ENV} must be a whole number of pixels, got {env!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"the pixel budget must be a positive whole number, got {value!r}")
    return value


def resized_size(height: int, width: int, resize: int | None) -> tuple[int, int]:
    """torchvision's ``Resize(resize)``: the shorter side becomes ``resize``, the longer one keeps
    the aspect ratio (truncated); ``resize`` 0 or None keeps the size."""
    if not resize:
        return height, width
    short, long = min(height, width), max(height, width)
    new_long = int(resize * long / short)
    return (resize, new_long) if height <= width else (new_long, resize)


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx"


def check_image_size(what: str, height: int, width: int, resize: int | None, budget: int) -> None:
    """Refuse an image that, as read or after the resize, has more than ``budget`` pixels, with a
    :class:`~segzoo.errors.DataError` that names it, both sizes and what to do instead."""
    rh, rw = resized_size(height, width, resize)
    raise_budget = (
        f"or raise the budget of {_megapixels(budget)} (max_pixels=, --max-pixels or {MAX_PIXELS_ENV}) "
        "and tile (tile=, --tile) to bound the model's memory"
    )
    if height * width > budget:
        raise DataError(
            f"{what} is {height} x {width} pixels ({_megapixels(height * width)}), more than the "
            f"{_megapixels(budget)} segzoo reads per image: downscale the file, {raise_budget}"
        )
    if rh * rw > budget:
        # the largest resize that fits: the first guess from the aspect ratio, then exact steps
        n = math.isqrt(budget * min(height, width) // max(height, width))
        while n > 0 and math.prod(resized_size(height, width, n)) > budget:
            n -= 1
        smaller = f"pass size={n} or less (--size {n}), " if n > 0 else ""
        raise DataError(
            f"{what} is {height} x {width} pixels; resizing its shorter side to {resize} makes it "
            f"{rh} x {rw} ({_megapixels(rh * rw)}, {rh * rw * 12 / 1e9:.1f} GB as a float32 RGB tensor), "
            f"more than the budget of {_megapixels(budget)} per image: {smaller}pass size=0 (--size 0) "
            f"to keep its {height} x {width} pixels, {raise_budget}"
        )


def _peek_size(path: Path) -> tuple[int, int] | None:
    """An image file's height and width from its header, without decoding it (None when the
    header cannot be read: reading the image then says what is wrong)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return height, width


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
        raise UsageError(
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
        raise UsageError(f"need tile >= 1 and 0 <= overlap < 1, got tile={tile}, overlap={overlap}")
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


def _backbone_rule(model: nn.Module) -> dict:
    """The input sizes the backbone takes (timm backbones record it at build time; see
    ``TimmBackbone.input_rule``): ``{}`` for any size."""
    rule = getattr(getattr(model, "backbone", None), "input_rule", None)
    return rule() if callable(rule) else {}


def _fit_to_backbone(model: nn.Module, xs: list[Tensor]) -> list[Tensor]:
    """Resize each image to the one size a fixed-size backbone takes (logits are resized back)."""
    fixed = _backbone_rule(model).get("fixed")
    if not fixed:
        return xs
    return [F.interpolate(x[None], size=tuple(fixed), mode="bilinear", align_corners=False)[0] for x in xs]


def _pad_to_multiple(model: nn.Module, batch: Tensor) -> Tensor:
    """Pad the bottom and right with zeros to the multiple the backbone needs (cropped off after)."""
    m = _backbone_rule(model).get("multiple", 1)
    h, w = batch.shape[-2:]
    return F.pad(batch, (0, -w % m, 0, -h % m)) if m > 1 and (h % m or w % m) else batch


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
    max_pixels: int | None = None,
) -> Iterator[Prediction]:
    """Predict image by image (see :func:`predict`), yielding each result as its batch finishes."""
    from torchvision import tv_tensors
    from tqdm.auto import tqdm

    from ..data.transforms import pad_stack, preset_from_config

    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if tile is not None and tile < 1:
        raise UsageError(f"tile must be at least 1 pixel, got {tile}")
    if size is not None and size < 0:
        raise UsageError(f"size must be 0 (keep the image's size) or more, got {size}")
    budget = pixel_budget(max_pixels)
    sources = _expand(images)
    preprocessing = (getattr(model, "config", None) or {}).get("preprocessing") or {}
    preset = preset_from_config(preprocessing, size=size)
    resize = size if size is not None else preprocessing.get("resize", 520)  # as preset_from_config

    def read(name: str, src: Any) -> Tensor:
        what = f"image {src}" if isinstance(src, Path) else f"image {name}"
        if isinstance(src, Path) and (hw := _peek_size(src)) is not None:
            check_image_size(what, *hw, resize, budget)  # before decoding it
        image = _to_uint8(src)
        check_image_size(what, *image.shape[-2:], resize, budget)
        return image

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
                raw = [read(name, src) for name, src in chunk]
                xs = [preset(tv_tensors.Image(r)).to(device) for r in raw]
                if tile:
                    logits = [sliding_window_logits(model, x, tile, overlap, batch_size) for x in xs]
                else:
                    xs = _fit_to_backbone(model, xs)
                    out = model(_pad_to_multiple(model, pad_stack(xs, 0) if len(xs) > 1 else xs[0][None]))
                    logits = [o[:, : x.shape[-2], : x.shape[-1]] for o, x in zip(out["out"], xs, strict=True)]
                for (name, _), r, lg in zip(chunk, raw, logits, strict=True):
                    yield Prediction(name, r, _resize(lg, r.shape[-2:]).argmax(0).cpu())
                bar.update(len(chunk))
    finally:
        model.train(was_training)


def write_prediction(
    pred: Prediction, out_dir: str | os.PathLike[str], labels: Sequence[str] | None = None, alpha: float = 0.5
) -> tuple[Path, Path]:
    """Write ``masks/NAME.png`` (palette PNG, pixel = class index) and ``overlays/NAME.png`` (the
    image blended with the class colours, a legend of the classes present on the right). The
    colours are the labels' dataset's own (:func:`segzoo.data.palette_for_labels`).

    The two are written as a pair: both pictures are made and saved to temporary files first, and
    only then renamed into place, so a failure leaves neither of them (nor a mask without its
    overlay) behind."""
    from ..data.formats import palette_for_labels

    if not 0 <= alpha <= 1:
        raise UsageError(f"alpha is an opacity in [0, 1], got {alpha}")
    out_dir = Path(out_dir)
    colours = palette_for_labels(labels)
    mask_path = out_dir / "masks" / f"{pred.name}.png"
    overlay_path = out_dir / "overlays" / f"{pred.name}.png"
    mask_picture = mask_image(pred.mask, colours)
    overlay_picture = overlay(pred.image, pred.mask, labels, alpha=alpha, colours=colours)
    # the overlay is renamed into place first: the mask, which marks a finished image, comes last
    with atomic_path(mask_path) as mask_tmp, atomic_path(overlay_path) as overlay_tmp:
        mask_picture.save(mask_tmp, format="PNG")
        overlay_picture.save(overlay_tmp, format="PNG")
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
    max_pixels: int | None = None,
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

    An image with more than ``max_pixels`` pixels as read or after the resize (default
    ``$SEGZOO_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`, 2**25) is refused with a
    :class:`~segzoo.errors.DataError` saying how to proceed, before it is decoded where possible.
    """
    palette_ok = (getattr(model, "config", None) or {}).get("num_classes", 0) <= 256
    if out_dir is not None and not palette_ok:
        raise UsageError("masks are written as palette PNGs, which hold at most 256 classes")
    labels = class_names(model)
    masks = []
    for pred in iter_predictions(
        model, images, size=size, batch_size=batch_size, device=device, tile=tile, overlap=overlap,
        progress=progress, max_pixels=max_pixels,
    ):  # fmt: skip
        if out_dir is not None:
            write_prediction(pred, out_dir, labels)
        masks.append(pred.mask)
    return masks
