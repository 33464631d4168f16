"""segzoo.optimize: the fast inference path gives the eager model's outputs (fp32, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import segzoo
from segzoo.cli import main
from segzoo.errors import SegzooError

from .conftest import randomize_bn_stats

SMALL_BACKBONES = ("resnet18", "mobilenet_v3_small", "timm:vit_tiny_patch16_224", "timm:efficientnet_b0")


def rel_err(got, ref) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


def small(head: str, backbone: str | None = None, **kwargs) -> nn.Module:
    for bb in [backbone] if backbone else SMALL_BACKBONES:
        try:
            model = segzoo.create(head=head, backbone=bb, num_classes=3, **kwargs)
        except (SegzooError, ValueError, TypeError, KeyError):
            continue
        torch.manual_seed(0)
        return randomize_bn_stats(model).eval()
    pytest.fail(f"head {head!r} builds on none of {SMALL_BACKBONES}")


@pytest.mark.slow
@pytest.mark.parametrize("head", segzoo.list_heads())
def test_every_head_is_unchanged_by_optimize(head):
    model = small(head, aux=True)
    fast = segzoo.optimize(model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    got = fast(x)
    assert set(got) == set(ref) == {"out", "aux"}
    for k in ref:
        assert got[k].dtype == torch.float32
        assert rel_err(got[k], ref[k]) <= 1e-4, k
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model is left as it was


@pytest.mark.slow
def test_bottleneck_resnet_batchnorm_is_all_folded():
    model = randomize_bn_stats(segzoo.create("fcn", backbone="resnet50", num_classes=3, aux=True)).eval()
    fast = segzoo.optimize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert fast.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["out"]
    assert rel_err(fast(x)["out"], ref) <= 1e-4
    with pytest.raises(ValueError, match="inference only"):
        fast.train()
    assert fast.config == model.config


@pytest.mark.slow
def test_compiled_path_matches_eager():
    model = small("lraspp", "mobilenet_v3_small")
    fast = segzoo.optimize(model, compile=True)
    x = torch.randn(2, 3, 64, 96)  # one size: each new size compiles again (minutes on 2 cores)
    with torch.no_grad():
        ref = model(x)["out"]
    assert rel_err(fast(x)["out"], ref) <= 1e-4


@pytest.mark.slow
def test_cli_predict_fast_writes_the_same_masks(tmp_path):
    model = small("lraspp", "mobilenet_v3_small")
    model.config["preprocessing"] = dict(model.config["preprocessing"], resize=64)
    folder = model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for flag, out in (([], "eager"), (["--fast"], "fast")):
        argv = ["predict", f"local-dir:{folder}", str(tmp_path / "a.png"), "--out", str(tmp_path / out)]
        assert main([*argv, "--device", "cpu", *flag]) == 0
    eager = np.array(Image.open(tmp_path / "eager" / "masks" / "a.png"))
    fast = np.array(Image.open(tmp_path / "fast" / "masks" / "a.png"))
    assert (eager == fast).mean() > 0.999
