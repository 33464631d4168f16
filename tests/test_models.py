"""Every registered recipe, every head on small backbones of each kind, and every backbone under
two heads: build, forward, backward.

Parametrized over the live registry, so a new recipe, head or backbone (a plugin's too) is tested
without touching this file. A head builder may declare ``required_strides``, the feature
reductions it needs from a backbone; backbones without them (a plain ViT has one stride) are
skipped for it.
"""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo._plugins import registry

# A family backbone ("prefix:*") serves many names; these stand in for it.
FAMILY_EXAMPLES = {
    "timm:*": ["timm:resnet18", "timm:convnext_atto"],
    "timm-vit:*": ["timm-vit:vit_tiny_patch16_224"],  # segzoo-smp-heads
}


def backbones() -> list[str]:
    out = []
    for name in segzoo.list_backbones():
        if name.endswith(":*"):
            assert name in FAMILY_EXAMPLES, (
                f"add example names for the backbone family {name} to FAMILY_EXAMPLES"
            )
            out += FAMILY_EXAMPLES[name]
        else:
            out.append(name)
    return out


def check_model(model: segzoo.SegmentationModel, num_classes: int, size=(64, 64)) -> None:
    x = torch.randn(2, 3, *size)
    model.train()
    out = model(x)
    expected_keys = {"out", "aux"} if model.aux_classifier is not None else {"out"}
    assert set(out) == expected_keys
    for v in out.values():
        assert v.shape == (2, num_classes, *size)
        assert torch.isfinite(v).all()
    loss = sum(v.square().mean() for v in out.values())
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size[0] + 3, size[1] - 5))  # odd size, batch of one
    assert out["out"].shape == (1, num_classes, size[0] + 3, size[1] - 5)


@pytest.mark.parametrize("name", segzoo.list_models())
def test_every_recipe_builds_runs_and_trains(name):
    info = segzoo.model_info(name)
    model = segzoo.create(name)
    assert model.num_classes == info["num_classes"]
    assert sum(p.numel() for p in model.parameters()) == info["num_params"]
    check_model(model, info["num_classes"])


# One small backbone of each layout heads meet: a torchvision ResNet (strides 2..32), a dilated
# MobileNet (strides repeat), a timm ConvNeXt (no stride 2) and, where present, a plain ViT.
SMALL_BACKBONES = ["resnet18", "mobilenet_v3_small", "timm:convnext_atto"]
SMALL_BACKBONES += [b for b in backbones() if b.startswith("timm-vit:")]


def check_head_on(head: str, backbone: str) -> None:
    needs = set(getattr(registry().get("head", head).obj, "required_strides", ()))
    with torch.device("meta"):
        info = segzoo.create("fcn", backbone=backbone, num_classes=1).feature_info
    if not needs <= set(info.reductions()):
        pytest.skip(f"{head} declares required_strides {sorted(needs)}; {backbone} has {info.reductions()}")
    model = segzoo.create(head, backbone=backbone, num_classes=3, aux=True)
    assert model.config["head"] == head and model.config["backbone"] == backbone
    check_model(model, 3)


@pytest.mark.parametrize("backbone", SMALL_BACKBONES)
@pytest.mark.parametrize("head", segzoo.list_heads())
def test_every_head_on_small_backbones(head, backbone):
    check_head_on(head, backbone)


@pytest.mark.parametrize("backbone", backbones())
@pytest.mark.parametrize("head", ["fcn", "deeplabv3"])
def test_every_backbone(head, backbone):
    check_head_on(head, backbone)
