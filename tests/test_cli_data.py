"""`segzoo data synth`, `segzoo predict` and `segzoo eval` end to end with a saved small zoo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.cli import main
from segzoo.data import FolderSegmentation, SyntheticSegmentation, VOCSegmentation

from .datagen import write_voc

K = 4


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small zoo model saved with its own preprocessing (resize 64)."""
    torch.manual_seed(0)
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=K)
    model.config["labels"] = ["background", "circle", "square", "triangle"]
    model.config["preprocessing"] = {**model.config["preprocessing"], "resize": 64}
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "small")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "synth"
    assert main(["data", "synth", str(out), "--n", "10", "--seed", "3", "--num-classes", str(K)]) == 0
    return out


def test_data_synth_writes_the_folder_layout_exactly(synth_dir, capsys):
    assert sorted(p.name for p in synth_dir.iterdir()) == ["classes.txt", "images", "masks", "splits"]
    assert (synth_dir / "splits" / "val.txt").read_text().split() == ["00008", "00009"]
    on_disk = FolderSegmentation(synth_dir, "val")
    in_memory = SyntheticSegmentation(10, seed=3, split="val", num_classes=K)
    assert on_disk.classes == in_memory.classes == ["background", "circle", "square", "triangle"]
    for (a, b), (c, d) in zip(on_disk, in_memory, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert Image.open(synth_dir / "masks" / "00000.png").mode == "P"
    rc, out, err = run(capsys, "data", "synth", synth_dir)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [f"segzoo data synth: error: {synth_dir} already exists and is not "
                                        "empty: choose a new folder or remove it"]  # fmt: skip


def test_predict_writes_masks_and_overlays(model_dir, synth_dir, tmp_path, capsys):
    images = synth_dir / "images"
    rc, out, _ = run(
        capsys, "predict", f"local-dir:{model_dir}", images, "--out", tmp_path, "--batch-size", "3"
    )
    assert rc == 0 and "wrote 10 masks" in out
    model = segzoo.create(f"local-dir:{model_dir}")
    expected = segzoo.predict(model, images, batch_size=3)
    for i, name in enumerate(sorted(p.name for p in images.iterdir())):
        src = Image.open(images / name)
        mask = Image.open(tmp_path / "masks" / name)
        assert mask.mode == "P" and mask.size == src.size
        assert np.array_equal(np.asarray(mask), expected[i].numpy())
        assert np.asarray(mask).max() < K
        overlay = Image.open(tmp_path / "overlays" / name)
        assert overlay.height >= src.height and overlay.width > src.width
    rc, _, _ = run(capsys, "predict", f"local-dir:{model_dir}", images / "00001.png", "--out", tmp_path / "t",
                   "--tile", "48", "--overlap", "0.5", "--size", "0")  # fmt: skip
    assert rc == 0
    tiled = segzoo.predict(model, images / "00001.png", tile=48, overlap=0.5, size=0)[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t" / "masks" / "00001.png")), tiled.numpy())


def test_eval_prints_a_table_and_writes_json_and_confusion_png(model_dir, synth_dir, tmp_path, capsys):
    rc, out, _ = run(
        capsys, "eval", f"local-dir:{model_dir}", "--data", synth_dir, "--json", tmp_path / "r.json"
    )
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    model = segzoo.create(f"local-dir:{model_dir}")
    expected = segzoo.evaluate(model, FolderSegmentation(synth_dir, "val"))
    assert result["confusion_matrix"] == expected.confusion_matrix.tolist()
    assert result["miou"] == pytest.approx(expected.metrics.miou, abs=1e-12)
    assert set(result["per_class"]) == {"background", "circle", "square", "triangle"}
    assert result["images"] == 2 and result["split"] == "val"
    assert "mIoU" in out and "triangle" in out
    png = Image.open(tmp_path / "r.confusion.png")
    assert png.width > 4 * 12 and png.height > 4 * 12

    # the generated set in memory gives the very same numbers as its copy on disk
    rc, _, _ = run(capsys, "eval", f"local-dir:{model_dir}", "--format", "synth", "--n", "10", "--seed", "3",
                   "--json", tmp_path / "s.json", "--batch-size", "2")  # fmt: skip
    assert rc == 0
    assert json.loads((tmp_path / "s.json").read_text())["confusion_matrix"] == result["confusion_matrix"]


def test_eval_errors_are_one_line(model_dir, synth_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for sub in ("images", "masks", "splits"):
        (bad / sub).mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.full((20, 20), 9, dtype=np.uint8)).save(bad / "masks" / "a.png")
    (bad / "splits" / "val.txt").write_text("a\n")
    (bad / "classes.txt").write_text("\n".join("abcd") + "\n")
    rc, _, err = run(capsys, "eval", f"local-dir:{model_dir}", "--data", bad)
    last = err.strip().splitlines()[-1]  # after the progress output: the error, on one line
    assert rc == 2 and "Traceback" not in err
    assert last.startswith("segzoo eval: error: ") and "masks/a.png" in last and "[9]" in last
    (bad / "classes.txt").write_text("\n".join("abcdef") + "\n")
    rc, _, err = run(capsys, "eval", f"local-dir:{model_dir}", "--data", bad)
    assert rc == 2 and "the model predicts 4 classes but the dataset has 6" in err
    rc, _, err = run(capsys, "eval", f"local-dir:{model_dir}", "--data", bad, "--split", "train")
    assert rc == 2 and "splits/train.txt does not exist" in err
    rc, _, err = run(capsys, "predict", f"local-dir:{model_dir}", tmp_path / "none.png", "--out", tmp_path)
    assert rc == 2 and "none.png does not exist" in err


def test_eval_on_a_voc_layout(tmp_path, capsys):
    voc = write_voc(tmp_path / "voc", n=4)
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=21)
    model.config["preprocessing"] = {**model.config["preprocessing"], "resize": 48}
    model.save_pretrained(tmp_path / "m")
    rc, out, _ = run(capsys, "eval", f"local-dir:{tmp_path / 'm'}", "--data", tmp_path / "voc", "--format", "voc",
                     "--json", tmp_path / "r.json", "--batch-size", "2")  # fmt: skip
    assert rc == 0 and "aeroplane" in out and "tvmonitor" in out
    rc, _, err = run(capsys, "eval", f"local-dir:{tmp_path / 'm'}", "--format", "synth")
    assert rc == 2 and "the synthetic set has 2 to 6 classes; this model predicts 21" in err
    result = json.loads((tmp_path / "r.json").read_text())
    expected = segzoo.evaluate(
        segzoo.create(f"local-dir:{tmp_path / 'm'}"), VOCSegmentation(voc, "val"), batch_size=2
    )
    assert result["confusion_matrix"] == expected.confusion_matrix.tolist() and result["images"] == 2
