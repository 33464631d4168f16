"""The segzoo command line: list, info, plugins, errors."""

from __future__ import annotations

import json

import pytest

from segzoo.cli import main

from .conftest import installed, plugin
from .test_plugins import Raising


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_shows_models_backbones_heads(capsys):
    rc, out, _ = run(capsys, "list")
    assert rc == 0
    assert "models (" in out and "backbones (" in out and "heads (" in out
    assert "deeplabv3_resnet101" in out and "timm:*" in out and "lraspp" in out


def test_list_filters_and_json(capsys):
    rc, out, _ = run(capsys, "list", "deeplab*", "--models", "--json")
    assert rc == 0
    data = json.loads(out)
    names = [m["name"] for m in data["models"]]
    assert names and all(n.startswith("deeplab") for n in names)
    assert set(data) == {"models"}
    rc, out, _ = run(capsys, "list", "mobilenet", "--backbones")
    assert "mobilenet_v3_large" in out and "resnet50" not in out


def test_info_for_a_model_a_backbone_and_a_head(capsys):
    rc, out, _ = run(capsys, "info", "fcn_resnet50", "--json")
    info = json.loads(out)
    assert rc == 0 and info["kind"] == "model" and info["num_params_with_aux"] == 35322218
    rc, out, _ = run(capsys, "info", "resnet50")
    assert rc == 0 and "kind: backbone" in out and "output_stride" in out
    rc, out, _ = run(capsys, "info", "deeplabv3")
    assert rc == 0 and "kind: head" in out and "atrous_rates" in out


def test_unknown_name_is_one_clear_error(capsys):
    rc, out, err = run(capsys, "info", "deeplab_resnet50")
    assert rc == 2 and out == ""
    assert err.startswith("segzoo info: error: unknown") and "deeplabv3_resnet50" in err
    assert "Traceback" not in err


def test_plugins_lists_builtins_entry_points_and_failures(capsys):
    rc, out, _ = run(capsys, "plugins")
    assert rc == 0
    assert "segzoo.zoo" in out and "built-in" in out
    if installed("segzoo-deeplabv3plus"):
        assert "deeplabv3plus" in out and "segzoo-deeplabv3plus" in out
    with pytest.warns(RuntimeWarning), plugin(Raising(), "raising"):
        rc, out, _ = run(capsys, "plugins", "--strict")
        assert rc == 1
        assert "FAILED: register_models() raised RuntimeError: boom" in out
        rc, out, _ = run(capsys, "plugins", "--json")
        rec = {r["name"]: r for r in json.loads(out)}
        assert rec["raising"]["failed"] and rec["segzoo.zoo"]["registered"]["model"]


def test_info_describes_a_saved_folder(capsys, tmp_path):
    import segzoo

    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=3)
    model.config["labels"] = ["bg", "cat", "dog"]
    folder = model.save_pretrained(tmp_path / "m")
    rc, out, _ = run(capsys, "info", f"local-dir:{folder}", "--json")
    assert rc == 0
    info = json.loads(out)
    assert (
        info["kind"] == "saved model"
        and info["head"] == "lraspp"
        and info["backbone"] == "mobilenet_v3_small"
    )
    assert info["labels"] == ["bg", "cat", "dog"]
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    rc, _, err = run(capsys, "info", f"local-dir:{tmp_path / 'nowhere'}")
    assert rc == 2 and "no segzoo folder" in err
