"""Export to ONNX, torch.export (pt2) and AOTInductor, checked against eager; the C++ example."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import segzoo
from segzoo.errors import ExportError, SegzooError, UsageError
from segzoo.export import SizeConstraint, export_program, load_exported, read_metadata

from .conftest import randomize_bn_stats

# Small backbones to try, in order, for a head: the first it builds on is used (a head that needs
# a ViT or special features finds it further down the list). ResNet-18 first: its graph has the
# fewest nodes, and export time grows with nodes, not parameters.
SMALL_BACKBONES = ("resnet18", "mobilenet_v3_small", "timm:vit_tiny_patch16_224", "timm:efficientnet_b0")
TOLERANCE = 1e-4


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def small_model(head: str, backbones: tuple[str, ...] = SMALL_BACKBONES, **kwargs) -> nn.Module:
    errors = []
    for backbone in backbones:
        torch.manual_seed(0)
        try:
            model = segzoo.create(head=head, backbone=backbone, num_classes=3, **kwargs)
        except (SegzooError, ValueError, TypeError, KeyError) as err:
            errors.append(f"{backbone}: {err}")
            continue
        torch.manual_seed(0)
        return randomize_bn_stats(model).eval()
    pytest.fail(f"head {head!r} builds on none of {SMALL_BACKBONES}: {errors}")


def check_sizes(size: SizeConstraint) -> list[tuple[int, int, int]]:
    """(batch, H, W): batch 1 at the smallest allowed size, batch 2 at a larger, non-square one,
    neither the size the model was traced at."""
    if size.static is not None:
        return [(1, *size.static), (2, *size.static)]
    m = size.multiple
    a = -(-size.min // m) * m
    return [(1, a, a + 2 * m), (2, a + 3 * m, a + 5 * m)]


def assert_matches_eager(model: nn.Module, path: Path) -> None:
    exported = load_exported(path)
    for b, h, w in check_sizes(exported.size):
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            ref = model(x)
        got = exported(x)
        assert list(got) == exported.outputs
        for name, tensor in got.items():
            assert tensor.shape == ref[name].shape, (name, b, h, w)
            err = rel_err(tensor, ref[name])
            assert err <= TOLERANCE, f"{path.name} {name} at {b}x{h}x{w}: relative error {err:.2e}"


# -- every registered head ---------------------------------------------------------------------


def documented_sizes() -> dict[str, tuple[int, int]]:
    """docs/deploy.md's table of size constraints: head -> (multiple, minimum)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    rows = re.findall(r"^\| `(\w+)`[^|]*\| [^|]+ \| (\d+) \| (\d+) \|", text, flags=re.M)
    return {head: (int(m), int(lo)) for head, m, lo in rows}


@pytest.mark.slow
@pytest.mark.parametrize("head", segzoo.list_heads())
def test_every_head_exports_to_pt2_and_onnx_with_dynamic_sizes(head, tmp_path):
    model = small_model(head)
    pt2 = segzoo.export(model, tmp_path / "m.pt2", "pt2")
    size = read_metadata(pt2)["size"]
    assert size["static"] is None
    documented = documented_sizes().get(head)
    assert documented == (size["multiple"], size["min"]), f"docs/deploy.md's size table says {documented}"
    assert_matches_eager(model, pt2)
    # the constraint found for pt2 is reused: ONNX export traces the same program
    onnx_path = segzoo.export(model, tmp_path / "m.onnx", "onnx", multiple=size["multiple"])
    assert read_metadata(onnx_path)["size"] == size
    assert_matches_eager(model, onnx_path)


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lraspp():
    return small_model("lraspp", aux=True)


