"""Cityscapes and ADE20K label rules; COCO, Cityscapes and ADE20K read, evaluated with `segzoo eval`
and trained from their on-disk layouts; each dataset's colours in predict overlays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.data import (
    ADE20K_CLASSES,
    ADE20K_COLOURS,
    CITYSCAPES_CLASSES,
    CITYSCAPES_COLOURS,
    ADE20KSegmentation,
    CityscapesSegmentation,
    DataError,
    detect_format,
    open_dataset,
    palette_for_labels,
)
from segzoo.engine.train import train

from .realdata import CITYSCAPES_TRAIN_LABEL_IDS, write_ade20k, write_cityscapes, write_coco


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    pytest.importorskip("pycocotools")
    base = tmp_path_factory.mktemp("real")
    return {
        "coco": write_coco(base / "coco"),
        "cityscapes": write_cityscapes(base / "cityscapes"),
        "ade20k": write_ade20k(base / "ade"),
    }


def test_cityscapes_maps_label_ids_to_the_19_train_ids(trees):
    root = trees["cityscapes"]
    assert detect_format(root) == "cityscapes"
    train, val = CityscapesSegmentation(root, "train"), open_dataset(root, split="val")
    assert len(train) == 4 and len(val) == 2 and val.classes == list(CITYSCAPES_CLASSES)
    assert [p[0].name for p in val.samples] == [
        "frankfurt_000000_000019_leftImg8bit.png",
        "frankfurt_000001_000019_leftImg8bit.png",
    ]
    table = {label_id: k for k, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS)}
    for (_, mask_path), (image, mask) in zip(val.samples, val, strict=True):
        ids = np.array(Image.open(mask_path))
        expected = np.vectorize(lambda i: table.get(int(i), 255))(ids)
        assert image.shape == (3, 48, 64) and torch.equal(mask, torch.from_numpy(expected).long())
        assert 255 in mask.unique().tolist()
    assert CITYSCAPES_COLOURS[0] == (128, 64, 128) and CITYSCAPES_CLASSES[18] == "bicycle"


def test_ade20k_reduces_labels(trees):
    root = trees["ade20k"]
    assert detect_format(root) == "ade20k" and detect_format(root / "ADEChallengeData2016") == "ade20k"
    for split in ("val", "validation"):
        ds = ADE20KSegmentation(root, split)
        assert len(ds) == 3 and ds.num_classes == 150 and ds.classes[:3] == ["wall", "building", "sky"]
    assert len(open_dataset(root, split="train")) == 3
    for (_, mask_path), (_, mask) in zip(ds.samples, ds, strict=True):
        raw = np.array(Image.open(mask_path)).astype(np.int64)
        assert torch.equal(mask, torch.from_numpy(np.where(raw == 0, 255, raw - 1)))
    assert len(ADE20K_CLASSES) == len(ADE20K_COLOURS) == 150 and ADE20K_CLASSES[-1] == "flag"
    with pytest.raises(DataError, match=r"splits train \(training\) and val \(validation\), not 'test'"):
        ADE20KSegmentation(root, "test")


def test_label_values_outside_the_tables_are_refused(tmp_path):
    root = write_cityscapes(tmp_path / "cs")
    bad = root / "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png"
    ids = np.array(Image.open(bad))
    ids[3, 5] = 40
    Image.fromarray(ids, mode="L").save(bad)
    ds = CityscapesSegmentation(root, "val")
    with pytest.raises(DataError, match=r"frankfurt_000001_000019_gtFine_labelIds\.png: label ids \[40\] are not in "
                       r"the Cityscapes table \(ids 0\.\.33\)"):  # fmt: skip
        ds[1]
    (root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(
        DataError, match=r"frankfurt_000000_000019_leftImg8bit\.png has no label file: expected "
    ):
        CityscapesSegmentation(root, "val")
    ade = write_ade20k(tmp_path / "ade") / "ADEChallengeData2016"
    bad = ade / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.full((48, 64), 151, dtype=np.uint8), mode="L").save(bad)
    with pytest.raises(
        DataError, match=r"ADE_val_00000002\.png: label values \[151\] are outside .* 0\.\.150"
    ):
        ADE20KSegmentation(ade, "val")[1]


def _tiny_model(folder, labels: list[str]):
    torch.manual_seed(0)
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=len(labels))
    model.config["labels"] = list(labels)
    model.config["preprocessing"] = {**model.config["preprocessing"], "resize": 48}
    return model.save_pretrained(folder)


LABELS = {
    "coco": ["background", "cat", "dog"],
    "cityscapes": list(CITYSCAPES_CLASSES),
    "ade20k": list(ADE20K_CLASSES),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(LABELS))
def test_eval_and_train_from_the_real_layout(trees, fmt, tmp_path, capsys):
    root = trees[fmt]
    model = _tiny_model(tmp_path / "model", LABELS[fmt])
    out = tmp_path / "metrics.json"
    rc = main(["eval", f"local-dir:{model}", "--data", str(root), "--format", fmt, "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(out.read_text())
    assert result["class_names"] == LABELS[fmt] and result["split"] == "val"
    assert result["images"] == {"coco": 6, "cityscapes": 2, "ade20k": 3}[fmt]
    assert (
        0 <= result["pixel_accuracy"] <= 1
        and result["pixels"] > 0
        and f"on {root} (split val" in captured.err
    )
    result = train(model="lraspp", backbone="mobilenet_v3_small", data=str(root), format=fmt,
                   categories="cat,dog" if fmt == "coco" else None, max_steps=2, batch_size=2, base_size=48,
                   crop_size=32, workers=0, eval_every=0, progress=False, tensorboard=False, output=str(tmp_path / "run"))  # fmt: skip
    assert result.steps == 2
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["labels"] == LABELS[fmt]


def test_predict_overlays_use_the_datasets_colours(tmp_path, capsys):
    picture = tmp_path / "in" / "street.png"
    picture.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(picture)
    for name, labels, colours in (
        ("cs", list(CITYSCAPES_CLASSES), CITYSCAPES_COLOURS),
        ("ade", list(ADE20K_CLASSES), ADE20K_COLOURS),
        ("catdog", ["background", "cat", "dog"], [(0, 0, 0), (128, 0, 0), (0, 128, 0)]),  # VOC's colour map
    ):
        model = _tiny_model(tmp_path / name, labels)
        assert (
            main(["predict", f"local-dir:{model}", str(picture.parent), "--out", str(tmp_path / f"p_{name}")])
            == 0
        )
        mask = Image.open(tmp_path / f"p_{name}" / "masks" / "street.png")
        pal = np.array(mask.getpalette()[: 3 * len(colours)]).reshape(-1, 3)
        assert pal.tolist() == [list(c) for c in colours]
        classes = np.array(mask)
        overlay = np.array(Image.open(tmp_path / f"p_{name}" / "overlays" / "street.png"))[:40, :56]
        image = np.array(Image.open(picture)).astype(np.float32)
        expected = (image * 0.5 + palette_for_labels(labels)[classes].astype(np.float32) * 0.5 + 0.5).astype(
            np.uint8
        )
        assert np.array_equal(overlay, expected)
    capsys.readouterr()


def test_the_trainer_knows_every_dataset_format():
    from segzoo.data.formats import FORMATS
    from segzoo.engine.train import DATA_FORMATS

    assert set(DATA_FORMATS) == {*FORMATS, "synth"}
