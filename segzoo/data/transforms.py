"""The torchvision segmentation reference presets on transforms v2, and a padding collate.

Transforms take and return ``(image, mask)`` with ``tv_tensors.Image`` / ``tv_tensors.Mask`` (as
the datasets give them); masks are always resized with nearest neighbour and padded with the
ignore index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["PadIfSmaller", "collate", "eval_transforms", "pad_stack", "train_transforms"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PadIfSmaller(v2.Transform):
    """Pad the bottom and right up to ``size``: images with ``fill``, masks with ``mask_fill``.

    Unlike ``RandomCrop(pad_if_needed=True)`` (which pads both sides), this is the references'
    padding: the image keeps its top-left corner.
    """

    def __init__(self, size: int, fill: float = 0, mask_fill: int = 255) -> None:
        super().__init__()
        self.size, self.fill, self.mask_fill = size, fill, mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = F.get_size(next(x for x in flat_inputs if isinstance(x, torch.Tensor | PIL.Image.Image)))
        return {"padding": [0, 0, max(self.size - w, 0), max(self.size - h, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=fill)


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype(
            {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True
        ),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ]


def train_transforms(
    base_size: int = 520,
    crop_size: int = 480,
    *,
    hflip_prob: float = 0.5,
    scale: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    ignore_index: int = 255,
) -> v2.Compose:
    """torchvision's training preset: resize the shorter side to a random size in
    ``scale x base_size``, flip horizontally, pad (masks with ``ignore_index``) and crop
    ``crop_size`` at random, then scale to [0, 1] and normalise."""
    low, high = int(scale[0] * base_size), int(scale[1] * base_size)
    if not 0 < low <= high:
        raise ValueError(f"scale must be two positive factors, low <= high, got {tuple(scale)}")
    # RandomResize draws from [low, high), which is empty for a fixed scale such as (1.0, 1.0)
    resize = (
        v2.RandomResize(low, high, interpolation=interpolation)
        if low < high
        else v2.Resize(low, interpolation=interpolation)
    )
    tfs: list[v2.Transform] = [resize]
    if hflip_prob > 0:
        tfs.append(v2.RandomHorizontalFlip(hflip_prob))
    tfs += [PadIfSmaller(crop_size, fill=0, mask_fill=ignore_index), v2.RandomCrop(crop_size)]
    return v2.Compose(tfs + _finish(mean, std))


def eval_transforms(
    base_size: int | None = 520,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """torchvision's evaluation preset: resize the shorter side to ``base_size`` (``None`` keeps the
    size), scale to [0, 1] and normalise. It also works on an image alone."""
    tfs: list[v2.Transform] = []
    if base_size:
        tfs.append(v2.Resize(base_size, interpolation=interpolation))
    return v2.Compose(tfs + _finish(mean, std))


def preset_from_config(preprocessing: dict[str, Any] | None, *, size: int | None = None) -> v2.Compose:
    """The evaluation preset a model's ``config["preprocessing"]`` describes (ImageNet mean/std
    and resize 520 where it says nothing); ``size`` overrides the resize."""
    pre = preprocessing or {}
    return eval_transforms(
        size if size is not None else pre.get("resize", 520),
        mean=pre.get("mean", IMAGENET_MEAN),
        std=pre.get("std", IMAGENET_STD),
        interpolation=pre.get("interpolation", "bilinear"),
    )


def pad_stack(tensors: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """Stack tensors of different heights and widths, padding each at the bottom and right."""
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    out = torch.full((len(tensors), *tensors[0].shape[:-2], h, w), fill, dtype=tensors[0].dtype)
    for o, t in zip(out, tensors, strict=True):
        o[..., : t.shape[-2], : t.shape[-1]].copy_(t)
    return out


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]], *, mask_fill: int = 255):
    """A ``DataLoader`` collate_fn: images padded with 0 and masks with ``mask_fill`` (the ignore
    index) to the batch's largest size, as the torchvision references do."""
    images, masks = zip(*batch, strict=True)
    return pad_stack(images, 0), pad_stack(masks, mask_fill)
