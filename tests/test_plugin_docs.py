"""docs/plugins.md is enough to write a plugin: its code runs, uses only the public API, and its
generated backbone table and stated facts match segzoo."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.cli import main

ROOT = Path(__file__).parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
TEXT = GUIDE.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def _module(code: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


def _generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_backbone_features", ROOT / "docs" / "gen_backbone_features.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_backbone_feature_table_is_current():
    gen = _generator()
    assert gen.current(TEXT) == gen.render(), "run: python docs/gen_backbone_features.py"


def test_the_table_shows_that_a_stride_may_be_missing():
    row = next(line for line in TEXT.splitlines() if line.startswith("| `resnet50` | 8 |"))
    assert row.endswith("| 16, 32 |")
    with torch.device("meta"):
        info = segzoo.create("fcn", backbone="resnet50", num_classes=2, output_stride=8).feature_info
    assert info.reductions() == [2, 4, 8, 8, 8]
    with pytest.raises(ValueError, match="no feature at reduction 16"):
        info.resolve("stride16")


def test_code_in_the_guide_uses_only_the_public_api():
    assert len(BLOCKS) >= 4
    for code in BLOCKS:
        assert not re.search(r"segzoo\._|from segzoo import _|segzoo\.(heads|backbones)\b", code), code
        for name in re.findall(r"\bsegzoo\.([A-Za-z_]+)", code):
            assert name in segzoo.__all__ or name == "errors", name


@pytest.mark.slow
def test_every_plugin_in_the_guide_registers_and_builds():
    plugin_blocks = [c for c in BLOCKS[1:] if "@segzoo.hookimpl" in c]
    assert len(plugin_blocks) == 2  # the U-Net head and the RegNet backbone
    x = torch.randn(2, 3, 40, 56)
    for i, code in enumerate(plugin_blocks):
        with segzoo.register_plugin(_module(code, f"guide_plugin_{i}"), f"guide_plugin_{i}") as record:
            assert not record.failed, record.error
            for head in record.registered.get("head", []):
                model = segzoo.create(head, backbone="mobilenet_v3_small", num_classes=3)
                assert model(x)["out"].shape == (2, 3, 40, 56)
                assert len(model.head.in_features) == len(model.feature_info) - 1  # not the stride-2 one
                # every feature of a dilated backbone (three share reduction 8), shapes on meta
                with torch.device("meta"):
                    model = segzoo.create(head, backbone="resnet50", num_classes=3, output_stride=8)
                    assert model(x.to("meta"))["out"].shape == (2, 3, 40, 56)
                assert model.head.in_features == ("layer1", "layer2", "layer3", "layer4")
            for backbone in record.registered.get("backbone", []):
                model = segzoo.create("deeplabv3", backbone=backbone, num_classes=3, aux=True)
                assert model(x)["out"].shape == (2, 3, 40, 56)
                assert model.feature_info.reductions() == [4, 8, 16, 32]
                assert model.head.in_features == ("trunk_output.block4",)
                assert model.feature_info.resolve("low").name == "trunk_output.block2"  # pinned
                with pytest.raises(ValueError, match="output_stride must be 32"):
                    segzoo.create("fcn", backbone=backbone, num_classes=3, output_stride=16)
                with pytest.raises(segzoo.errors.UsageError, match="unexpected keyword"):
                    segzoo.create("fcn", backbone=backbone, num_classes=3, dilation=2)


def test_the_guides_plugin_test_example_runs(monkeypatch):
    unet_code = next(c for c in BLOCKS if 'register("tiny_unet"' in c)
    monkeypatch.setitem(sys.modules, "my_plugin", _module(unet_code, "my_plugin"))
    example = next(c for c in BLOCKS if "import my_plugin" in c).replace('"my_head"', '"tiny_unet"')
    module = _module(example, "guide_test_example")
    tests = [f for n, f in vars(module).items() if n.startswith("test_")]
    assert tests
    for test in tests:
        test()
    assert "tiny_unet" not in segzoo.list_heads()  # the context manager removed it


@pytest.mark.parametrize("stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_the_aspp_rates_in_the_guide_are_segzoos(stride, rates):
    assert segzoo.atrous_rates_for(stride) == rates
    assert f"| {stride} | {rates} |" in TEXT


def test_the_guide_names_every_key_of_plugins_json(capsys):
    assert main(["plugins", "--json"]) == 0
    keys = set(json.loads(capsys.readouterr().out)[0])
    section = TEXT[TEXT.index("`segzoo plugins --json` prints") :]
    section = section[: section.index("With `--strict`")]
    assert keys == set(re.findall(r"`(\w+)`", section)) - {"head", "model"}
