"""Evaluation with torchvision's reference protocol: resize, forward, argmax of ``out``, confusion matrix.

torchvision is imported only when an evaluation runs, so ``import segzoo`` stays light.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, UsageError
from ..metrics import ConfusionMatrix, SegmentationMetrics
from .predict import check_image_size, pixel_budget
from .predict import class_names as model_class_names

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    """Metrics, the confusion matrix (rows: target, columns: prediction) and how long it took."""

    metrics: SegmentationMetrics
    confusion_matrix: Tensor
    images: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return self.metrics.class_names

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics.to_dict(),
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "class_names": self.class_names,
            "confusion_matrix": self.confusion_matrix.tolist(),
            **self.extra,
        }

    def table(self) -> str:
        """mIoU, accuracies and per-class IoU as plain text."""
        m = self.metrics

        def pct(x: float) -> str:
            return "-" if math.isnan(x) else f"{100 * x:.2f}"

        width = max(len(n) for n in [*self.class_names, "CLASS"])
        lines = [
            f"mIoU            {pct(m.miou)}",
            f"pixel accuracy  {pct(m.pixel_accuracy)}",
            f"mean accuracy   {pct(m.mean_accuracy)}",
            f"images          {self.images} ({m.pixels} labelled pixels, {self.seconds:.1f} s)",
            "",
            f"{'CLASS'.ljust(width)}  {'IoU':>6}  {'ACC':>6}",
            f"{'-' * width}  {'-' * 6}  {'-' * 6}",
        ]
        for name, iou, acc in zip(self.class_names, m.iou, m.accuracy, strict=True):
            lines.append(f"{name.ljust(width)}  {pct(iou):>6}  {pct(acc):>6}")
        if any(math.isnan(x) for x in m.iou):
            lines.append(
                "(-: the class is in neither the targets nor the predictions; left out of the means)"
            )
        return "\n".join(lines)


class _Preprocessed(Dataset):
    """A dataset whose raw (image, mask) samples go through an evaluation preset; with ``limit``
    (the preset's resize and a pixel budget), an image too large for the budget is refused."""

    def __init__(
        self, dataset: Dataset, transforms: Any, limit: tuple[int | None, int] | None = None
    ) -> None:
        self.dataset, self.transforms, self.limit = dataset, transforms, limit

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        from torchvision import tv_tensors

        image, mask = self.dataset[index]
        if not isinstance(image, tv_tensors.TVTensor):  # e.g. PIL pairs from torchvision's datasets
            image = tv_tensors.Image(image if isinstance(image, Tensor) else _pil_to_tensor(image))
        if not isinstance(mask, tv_tensors.Mask):
            mask = tv_tensors.Mask(torch.as_tensor(mask if isinstance(mask, Tensor) else _array(mask)).long())
        if self.limit is not None:
            describe = getattr(self.dataset, "describe", None)
            what = describe(index) if callable(describe) else f"sample {index} of the dataset"
            check_image_size(what, *image.shape[-2:], *self.limit)
        return self.transforms(image, mask)


def _array(x: Any) -> Any:
    import numpy as np

    return np.array(x)


def _pil_to_tensor(image: Any) -> Tensor:
    return torch.as_tensor(_array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def evaluate(
    model: nn.Module,
    data: Dataset | Iterable[tuple[Tensor, Tensor]],
    *,
    batch_size: int = 1,
    size: int | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    ignore_index: int | None = None,
    progress: bool = False,
    max_pixels: int | None = None,
) -> EvalResult:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU of ``model`` on ``data``.

    ``data`` is a dataset of ``(image, mask)`` samples or an iterable of ``(images, masks)``
    batches (a ``DataLoader``). A dataset without its own ``transforms`` gets the model's
    evaluation preprocessing (torchvision's reference protocol: shorter side resized to
    ``config["preprocessing"]["resize"]``, or ``size``; normalised), and is batched with
    :func:`segzoo.data.collate` (``batch_size`` 1 is the reference's; larger batches are padded,
    the padding ignored by the metric). Batches of a loader are used as they are. The prediction
    is the argmax of ``model(x)["out"]``, compared at the resized resolution. With the model's
    preprocessing, an image with more than ``max_pixels`` pixels as read or resized is refused
    (see :func:`segzoo.predict`).
    """
    from tqdm.auto import tqdm

    from ..data.transforms import collate, preset_from_config

    config = getattr(model, "config", None) or {}
    if ignore_index is None:
        ignore_index = getattr(data, "ignore_index", config.get("ignore_index", 255))
    data_classes = getattr(data, "classes", None)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        if getattr(data, "transforms", None) is None:
            if size is not None and size < 0:
                raise UsageError(f"size must be 0 (keep the image's size) or more, got {size}")
            pre = config.get("preprocessing") or {}
            resize = size if size is not None else pre.get("resize", 520)  # as preset_from_config
            data = _Preprocessed(data, preset_from_config(pre, size=size), (resize, pixel_budget(max_pixels)))
        loader: Iterable = DataLoader(
            data,  # type: ignore[arg-type]
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=functools.partial(collate, mask_fill=255 if ignore_index is None else ignore_index),
        )
    else:
        loader = data
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n_model = config.get("num_classes")
    names = list(data_classes) if data_classes else model_class_names(model)
    if n_model and names and len(names) != n_model:
        raise UsageError(
            f"the model predicts {n_model} classes but the dataset has {len(names)} "
            f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}): evaluate a model trained on it"
        )

    cm: ConfusionMatrix | None = None
    images, last_shown = 0, time.perf_counter()
    start = last_shown
    was_training = model.training
    model.eval()
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    try:
        with (
            torch.inference_mode(),
            tqdm(total=total, unit="batch", disable=None if progress else True) as bar,
        ):
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                out = model(x)["out"]
                if cm is None:
                    cm = ConfusionMatrix(out.shape[1], ignore_index=ignore_index, device=out.device)
                    if names is not None and len(names) != cm.num_classes:
                        raise UsageError(
                            f"the model returns {cm.num_classes} class scores but the data has "
                            f"{len(names)} classes"
                        )
                cm.update(out.argmax(1), y)
                images += x.shape[0]
                bar.update(1)
                if progress and time.perf_counter() - last_shown > 1.0:  # one sync a second at most
                    bar.set_postfix(mIoU=f"{cm.compute().miou:.4f}")
                    last_shown = time.perf_counter()
    finally:
        model.train(was_training)
    if cm is None:
        raise DataError("evaluate() got no data: the dataset or loader is empty")
    cm.all_reduce()
    names = names or [f"class_{i}" for i in range(cm.num_classes)]
    return EvalResult(cm.compute(names), cm.matrix.cpu(), images, time.perf_counter() - start)