@pytest.mark.slow
def test_pt2_carries_its_metadata_and_has_normal_permissions(lraspp, tmp_path):
    lraspp.config["labels"] = ["background", "cat", "dog"]
    path = segzoo.export(lraspp, tmp_path / "out" / "model.pt2", "pt2")
    meta = read_metadata(path)
    assert meta["format"] == "pt2" and meta["outputs"] == ["out"] and meta["num_classes"] == 3
    assert meta["labels"] == ["background", "cat", "dog"]
    assert meta["preprocessing"]["resize"] == 520 and len(meta["preprocessing"]["mean"]) == 3
    # no constraint but the minimum: LR-ASPP interpolates to sizes it reads from its input
    deepest = max(lraspp.feature_info.reductions())  # 32 on resnet18
    assert meta["size"] == {"multiple": 1, "min": 2 * deepest, "max": None, "static": None}
    extra = {"segzoo.json": ""}
    torch.export.load(path, extra_files=extra)
    assert json.loads(extra["segzoo.json"]) == meta
    umask = os.umask(0)
    os.umask(umask)
    for p in (path, Path(f"{path}.json")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert sorted(os.listdir(path.parent)) == ["model.pt2", "model.pt2.json"]  # no temp files left
    assert_matches_eager(lraspp, path)


@pytest.mark.slow
def test_keep_aux_returns_out_then_aux(lraspp, tmp_path):
    path = segzoo.export(lraspp, tmp_path / "m.pt2", "pt2", keep_aux=True)
    assert read_metadata(path)["outputs"] == ["out", "aux"]
    assert_matches_eager(lraspp, path)


@pytest.mark.slow
def test_static_export_takes_one_size(lraspp, tmp_path):
    path = segzoo.export(lraspp, tmp_path / "m.pt2", "pt2", static=(64, 96))
    meta = read_metadata(path)
    assert meta["size"]["static"] == [64, 96]
    assert_matches_eager(lraspp, path)
    with pytest.raises(Exception, match="64"):  # torch's input check of the exported program
        load_exported(path)(torch.randn(1, 3, 96, 96))


class _UpsampleAddHead(nn.Module):
    """A decoder step as U-Net-like heads have it: the deep feature upsampled x2 is added to the
    stride-8 one, which only fits when H and W are multiples of 16."""

    def __init__(self, low: segzoo.Feature, high: segzoo.Feature) -> None:
        super().__init__()
        self.in_features = (low.name, high.name)
        self.high = nn.Conv2d(high.channels, 3, 1)
        self.low = nn.Conv2d(low.channels, 3, 1)

    def forward(self, low, high):
        return self.low(low) + F.interpolate(self.high(high), scale_factor=2.0, mode="nearest")


@pytest.mark.slow
def test_the_least_size_constraint_is_found(tmp_path):
    base = segzoo.create(head="lraspp", backbone="mobilenet_v3_small", num_classes=3)
    info = base.backbone.feature_info
    head = _UpsampleAddHead(info.resolve("low"), info.resolve("out"))
    model = segzoo.SegmentationModel(base.backbone, head, config=dict(base.config)).eval()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 72, 72))  # 72 = 8 * 9: the two features do not fit
    _, size = export_program(model)
    assert size.multiple == 16 and size.min == 32
    path = segzoo.export(model, tmp_path / "m.pt2", "pt2", multiple=16)
    assert_matches_eager(model, path)
    with pytest.raises(ExportError, match="multiples of 8"):
        segzoo.export(model, tmp_path / "bad.pt2", "pt2", multiple=8)
    assert sorted(os.listdir(tmp_path)) == ["m.pt2", "m.pt2.json"]


