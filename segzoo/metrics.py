"""Segmentation metrics from a confusion matrix accumulated on the model's device."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import DataError, UsageError

__all__ = ["ConfusionMatrix", "SegmentationMetrics"]


@dataclass
class SegmentationMetrics:
    """What a confusion matrix says; per-class lists are indexed by class.

    ``iou[c]`` is ``TP / (TP + FP + FN)`` and ``accuracy[c]`` is ``TP / (TP + FN)`` (recall; 0 for a
    class predicted but absent from the target). A class absent from both the predictions and
    the targets has no meaningful score: it is reported as NaN and left out of ``miou`` and
    ``mean_accuracy`` (torchvision's references would turn the whole mean into NaN; torchmetrics
    leaves such classes out of its macro average, as here).
    """

    miou: float
    pixel_accuracy: float
    mean_accuracy: float
    iou: list[float]
    accuracy: list[float]
    pixels: int
    class_names: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None; per-class scores keyed by class name."""

        def f(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "miou": f(self.miou),
            "pixel_accuracy": f(self.pixel_accuracy),
            "mean_accuracy": f(self.mean_accuracy),
            "pixels": self.pixels,
            "per_class": {
                name: {"iou": f(i), "accuracy": f(a)}
                for name, i, a in zip(self.class_names, self.iou, self.accuracy, strict=True)
            },
        }


class ConfusionMatrix:
    """A ``num_classes x num_classes`` count of (target, prediction) pixel pairs; rows are targets.

    ``update`` runs on the tensors' device with elementwise ops and one ``bincount``, without
    boolean indexing or ``.item()`` (on CUDA, ``bincount`` itself reads its input's maximum).
    Target pixels equal to ``ignore_index`` are skipped; any other target or prediction outside
    ``0..num_classes-1`` is counted apart and makes :meth:`compute` raise, since it means the
    data or the model disagree with ``num_classes``.
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255, device: Any = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # n*n cells, then one bin for ignored pixels and one for invalid ones
        self._counts = torch.zeros(num_classes * num_classes + 2, dtype=torch.int64, device=device)

    @property
    def matrix(self) -> Tensor:
        """The counts, rows = target class, columns = predicted class."""
        n = self.num_classes
        return self._counts[: n * n].view(n, n)

    @property
    def device(self) -> torch.device:
        return self._counts.device

    def reset(self) -> None:
        self._counts.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` as class indices (N x H x W) or logits (N x C x H x W), and
        ``target`` class indices (N x H x W)."""
        if prediction.ndim == target.ndim + 1:
            prediction = prediction.argmax(1)
        if prediction.shape != target.shape:
            raise UsageError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
            )
        if self._counts.device != target.device:
            self._counts = self._counts.to(target.device)
        n = self.num_classes
        t = target.reshape(-1).long()
        p = prediction.reshape(-1).to(t.device).long()
        valid = (t >= 0) & (t < n) & (p >= 0) & (p < n)
        other = n * n + 1  # the bin of invalid pixels; ignored ones go to n * n
        if self.ignore_index is not None:
            ignored = t == self.ignore_index
            if 0 <= self.ignore_index < n:
                valid &= ~ignored
            other = other - ignored.long()
        # a fixed-size index per pixel (no boolean indexing): no host-device round trip here
        index = torch.where(valid, t * n + p, other)
        self._counts += torch.bincount(index, minlength=n * n + 2)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts into this one (for per-worker or per-shard matrices)."""
        if other.num_classes != self.num_classes:
            raise UsageError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self._counts += other._counts.to(self._counts.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all processes when ``torch.distributed`` is initialised (each
        process must call this once, after its last update); a no-op otherwise."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM)
        return self

    @property
    def ignored_pixels(self) -> int:
        return int(self._counts[-2])

    def compute(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        """mIoU, pixel accuracy, mean class accuracy and per-class scores (see
        :class:`SegmentationMetrics` for the NaN rule)."""
        invalid = int(self._counts[-1])
        if invalid:
            raise DataError(
                f"{invalid} pixels had a target or prediction outside the {self.num_classes} classes "
                f"0..{self.num_classes - 1} (other than ignore_index {self.ignore_index}): the data and "
                "the model disagree on the number of classes"
            )
        h = self.matrix.double()
        tp = h.diag()
        support = h.sum(1)  # TP + FN
        predicted = h.sum(0)  # TP + FP
        union = support + predicted - tp
        nan = torch.tensor(math.nan, dtype=h.dtype, device=h.device)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(support > 0, tp / support.clamp(min=1), torch.where(union > 0, 0.0, nan))
        total = h.sum()
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(h.shape[0])]
        if len(names) != self.num_classes:
            raise UsageError(f"{len(names)} class names for {self.num_classes} classes")
        return SegmentationMetrics(
            miou=_nanmean(iou),
            pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
            mean_accuracy=_nanmean(acc),
            iou=iou.tolist(),
            accuracy=acc.tolist(),
            pixels=int(total),
            class_names=names,
        )


def _nanmean(x: Tensor) -> float:
    keep = ~torch.isnan(x)
    return float(x[keep].mean()) if keep.any() else math.nan
