"""evaluate(): checked exactly with a module whose predictions are known in advance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo._viz import save_mask
from segzoo.data import FolderSegmentation, collate, eval_transforms

K = 4
STEP = 40  # the red channel carries the class: red = STEP * class


class Oracle(nn.Module):
    """Reads the class from the red channel and errs (predicts class + 1) where green is set."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.config = {
            "num_classes": K,
            "labels": [f"k{i}" for i in range(K)],
            "preprocessing": {"resize": None, "mean": [0, 0, 0], "std": [1, 1, 1]},
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cls = (x[:, 0] * 255 / STEP).round().long().clamp(0, K - 1)
        pred = torch.where(x[:, 1] > 0.5, (cls + 1) % K, cls)
        return {"out": nn.functional.one_hot(pred, K).permute(0, 3, 1, 2).float() + self.dummy}


def oracle_dataset(root, n=5, error_rate=0.1, seed=0):
    """Images that tell the Oracle their mask, with a planted error rate; and the expected matrix."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(f"k{i}" for i in range(K)) + "\n")
    expected = np.zeros((K, K), dtype=np.int64)
    for i in range(n):
        h, w = 20 + 3 * i, 31 - 2 * i
        mask = rng.integers(0, K, (h, w)).astype(np.uint8)
        wrong = rng.random((h, w)) < error_rate
        mask[rng.random((h, w)) < 0.05] = 255
        cls = np.where(mask == 255, 0, mask)
        img = np.stack([cls * STEP, wrong * 255, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        save_mask(mask, root / "masks" / f"{i}.png")
        valid = mask != 255
        pred = np.where(wrong, (cls + 1) % K, cls)
        np.add.at(expected, (mask[valid].astype(np.int64), pred[valid]), 1)
    return FolderSegmentation(root), expected


@pytest.mark.parametrize("batch_size", [1, 3])
def test_metrics_equal_the_planted_errors(tmp_path, batch_size):
    data, expected = oracle_dataset(tmp_path / "d")
    result = segzoo.evaluate(Oracle(), data, batch_size=batch_size)
    assert result.confusion_matrix.tolist() == expected.tolist()  # padding ignored, nothing lost
    m = result.metrics
    valid = expected.sum()
    assert m.pixels == valid and result.images == 5
    assert m.pixel_accuracy == pytest.approx(np.trace(expected) / valid, abs=1e-12)
    assert 0.85 < m.pixel_accuracy < 0.95  # the planted 10 % error rate
    tp = np.diag(expected)
    iou = tp / (expected.sum(0) + expected.sum(1) - tp)
    assert m.iou == pytest.approx(iou.tolist(), abs=1e-12)
    assert m.miou == pytest.approx(iou.mean(), abs=1e-12)
    assert m.class_names == ["k0", "k1", "k2", "k3"]


def test_a_perfect_model_scores_one_and_the_result_serialises(tmp_path):
    data, expected = oracle_dataset(tmp_path / "d", error_rate=0.0)
    result = segzoo.evaluate(Oracle(), data)
    assert result.metrics.miou == 1.0 and result.metrics.pixel_accuracy == 1.0
    d = json.loads(json.dumps(result.to_dict()))
    assert d["miou"] == 1.0 and d["per_class"]["k2"]["iou"] == 1.0
    assert d["confusion_matrix"] == expected.tolist()
    table = result.table()
    assert "mIoU            100.00" in table and "k3" in table and "left out of the means" not in table


def test_a_loader_and_a_dataset_with_transforms_are_used_as_they_are(tmp_path):
    data, expected = oracle_dataset(tmp_path / "d")
    data.transforms = eval_transforms(None, mean=(0, 0, 0), std=(1, 1, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate)
    for source in (data, loader):
        assert segzoo.evaluate(Oracle(), source).confusion_matrix.tolist() == expected.tolist()


class Constant(nn.Module):
    """Predicts class 0 everywhere; records the input it saw."""

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = config or {}
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, 0] = 1
        return {"out": out, "aux": out}


def test_reference_protocol_resizes_image_and_nearest_mask():
    mask = torch.zeros(30, 45, dtype=torch.long)
    mask[:, 20:] = 1
    mask[5:9, :] = 2
    image = torch.full((3, 30, 45), 128, dtype=torch.uint8)
    data = [(image, mask)]  # any sequence of (image, mask) pairs, no transforms: the model's preset applies
    model = Constant(
        {"num_classes": 3, "preprocessing": {"resize": 12, "mean": [0.5] * 3, "std": [0.25] * 3}}
    )
    result = segzoo.evaluate(model, torch.utils.data.Subset(data, [0]))
    assert model.seen[0].shape == (1, 3, 12, 18)
    assert torch.allclose(model.seen[0], torch.full_like(model.seen[0], (128 / 255 - 0.5) / 0.25), atol=1e-6)
    small = nn.functional.interpolate(mask[None, None].float(), size=(12, 18), mode="nearest")[0, 0]
    assert result.metrics.pixel_accuracy == pytest.approx(float((small == 0).double().mean()), abs=1e-12)
    assert result.class_names == ["class_0", "class_1", "class_2"]
    segzoo.evaluate(model, torch.utils.data.Subset(data, [0]), size=20)
    assert model.seen[-1].shape == (1, 3, 20, 30)  # size overrides the model's resize


def test_defaults_without_config_and_pil_pairs():
    image = Image.fromarray(np.full((26, 39, 3), 200, dtype=np.uint8))
    mask = Image.fromarray(np.ones((26, 39), dtype=np.uint8))
    model = Constant()  # no config: resize 520, ImageNet statistics
    result = segzoo.evaluate(model, torch.utils.data.Subset([(image, mask)], [0]))
    assert model.seen[0].shape == (1, 3, 520, 780)
    expected = (200 / 255 - 0.485) / 0.229
    assert model.seen[0][0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert result.metrics.pixel_accuracy == 0.0 and math.isnan(result.metrics.iou[2])
    assert "class_2       -       -" in result.table() and "left out of the means" in result.table()


def test_class_count_mismatch_and_empty_data_are_clear_errors(tmp_path):
    data, _ = oracle_dataset(tmp_path / "d", n=1)
    model = Constant({"num_classes": 3})
    with pytest.raises(ValueError, match=r"the model predicts 3 classes but the dataset has 4 \(k0, k1"):
        segzoo.evaluate(model, data)
    with pytest.raises(ValueError, match=r"model returns 3 class scores but the data has 4"):
        segzoo.evaluate(Constant(), data)
    with pytest.raises(ValueError, match=r"got no data"):
        segzoo.evaluate(Oracle(), [])
