"""COCO instances as semantic masks: the references' rules, the cat/dog subset, bad input."""

from __future__ import annotations

import json
import stat
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.cli import main
from segzoo.data import (
    COCO_VOC_CATEGORIES,
    VOC_CLASSES,
    COCOSegmentation,
    DataError,
    FolderSegmentation,
    open_dataset,
    write_coco_subset,
)
from segzoo.errors import UsageError

from .realdata import COCO_CATEGORIES, coco_scene, write_coco, write_coco_json, write_images

pytest.importorskip("pycocotools")


def expected_masks(ann_file, category_ids: list[int]) -> dict[int, np.ndarray]:
    """Masks built independently: pycocotools' own COCO API decodes every annotation, then the
    references' rules (keep the categories, number them 1..K, overlaps 255)."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    out = {}
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        masks, cats = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
            if ann["category_id"] not in category_ids:
                continue
            seg = ann["segmentation"]
            if isinstance(seg, list):  # segzoo's rule: a polygon of under 3 points has no area
                ann = dict(ann, segmentation=[p for p in seg if len(p) >= 6])
                if not ann["segmentation"]:
                    continue
            masks.append(coco.annToMask(ann).astype(np.int64))
            cats.append(category_ids.index(ann["category_id"]) + 1)
        if masks:
            stack = np.stack(masks)
            target = (stack * np.array(cats)[:, None, None]).max(0)
            target[stack.sum(0) > 1] = 255
        else:
            target = np.zeros((info["height"], info["width"]), dtype=np.int64)
        out[img_id] = target
    return out


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco") / "coco")


def test_default_categories_are_the_references_voc_twenty(coco_root):
    ds = COCOSegmentation(coco_root, split="val")
    assert ds.classes == list(VOC_CLASSES) and ds.category_ids == list(COCO_VOC_CATEGORIES)
    assert [COCO_CATEGORIES[c] for c in ds.category_ids][:3] == ["airplane", "bicycle", "bird"]
    expected = expected_masks(coco_root / "annotations" / "instances_val2017.json", list(COCO_VOC_CATEGORIES))
    assert ds.ids == sorted(expected)  # val keeps every image, also the one without annotations
    for i, img_id in enumerate(ds.ids):
        image, mask = ds[i]
        assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
        assert torch.equal(mask, torch.from_numpy(expected[img_id]))
    masks = {img_id: ds[i][1] for i, img_id in enumerate(ds.ids)}
    cat, dog, person, bus = 8, 12, 15, 6  # VOC indices
    assert set(masks[200].unique().tolist()) == {0, cat, dog, 255}  # the truck is not kept
    assert masks[200][30, 35] == 255 and masks[200][10, 10] == cat  # cat and dog overlap
    assert set(masks[201].unique().tolist()) == {0, person, bus, 255}  # crowd + person overlap: 255
    assert masks[201][10, 50] == person  # the crowd region alone is labelled, as in the references
    assert masks[202].unique().tolist() == [0]
    assert masks[204][0, 63] == dog  # the polygon partly outside is clipped
    assert (masks[205] == 255).sum() > 0  # two dogs overlapping: the references mark it 255 too


def test_cat_dog_subset_by_names_or_ids_and_the_training_filter(coco_root):
    val = COCOSegmentation(coco_root, categories=["cat", "dog"], split="val")
    assert val.classes == ["background", "cat", "dog"] and val.num_classes == 3
    by_id = COCOSegmentation(coco_root, categories=[17, "18"], split="val")
    assert by_id.category_ids == val.category_ids == [17, 18]
    expected = expected_masks(coco_root / "annotations" / "instances_val2017.json", [17, 18])
    for i, img_id in enumerate(val.ids):
        assert torch.equal(val[i][1], torch.from_numpy(expected[img_id]))
    assert val[1][1].unique().tolist() == [0]  # people and a bus only: background here
    other_ignore = COCOSegmentation(coco_root, categories=["cat", "dog"], ignore_index=99)
    assert torch.equal(other_ignore[0][1], val[0][1].masked_fill(val[0][1] == 255, 99))
    with pytest.raises(DataError, match=r"has no category 99 \("):
        COCOSegmentation(coco_root, categories=["cat", 99])
    with pytest.raises(DataError, match=r"category 'cat' is chosen twice"):
        COCOSegmentation(coco_root, categories=[17, "cat"])
    # training drops images whose kept annotations cover <= 1000 px (the references' rule)
    train = COCOSegmentation(coco_root, categories=["cat", "dog"], split="train")
    assert train.ids == [100, 104, 105]  # not: people only, no annotations, the small cat
    everything = COCOSegmentation(coco_root, categories=["cat", "dog"], split="train", min_area=0)
    assert everything.ids == [100, 103, 104, 105]
    # the explicit form: the images folder and an annotation file
    explicit = COCOSegmentation(coco_root / "val2017", coco_root / "annotations" / "instances_val2017.json")
    assert explicit.ids == list(range(200, 206))
    # open_dataset detects the layout; a model's labels choose the categories
    ds = open_dataset(coco_root, split="val", labels=["background", "dog", "cat"])
    assert ds.classes == ["background", "dog", "cat"] and ds.category_ids == [18, 17]
    assert open_dataset(coco_root, split="val", labels=list(VOC_CLASSES)).classes == list(VOC_CLASSES)


def test_coco_subset_command_writes_the_folder_layout(coco_root, tmp_path, capsys):
    out = tmp_path / "catdog"
    ann = coco_root / "annotations" / "instances_train2017.json"
    rc = main(["data", "coco-subset", str(ann), str(coco_root / "train2017"), str(out), "--categories", "cat,dog",
               "--val-fraction", "0.34"])  # fmt: skip
    assert rc == 0
    assert "wrote 3 images of cat, dog" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "images", "masks", "splits"]
    assert (out / "classes.txt").read_text() == "background\ncat\ndog\n"
    train, val = ((out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val"))
    assert len(val) == 1 and sorted(train + val) == [f"{i:012d}" for i in (100, 104, 105)]
    for name in train + val:
        assert (out / "images" / f"{name}.jpg").read_bytes() == (
            coco_root / "train2017" / f"{name}.jpg"
        ).read_bytes()
        assert Image.open(out / "masks" / f"{name}.png").mode == "P"
    expected = expected_masks(ann, [17, 18])
    folder = FolderSegmentation(out)
    for (image_path, _), (_, mask) in zip(folder.samples, folder, strict=True):
        assert torch.equal(mask, torch.from_numpy(expected[int(image_path.stem)]))
    umask = _umask()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out / "classes.txt").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["catdog"]  # no temporary folder left


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- bad input: one DataError naming the file and the entry, nothing written -------------------


def _bad_case(tmp_path, edit):
    images, anns = coco_scene(300)
    edit(images, anns)
    # only the well-named images exist (a bad name is never written, even by the test)
    write_images(tmp_path / "imgs", [i for i in images if i["file_name"].removesuffix(".jpg").isdigit()])
    return write_coco_json(tmp_path / "ann.json", images, anns)


BAD = {
    "missing image": (
        lambda im, an: im[1].update(file_name="missing.jpg"),
        r"ann\.json: image 'missing\.jpg' \(id 301\) is missing: expected .*imgs/missing\.jpg",
    ),
    "image id not in images": (
        lambda im, an: an[0].update(image_id=999),
        r"ann\.json, annotations\[0\] \(id 3000\) points at image_id 999, which is not in 'images'",
    ),
    "polygon outside the image": (
        lambda im, an: an[1].update(segmentation=[[100, 100, 120, 100, 120, 130]]),
        r"ann\.json, annotations\[1\] \(id 3001\): its polygons lie outside the 64x48 image",
    ),
    "file name escaping the images": (
        lambda im, an: im[0].update(file_name="../../etc/passwd"),
        r"ann\.json, images\[0\] \(file_name\): '\.\./\.\./etc/passwd' is not a relative path inside",
    ),
    "absolute file name": (
        lambda im, an: im[0].update(file_name="/etc/passwd"),
        r"images\[0\] \(file_name\): '/etc/passwd' is not a relative path",
    ),
    "RLE of another size": (
        lambda im, an: an[5]["segmentation"].update(size=[10, 10]),
        r"annotations\[5\]: the RLE's size \[10, 10\] is not the image's \[height, width\] \[48, 64\]",
    ),
    "segmentation of a wrong type": (
        lambda im, an: an[0].update(segmentation="cat"),
        r"annotations\[0\]: 'segmentation' must be polygons \(a list\) or an RLE",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_annotations_are_one_clear_error_and_nothing_is_written(tmp_path, case):
    edit, message = BAD[case]
    ann = _bad_case(tmp_path, edit)
    with pytest.raises(DataError, match=message):
        COCOSegmentation(tmp_path / "imgs", ann, ["cat", "dog", "person", "bus"])
    with pytest.raises(DataError, match=message):
        write_coco_subset(ann, tmp_path / "imgs", tmp_path / "out", ["cat", "dog", "person", "bus"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "imgs"]


def test_malformed_files_and_unknown_categories(tmp_path, coco_root, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match=r"broken\.json is not a valid JSON file"):
        COCOSegmentation(coco_root / "val2017", bad)
    bad.write_text('{"images": {}, "annotations": [], "categories": []}')
    with pytest.raises(DataError, match=r"broken\.json: 'images' must be a list"):
        COCOSegmentation(coco_root / "val2017", bad)
    with pytest.raises(DataError, match=r"instances_val2017\.json has no category 'cta' \(close: cat, car"):
        COCOSegmentation(coco_root, categories=["cta", "dog"])
    ann = coco_root / "annotations" / "instances_train2017.json"
    out = tmp_path / "out"
    rc = main(
        ["data", "coco-subset", str(ann), str(coco_root / "train2017"), str(out), "--categories", "dgo"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "has no category 'dgo' (close: dog" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    # an image whose size differs from its annotation, found while writing: nothing half-written
    Image.new("RGB", (10, 10)).save(tmp_path / "small.jpg")
    images, anns = coco_scene(400)
    write_images(tmp_path / "imgs", images)
    Image.new("RGB", (10, 10)).save(tmp_path / "imgs" / images[5]["file_name"])
    ann2 = write_coco_json(tmp_path / "a2.json", images, anns)
    with pytest.raises(
        DataError, match=r"000000000405\.jpg is 10x10 but .*a2\.json says 64x48 \(image id 405\)"
    ):
        write_coco_subset(ann2, tmp_path / "imgs", out, ["dog"])
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_missing_pycocotools_names_the_extra(coco_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(UsageError, match=r"needs pycocotools.*pip install 'segzoo\[coco\]'"):
        COCOSegmentation(coco_root)


def test_annotation_file_json_is_what_the_scene_says(coco_root):
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)
    assert any(isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
               for a in data["annotations"])  # fmt: skip


def test_eval_and_train_take_the_format_and_categories():
    from segzoo.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "m", "--data", "coco", "--format", "coco", "--categories", "cat, dog"])
    assert args.format == "coco" and args.categories == "cat, dog" and args.split is None
    args = parser.parse_args(["train", "m", "--data", "coco", "--format", "coco", "--categories", "17,18"])
    assert args.format == "coco" and args.categories == "17,18"
    for fmt in ("cityscapes", "ade20k"):
        assert parser.parse_args(["eval", "m", "--data", "x", "--format", fmt]).format == fmt
