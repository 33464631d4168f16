"""Weights: segzoo folders, reload, weight tags from a URL, conversion, safety and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

import segzoo
from segzoo._constants import VOC_LABELS
from segzoo.convert import convert_torchvision
from segzoo.errors import FolderError

from .conftest import plugin, randomize_bn_stats, requires
from .file_server import Files, serve
from .test_torchvision_parity import TV_MODELS, torchvision_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private segzoo and Hugging Face cache for one test."""
    monkeypatch.setenv("SEGZOO_CACHE", str(tmp_path / "segzoo-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "segzoo-cache"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access in an offline test: connect{args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def tiny(num_classes: int = 3, aux: bool = False, seed: int = 0) -> segzoo.SegmentationModel:
    torch.manual_seed(seed)
    model = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=num_classes, aux=aux)
    return randomize_bn_stats(model).eval()


def outputs(model, seed: int = 1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 48, 40))


def assert_same_outputs(a, b):
    oa, ob = outputs(a), outputs(b)
    assert set(oa) == set(ob)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


# -- folders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", segzoo.list_models())
def test_every_recipe_round_trips_through_a_folder(name, tmp_path):
    model = randomize_bn_stats(segzoo.create(name, aux=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # not the init: a loaded model must carry these
    folder = model.save_pretrained(tmp_path / name)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    again = segzoo.create(f"local-dir:{folder}")
    assert list(again.state_dict()) == list(model.state_dict())
    assert_same_outputs(model, again)
    assert not any(t.is_meta for t in again.state_dict().values())


@requires("segzoo-deeplabv3plus")
def test_config_records_everything_needed_to_rebuild(tmp_path):
    model = segzoo.create(
        "deeplabv3plus", backbone="mobilenet_v3_small", num_classes=4, aux=True, atrous_rates=(2, 4, 6)
    )
    cfg = json.loads((model.save_pretrained(tmp_path / "m") / "config.json").read_text())
    assert (
        cfg["format"] == "segzoo"
        and cfg["format_version"] == 1
        and cfg["segzoo_version"] == segzoo.__version__
    )
    assert (
        cfg["backbone"] == "mobilenet_v3_small" and cfg["head"] == "deeplabv3plus" and cfg["recipe"] is None
    )
    assert cfg["head_kwargs"] == {"atrous_rates": [2, 4, 6]}
    assert cfg["num_classes"] == 4 and cfg["aux"] is True and cfg["aux_head"] == "fcn"
    assert cfg["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and cfg["preprocessing"]["resize"] == 520
    assert cfg["ignore_index"] == 255
    assert cfg["providers"]["head"]["distribution"] == "segzoo-deeplabv3plus"
    assert cfg["providers"]["backbone"] == {
        "plugin": "segzoo.backbones.mobilenet",
        "distribution": "segzoo",
        "version": segzoo.__version__,
    }
    again = segzoo.create(f"local-dir:{tmp_path / 'm'}")
    assert again.classifier.aspp.convs[1][0].dilation == (2, 2)


def test_model_card_has_front_matter_usage_labels_and_metrics(tmp_path):
    model = segzoo.create("fcn_resnet50", num_classes=21)
    model.config["weights"] = {
        "tag": "demo",
        "source": "a test",
        "license": "mit",
        "metrics": {"dataset": "synthetic-val", "miou": 91.5, "pixel_acc": 97.25},
    }
    card = (model.save_pretrained(tmp_path / "m") / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "segzoo" and front["pipeline_tag"] == "image-segmentation"
    assert front["license"] == "mit" and front["datasets"] == ["synthetic-val"]
    assert "fcn" in front["tags"] and "resnet50" in front["tags"]
    results = front["model-index"][0]["results"]
    assert {m["value"] for r in results for m in r["metrics"]} == {91.5, 97.25}
    assert 'segzoo.create("local-dir:' in card
    assert "| 15 | person |" in card
    assert "| synthetic-val | 91.5 | 97.25 |" in card


def test_saving_is_atomic(tmp_path, monkeypatch):
    from segzoo import _folder as hub

    model = tiny()
    target = tmp_path / "m"
    monkeypatch.setattr(hub, "render_card", lambda cfg, repo_id=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        model.save_pretrained(target)
    assert os.listdir(tmp_path) == []  # no folder, no temp leftovers
    monkeypatch.undo()
    model.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    monkeypatch.setattr(hub, "render_card", lambda cfg, repo_id=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tiny(seed=5).save_pretrained(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # the old save is intact
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_save_cut_off_between_files_is_detected(tmp_path):
    tiny().save_pretrained(tmp_path / "a")
    tiny(seed=3).save_pretrained(tmp_path / "b")
    # weights of one save next to the config of another: what an interrupted re-save leaves
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(FolderError, match="different saves"):
        segzoo.create(f"local-dir:{tmp_path / 'a'}")


def _resave(folder: Path, mutate) -> None:
    from safetensors.torch import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    mutate(tensors)
    save_file(
        tensors, folder / "model.safetensors", metadata={"format": "pt", "segzoo_save_id": cfg["save_id"]}
    )


def test_bad_folders_get_one_clear_error(tmp_path):
    good = tiny().save_pretrained(tmp_path / "good")
    weights = (good / "model.safetensors").read_bytes()

    def folder(name: str) -> Path:
        f = tmp_path / name
        f.mkdir()
        for p in good.iterdir():
            (f / p.name).write_bytes(p.read_bytes())
        return f

    f = folder("truncated")
    (f / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(FolderError, match="truncated or corrupt"):
        segzoo.create(f"local-dir:{f}")
    f = folder("garbage")
    (f / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(FolderError, match="truncated or corrupt"):
        segzoo.create(f"local-dir:{f}")
    f = folder("missing_tensor")
    _resave(f, lambda t: t.pop("classifier.high_classifier.bias"))
    with pytest.raises(ValueError, match="lacks tensor.*classifier.high_classifier.bias"):
        segzoo.create(f"local-dir:{f}")
    f = folder("wrong_shape")
    _resave(f, lambda t: t.__setitem__("classifier.cbr.0.weight", torch.zeros(3, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"classifier.cbr.0.weight \(3, 3, 1, 1\) vs \(128, 576, 1, 1\)"):
        segzoo.create(f"local-dir:{f}")
    f = folder("extra_tensor")
    _resave(f, lambda t: t.__setitem__("backbone.surprise", torch.zeros(1)))
    with pytest.raises(ValueError, match="does not have: backbone.surprise"):
        segzoo.create(f"local-dir:{f}")
    f = folder("not_json")
    (f / "config.json").write_text("{ not json")
    with pytest.raises(FolderError, match="not valid JSON"):
        segzoo.create(f"local-dir:{f}")
    f = folder("future")
    cfg = json.loads((f / "config.json").read_text())
    (f / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(FolderError, match="format_version 99.*reads version 1"):
        segzoo.create(f"local-dir:{f}")
    f = folder("no_config")
    (f / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        segzoo.create(f"local-dir:{f}")
    with pytest.raises(FileNotFoundError, match="no segzoo folder"):
        segzoo.create(f"local-dir:{tmp_path / 'nowhere'}")


def test_a_missing_plugin_is_named_with_its_distribution(tmp_path):
    folder = tiny().save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["head"] = "unet_plus_plus"
    cfg["providers"]["head"] = {"plugin": "unetpp", "distribution": "segzoo-unetpp", "version": "1.2.0"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        segzoo.errors.PluginError,
        match=r"head 'unet_plus_plus' from 'segzoo-unetpp'.*not installed: pip install 'segzoo-unetpp>=1.2.0'",
    ):
        segzoo.create(f"local-dir:{folder}")


def test_num_classes_mismatch_is_an_error_unless_asked_to_reinitialise(tmp_path):
    model = tiny(num_classes=3)
    folder = model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="ignore_mismatched=True"):
        segzoo.create(f"local-dir:{folder}", num_classes=5)
    with pytest.warns(UserWarning, match=r"re-initialised 4 tensor\(s\).*low_classifier.weight"):
        again = segzoo.create(f"local-dir:{folder}", num_classes=5, ignore_mismatched=True)
    assert again.num_classes == 5 and again.labels is None
    assert outputs(again)["out"].shape == (2, 5, 48, 40)
    for k, v in model.state_dict().items():
        if "_classifier." not in k:
            assert torch.equal(again.state_dict()[k], v), k


def test_aux_head_can_be_dropped_or_added_on_load(tmp_path):
    with_aux = tiny(aux=True)
    folder = with_aux.save_pretrained(tmp_path / "aux")
    without = segzoo.create(f"local-dir:{folder}", aux=False)
    assert without.aux_classifier is None
    assert torch.equal(outputs(without)["out"], outputs(with_aux)["out"])
    folder = tiny().save_pretrained(tmp_path / "noaux")
    added = segzoo.create(f"local-dir:{folder}", aux=True)
    assert added.aux_classifier is not None and torch.isfinite(outputs(added)["aux"]).all()


# -- torchvision conversion ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TV_MODELS))
def test_convert_torchvision_checkpoints(name, tmp_path):
    tv = torchvision_model(name, aux=TV_MODELS[name])
    pth = tmp_path / f"{name}.pth"
    torch.save(tv.state_dict(), pth)
    folder = convert_torchvision(name, pth, tmp_path / "out")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["recipe"] == name and cfg["aux"] == TV_MODELS[name] and cfg["num_classes"] == 21
    assert cfg["weights"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    ours = segzoo.create(f"local-dir:{folder}").eval()
    x = torch.randn(1, 3, 57, 63)
    with torch.no_grad():
        got, want = ours(x), tv(x)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_convert_cli_and_references_training_checkpoints(tmp_path, capsys):
    from segzoo.cli import main

    tv = torchvision_model("lraspp_mobilenet_v3_large", num_classes=4)
    pth = tmp_path / "checkpoint.pth"
    torch.save({"model": tv.state_dict(), "epoch": 3}, pth)  # the torchvision references' format
    assert main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(pth), str(tmp_path / "out")]) == 0
    assert "local-dir:" in capsys.readouterr().out
    ours = segzoo.create(f"local-dir:{tmp_path / 'out'}")
    assert ours.num_classes == 4 and ours.labels is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x)["out"], tv(x)["out"])
    rc = main(["convert", "torchvision", "fcn_resnet50", str(pth), str(tmp_path / "bad")])
    assert rc == 2 and "none of the classifier tensors of fcn_resnet50" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this would create a file


def malicious_checkpoint(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {"model": {"weight": torch.zeros(1)}, "payload": _Payload(str(marker))}, buf, pickle_protocol=2
    )
    return buf.getvalue()


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, cache):
    from segzoo.errors import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    pth = tmp_path / "evil.pth"
    pth.write_bytes(malicious_checkpoint(marker))
    with pytest.raises(UnsafeCheckpointError, match="never unpickles arbitrary code"):
        convert_torchvision("fcn_resnet50", pth, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the same file served as a weight tag's checkpoint
    files = Files({"/evil.pth": pth.read_bytes()})
    with (
        serve(files) as base,
        plugin(TagPlugin(base + "/evil.pth", None), "tags"),
        pytest.raises(UnsafeCheckpointError),
    ):
        segzoo.create("tagged", pretrained=True)
    assert not marker.exists()
    assert not (cache / "weights").exists() or not any((cache / "weights").iterdir())


# -- weight tags from a checkpoint URL ----------------------------------------------------------


class TagPlugin:
    """A torchvision-layout recipe whose weight tag points at a local URL."""

    def __init__(self, url: str, sha256: str | None, num_classes: int = 21) -> None:
        self.url, self.sha256, self.num_classes = url, sha256, num_classes

    @segzoo.hookimpl
    def register_models(self, register):
        register(
            "tagged",
            backbone="mobilenet_v3_large",
            head="lraspp",
            backbone_kwargs={"output_stride": 16},
            weights={
                "local": {
                    "url": self.url,
                    "sha256": self.sha256,
                    "num_classes": self.num_classes,
                    "labels": VOC_LABELS if self.num_classes == 21 else None,
                    "metrics": {"dataset": "test-set", "miou": 12.5, "pixel_acc": 50.0},
                    "license": "bsd-3-clause",
                    "source": "a local test server",
                }
            },
        )


@pytest.fixture
def tv_checkpoint(tmp_path):
    tv = torchvision_model("lraspp_mobilenet_v3_large")
    buf = io.BytesIO()
    torch.save(tv.state_dict(), buf)
    return tv, buf.getvalue()


def test_pretrained_tag_downloads_checks_converts_once_and_then_works_offline(
    cache, tv_checkpoint, monkeypatch
):
    tv, data = tv_checkpoint
    files = Files({"/lraspp-abc.pth": data})
    sha = hashlib.sha256(data).hexdigest()[:8]  # a prefix, as torchvision publishes
    with serve(files) as base, plugin(TagPlugin(base + "/lraspp-abc.pth", sha), "tags"):
        assert "tagged.local" in segzoo.list_models(pretrained=True)
        model = segzoo.create("tagged", pretrained=True)
        assert model.labels[15] == "person" and model.config["weights"]["metrics"]["miou"] == 12.5
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(model.eval()(x)["out"], tv(x)["out"])
        folder = cache / "weights" / "tagged.local"
        assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
        assert "| test-set | 12.5 | 50.0 |" in (folder / "README.md").read_text()
        assert os.listdir(cache / "downloads") == []  # the .pth is not kept, no partial files
        assert len(files.requests) == 1
        segzoo.create("tagged.local", pretrained=True)
        assert len(files.requests) == 1  # converted once, then from the cache
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

        def refuse(self, *args, **kwargs):
            raise AssertionError("network access while offline")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        offline = segzoo.create("tagged", pretrained=True)
        with torch.no_grad():
            assert torch.equal(offline.eval()(x)["out"], tv(x)["out"])


def test_a_sha256_mismatch_keeps_nothing(cache, tv_checkpoint):
    _, data = tv_checkpoint
    files = Files({"/w.pth": data})
    with (
        serve(files) as base,
        plugin(TagPlugin(base + "/w.pth", "deadbeef"), "tags"),
        pytest.raises(OSError, match="sha256 mismatch.*expected deadbeef"),
    ):
        segzoo.create("tagged", pretrained=True)
    assert os.listdir(cache / "downloads") == []
    assert not (cache / "weights" / "tagged.local").exists()


def test_an_interrupted_download_is_retried_cleanly(cache, tv_checkpoint):
    tv, data = tv_checkpoint
    files = Files({"/w.pth": data}, cut_short=1)
    with serve(files) as base, plugin(TagPlugin(base + "/w.pth", hashlib.sha256(data).hexdigest()), "tags"):
        model = segzoo.create("tagged", pretrained=True)
    assert len(files.requests) == 2
    assert os.listdir(cache / "downloads") == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["out"], tv(x)["out"])


def test_a_download_that_keeps_failing_is_one_error(cache, tv_checkpoint, monkeypatch):
    from segzoo import _weights

    monkeypatch.setattr(_weights.time, "sleep", lambda s: None)
    _, data = tv_checkpoint
    files = Files({"/w.pth": data}, cut_short=10)
    with serve(files) as base, plugin(TagPlugin(base + "/w.pth", None), "tags"):
        with pytest.raises(OSError, match="failed after 3 attempts.*IncompleteRead"):
            segzoo.create("tagged", pretrained=True)
        with pytest.raises(OSError, match="HTTP 404"):
            _weights.download(base + "/missing.pth", cache / "downloads" / "x.pth")
    assert len(files.requests) == 4  # three attempts, then one for the 404 (not retried)
    assert os.listdir(cache / "downloads") == []


def test_offline_without_cache_is_a_clear_error(cache, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with (
        plugin(TagPlugin("http://127.0.0.1:9/w.pth", None), "tags"),
        pytest.raises(FileNotFoundError, match="not in the cache.*HF_HUB_OFFLINE"),
    ):
        segzoo.create("tagged", pretrained=True)


def test_a_tag_describes_the_model_even_without_its_weights(cache):
    model = segzoo.create("deeplabv3_mobilenet_v3_large.tv_coco_voc")  # no download: random init
    assert model.aux_classifier is not None and model.labels[15] == "person"
    assert "weights" not in model.config
    assert segzoo.create("deeplabv3_mobilenet_v3_large").aux_classifier is None
    assert not (cache / "weights").exists()
    with pytest.raises(segzoo.errors.UnknownNameError, match=r"unknown weight tag 'fcn_resnet50.coco'"):
        segzoo.create("fcn_resnet50.coco")


def test_pretrained_errors(cache):
    with pytest.raises(segzoo.errors.UsageError, match="has no pretrained weights"):
        segzoo.create("fcn", backbone="resnet18", num_classes=2, pretrained=True)
    with pytest.raises(
        segzoo.errors.UnknownNameError,
        match=r"unknown weight tag 'fcn_resnet50.coco'.*fcn_resnet50.tv_coco_voc",
    ):
        segzoo.create("fcn_resnet50.coco", pretrained=True)
    with pytest.raises(segzoo.errors.UsageError, match="drop pretrained_backbone"):
        segzoo.create("fcn_resnet50", pretrained=True, pretrained_backbone=True)


def test_pretrained_with_other_num_classes(cache, tv_checkpoint):
    _, data = tv_checkpoint
    with serve(Files({"/w.pth": data})) as base, plugin(TagPlugin(base + "/w.pth", None), "tags"):
        with pytest.raises(ValueError, match="ignore_mismatched"):
            segzoo.create("tagged", pretrained=True, num_classes=4)
        with pytest.warns(UserWarning, match="re-initialised"):
            model = segzoo.create("tagged", pretrained=True, num_classes=4, ignore_mismatched=True)
    assert model.num_classes == 4 and model.labels is None
    assert outputs(model)["out"].shape[1] == 4


def test_pretrained_backbone_loads_torchvision_imagenet_weights(tmp_path, monkeypatch, no_network):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    ref = torchvision.models.resnet18()
    ckpt = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    ckpt.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), ckpt)  # a seeded torch hub cache: no download happens
    model = segzoo.create("fcn", backbone="resnet18", num_classes=2, pretrained_backbone=True)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert "pretrained" not in model.config["backbone_kwargs"]


def test_pretrained_backbone_reaches_timm(monkeypatch):
    import timm

    seen = {}
    real = timm.create_model

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", spy)
    segzoo.create("fcn", backbone="timm:resnet18", num_classes=2, pretrained_backbone=True)
    assert seen["pretrained"] is True and seen["features_only"] is True
