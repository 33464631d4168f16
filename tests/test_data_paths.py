"""Split files may only name files inside the dataset; a folder dataset without splits/ evaluates whole."""

from __future__ import annotations

import json
import re

import pytest
import torch

import segzoo
from segzoo.cli import main
from segzoo.data import DataError, FolderSegmentation, VOCSegmentation
from segzoo.data.io import check_relative_name

from .datagen import write_folder, write_voc

ESCAPES = ["../../../x", "/etc/passwd", "a/b", "..\\..\\x", "C:x", "."]


@pytest.mark.parametrize("bad", ESCAPES)
def test_voc_split_ids_that_leave_the_dataset_are_refused(tmp_path, bad):
    voc = write_voc(tmp_path, n=4)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    split = voc / "ImageSets/Segmentation/val.txt"
    split.write_text(f"2007_000002\n\n{bad}\n")
    message = rf"split file .*val\.txt, line 3: {re.escape(repr(bad))} is not a file name without folders"
    with pytest.raises(DataError, match=message):
        VOCSegmentation(voc, "val")


def test_folder_split_names_that_leave_the_dataset_are_refused(tmp_path):
    root = write_folder(tmp_path / "d", n=3, splits={"val": [0]})
    (root / "splits" / "val.txt").write_text("s00\n../../d/images/s01\n")
    with pytest.raises(
        DataError, match=r"split file .*splits/val\.txt, line 2: '\.\./\.\./d/images/s01' is not a file"
    ):
        FolderSegmentation(root, "val")


def test_check_relative_name():
    assert check_relative_name("2007_000032", "here") == "2007_000032"
    assert check_relative_name("sub/a.jpg", "here", folders=True) == "sub/a.jpg"
    for bad in ("../a.jpg", "sub/../../a.jpg", "/abs.jpg", "", "a//b.jpg", "a\0b"):
        with pytest.raises(DataError, match=r"^here: "):
            check_relative_name(bad, "here", folders=True)


@pytest.mark.slow
def test_eval_of_a_folder_dataset_without_splits_takes_every_image(tmp_path, capsys):
    root = write_folder(tmp_path / "d", n=3)
    torch.manual_seed(0)
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=4)
    model.config["preprocessing"] = {**model.config["preprocessing"], "resize": 32}
    folder = model.save_pretrained(tmp_path / "m")
    assert main(["eval", f"local-dir:{folder}", "--data", str(root), "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert f"{root} has no splits/ folder: evaluating every image" in err and "(split all, 3 images)" in err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 3 and result["split"] == "all"
    # a split asked for by name must exist
    assert main(["eval", f"local-dir:{folder}", "--data", str(root), "--split", "val"]) == 2
    assert "split file" in capsys.readouterr().err
