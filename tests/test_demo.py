"""`make demo`, the main job: the whole pipeline offline reaches its target."""

from __future__ import annotations

import json

import pytest

from segzoo.cli import main


@pytest.mark.slow
def test_the_demo_trains_to_its_target_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    assert result["miou"] >= 0.90
    assert f"Validation mIoU {result['miou']:.4f}" in printed
    best = out / "run" / "best"
    assert sorted(p.name for p in best.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert len(list((out / "predictions" / "masks").glob("*.png"))) == 8
    assert len(list((out / "predictions" / "overlays").glob("*.png"))) == 8
    assert (out / "eval.confusion.png").stat().st_size > 0
    # a second run replaces the demo's own folder, never a folder it did not make
    (tmp_path / "mine").mkdir()
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "was not made by the demo" in capsys.readouterr().err