class _CeilModePool(nn.Module):
    """Ceil-mode pooling between strided convolutions, as in legacy SE-ResNets and VoVNets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, 2, 1), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(4, 3, 3, 2, 1)
        )

    def forward(self, x):
        return {"out": F.interpolate(self.net(x), size=x.shape[-2:], mode="bilinear")}


def test_a_model_the_shape_solver_asserts_on_exports_at_multiples():
    """At any size torch's solver raises an AssertionError on ceil-mode pooling; the export
    goes on to multiples of the stride instead of failing (timm:legacy_seresnet18 did)."""
    model = _CeilModePool().eval()
    ep, size = export_program(model)
    assert size.static is None and size.multiple > 1
    x = torch.rand(1, 3, size.min + size.multiple, size.min)
    torch.testing.assert_close(ep.module()(x), model(x)["out"])


def test_bad_requests_are_clear_errors(lraspp, tmp_path):
    with pytest.raises(UsageError, match="unknown export format 'tflite'"):
        segzoo.export(lraspp, tmp_path / "m", "tflite")
    with pytest.raises(UsageError, match="static must be two positive sizes"):
        segzoo.export(lraspp, tmp_path / "m.pt2", "pt2", static=(0, 64))
    no_aux = small_model("fcn")
    with pytest.raises(UsageError, match="no auxiliary head"):
        segzoo.export(no_aux, tmp_path / "m.pt2", "pt2", keep_aux=True)
    with pytest.raises(UsageError, match="is a folder"):
        segzoo.export(lraspp, tmp_path, "pt2")
    with pytest.raises(ExportError, match="m.pt2.json is missing"):
        read_metadata(tmp_path / "m.pt2")
    assert os.listdir(tmp_path) == []


def test_missing_onnx_names_the_extra(lraspp, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    with pytest.raises(ExportError, match=r"onnxscript.*segzoo\[export\]"):
        segzoo.export(lraspp, tmp_path / "m.onnx", "onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_failed_write_leaves_nothing_behind(lraspp, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sys.modules["segzoo.export"], "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        segzoo.export(lraspp, tmp_path / "m.pt2", "pt2")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_export_a_saved_model(lraspp, tmp_path, capsys):
    from segzoo.cli import main

    folder = lraspp.save_pretrained(tmp_path / "model")
    out = tmp_path / "exported" / "m.pt2"
    assert main(["export", f"local-dir:{folder}", "--format", "pt2", "--out", str(out), "--keep-aux"]) == 0
    assert (
        f"multiples of 1 and at least {2 * max(lraspp.feature_info.reductions())}" in capsys.readouterr().out
    )
    assert read_metadata(out)["outputs"] == ["out", "aux"]
    assert main(["export", f"local-dir:{folder}", "--format", "pt2", "--out", str(tmp_path / "x.pt2"),
                 "--static", "0", "5"]) == 2  # fmt: skip
    assert "static must be two positive sizes" in capsys.readouterr().err


# -- AOTInductor and the C++ program -----------------------------------------------------------


@pytest.fixture(scope="module")
def aoti_model(tmp_path_factory):
    """A small saved model (shorter side resized to 64) and its AOTInductor package."""
    root = tmp_path_factory.mktemp("aoti")
    model = small_model("lraspp", ("mobilenet_v3_small",))
    model.config["preprocessing"] = dict(model.config["preprocessing"], resize=64)
    with torch.no_grad():  # centre each class's logit, so that every class wins somewhere in a mask
        probe = torch.randn(4, 3, 64, 96, generator=torch.Generator().manual_seed(1))
        model.classifier.low_classifier.bias -= model(probe)["out"].mean((0, 2, 3))
    folder = model.save_pretrained(root / "model")
    package = segzoo.export(model, root / "model.pt2", "aoti")
    return model, folder, package


@pytest.mark.slow
def test_aoti_package_matches_eager(aoti_model):
    model, _, package = aoti_model
    meta = read_metadata(package)
    assert meta["format"] == "aoti" and meta["preprocessing"]["resize"] == 64
    from torch._inductor.package import load_package

    assert json.loads(load_package(str(package)).get_metadata()["segzoo"]) == meta
    assert_matches_eager(model, package)


def _ties(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=0).values
    return (top2[0] - top2[1]) <= 1e-4 * top2[0].abs().clamp_min(1)


@pytest.mark.slow
def test_cpp_example_segments_as_segzoo_predict_does(aoti_model, tmp_path):
    from PIL import Image
    from torchvision import tv_tensors

    from segzoo.data.transforms import preset_from_config

    model, folder, package = aoti_model
    source = Path(__file__).resolve().parents[1] / "examples" / "cpp"
    build = tmp_path / "cpp"  # a fresh copy of the example, as a clone would have it
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("segment"))
    subprocess.run(["make", "-C", str(build), f"PYTHON={sys.executable}"], check=True, capture_output=True,
                   timeout=900)  # fmt: skip
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(80, 120), (97, 71)]):
        pixels = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)
        img_path = tmp_path / f"img{k}.png"
        img.save(img_path)
        run = subprocess.run([str(build / "segment"), str(package), str(img_path), str(tmp_path / f"cpp{k}.png"),
                              str(tmp_path / f"overlay{k}.png")], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        cpp = np.array(Image.open(tmp_path / f"cpp{k}.png"))
        assert Image.open(tmp_path / f"overlay{k}.png").size == (w, h)

        pred = tmp_path / "pred"
        subprocess.run([sys.executable, "-m", "segzoo", "predict", f"local-dir:{folder}", str(img_path),
                        "--out", str(pred), "--device", "cpu"], check=True, capture_output=True)  # fmt: skip
        ref = np.array(Image.open(pred / "masks" / f"img{k}.png"))
        assert cpp.shape == ref.shape == (h, w)
        assert len(np.unique(ref)) == 3, "a mask of one class would not show a mix-up of classes"
        # where they differ, the two best classes must be tied in segzoo's own logits
        x = preset_from_config(model.config["preprocessing"])(
            tv_tensors.Image(np.array(img).transpose(2, 0, 1))
        )
        with torch.no_grad():
            logits = model(x[None])["out"]
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]
        differ = torch.from_numpy(cpp != ref)
        assert not (differ & ~_ties(logits)).any(), f"{int(differ.sum())} pixels differ without a tie"
