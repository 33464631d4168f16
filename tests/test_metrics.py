"""The confusion-matrix metrics against torchmetrics and torchvision's reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from segzoo.metrics import ConfusionMatrix

from .metric_data import random_batch, reduce_worker


def torchvision_reference(pred, target, k):
    """torchvision/references/segmentation/utils.py ConfusionMatrix, line for line."""
    a, b = target.flatten(), pred.flatten()
    keep = (a >= 0) & (a < k)
    inds = k * a[keep].to(torch.int64) + b[keep]
    mat = torch.bincount(inds, minlength=k**2).reshape(k, k)
    h = mat.float()
    acc_global = torch.diag(h).sum() / h.sum()
    acc = torch.diag(h) / h.sum(1)
    iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
    return mat, acc_global, acc, iu


@pytest.mark.parametrize("seed", range(3))
def test_equal_to_torchmetrics_and_the_torchvision_reference(seed):
    k = 6
    pred, target = random_batch(k=k, seed=seed, n=4, h=31, w=29)
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    m = cm.compute()

    assert m.miou == pytest.approx(float(MulticlassJaccardIndex(k, ignore_index=255)(pred, target)), abs=1e-6)
    per_class = MulticlassJaccardIndex(k, ignore_index=255, average=None)(pred, target)
    assert m.iou == pytest.approx(per_class.tolist(), abs=1e-6)
    acc = MulticlassAccuracy(k, ignore_index=255, average="micro")(pred, target)
    assert m.pixel_accuracy == pytest.approx(float(acc), abs=1e-6)
    acc = MulticlassAccuracy(k, ignore_index=255, average="macro")(pred, target)
    assert m.mean_accuracy == pytest.approx(float(acc), abs=1e-6)

    mat, acc_global, acc, iu = torchvision_reference(pred, target, k)
    assert torch.equal(cm.matrix, mat)
    assert m.pixel_accuracy == pytest.approx(float(acc_global), abs=1e-6)
    assert m.accuracy == pytest.approx(acc.tolist(), abs=1e-6)
    assert m.iou == pytest.approx(iu.tolist(), abs=1e-6)
    assert m.miou == pytest.approx(float(iu.mean()), abs=1e-6)
    assert m.pixels == int((target != 255).sum()) and cm.ignored_pixels == int((target == 255).sum())


def test_classes_absent_from_both_are_nan_and_left_out_like_torchmetrics():
    k = 7
    pred, target = random_batch(k=k, absent=(2, 5))
    pred[0, 0, :4] = 6  # class 6: predicted, never in the target
    target[target == 6] = 0
    target[0, 0, :4] = 0
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    m = cm.compute()
    assert math.isnan(m.iou[2]) and math.isnan(m.iou[5]) and math.isnan(m.accuracy[5])
    assert m.iou[6] == 0.0 and m.accuracy[6] == 0.0  # a false alarm scores 0, it is not left out
    present = [v for v in m.iou if not math.isnan(v)]
    assert m.miou == pytest.approx(sum(present) / len(present), abs=1e-12)
    assert m.miou == pytest.approx(float(MulticlassJaccardIndex(k, ignore_index=255)(pred, target)), abs=1e-6)
    acc = MulticlassAccuracy(k, ignore_index=255, average="macro")(pred, target)
    assert m.mean_accuracy == pytest.approx(float(acc), abs=1e-6)
    d = m.to_dict()
    assert d["per_class"]["class_2"] == {"iou": None, "accuracy": None}
    assert d["miou"] == pytest.approx(m.miou)


def test_batches_logits_and_merging_give_the_same_matrix():
    k = 4
    pred, target = random_batch(k=k, n=6)
    whole = ConfusionMatrix(k)
    whole.update(pred, target)
    batched, a, b = ConfusionMatrix(k), ConfusionMatrix(k), ConfusionMatrix(k)
    for i in range(6):
        logits = torch.nn.functional.one_hot(pred[i : i + 1], k).permute(0, 3, 1, 2).float()
        batched.update(logits, target[i : i + 1])  # N x C x H x W logits are arg-maxed
        (a if i < 3 else b).update(pred[i : i + 1], target[i : i + 1])
    assert torch.equal(batched.matrix, whole.matrix)
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    whole.reset()
    assert whole.matrix.sum() == 0


def test_ignore_index_other_than_255_and_none():
    pred = torch.tensor([[0, 1, 2, 1]])
    target = torch.tensor([[0, 0, 2, 1]])
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]] and cm.ignored_pixels == 2
    cm = ConfusionMatrix(3, ignore_index=None)
    cm.update(pred, torch.tensor([[0, 255, 2, 1]]))
    with pytest.raises(ValueError, match=r"1 pixels had a target or prediction outside the 3 classes"):
        cm.compute()


def test_out_of_range_values_are_an_error_not_silently_dropped():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"outside the 3 classes 0\.\.2"):
        cm.compute()
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"outside the 3 classes"):
        cm.compute()
    with pytest.raises(ValueError, match=r"differ in shape"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))


def test_empty_matrix_gives_nan():
    m = ConfusionMatrix(2).compute(["a", "b"])
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy) and m.class_names == ["a", "b"]


def test_all_reduce_sums_over_processes(tmp_path):
    k, world = 4, 2
    # fork: the workers need nothing they would have to import again
    torch.multiprocessing.start_processes(
        reduce_worker,
        args=(world, f"file://{tmp_path / 'rendezvous'}", k, str(tmp_path / "m")),
        nprocs=world,
        start_method="fork",
    )
    pred, target = random_batch(k=k, n=4)
    whole = ConfusionMatrix(k)
    whole.update(pred, target)
    for rank in range(world):
        assert torch.equal(torch.load(tmp_path / f"m.{rank}"), whole.matrix)
    assert torch.equal(ConfusionMatrix(k).all_reduce().matrix, torch.zeros(k, k, dtype=torch.int64))  # no-op
