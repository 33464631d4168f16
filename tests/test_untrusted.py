"""A model folder is untrusted input: config.json and weights are validated before anything is
built, error messages never turn config text into a command, and saving never destroys a folder
that is not segzoo's."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import segzoo
from segzoo.errors import ConfigError, PluginError, UsageError, WeightsError

from .conftest import randomize_bn_stats, requires, run_python
from .file_server import Files, serve


def tiny(seed: int = 0, **kw) -> segzoo.SegmentationModel:
    torch.manual_seed(seed)
    kw.setdefault("num_classes", 3)
    return randomize_bn_stats(segzoo.create("lraspp", backbone="mobilenet_v3_small", **kw)).eval()


def outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 48, 40))["out"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return tiny().save_pretrained(tmp_path_factory.mktemp("saved") / "m")


def with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of the folder ``src`` whose config.json has ``changes`` (a value of ... deletes)."""
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- builder arguments from a folder ------------------------------------------------------------


def test_timm_loading_arguments_in_a_folder_are_refused_before_anything_is_read(saved, tmp_path, monkeypatch):
    """checkpoint_path would open a local file, pretrained + pretrained_cfg_overlay a URL, even with
    HF_HUB_OFFLINE=1: none of them may come from config.json."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = Files(content={"/w.pth": b"not weights"})
    secret = tmp_path / "secret.pth"
    torch.save({"x": torch.zeros(1)}, secret)
    with serve(files) as base:
        cases = {
            "checkpoint_path": {"checkpoint_path": str(secret)},
            "pretrained": {"pretrained": True, "pretrained_cfg_overlay": {"url": base + "/w.pth"}},
            "pretrained_cfg_overlay": {"pretrained_cfg_overlay": {"url": base + "/w.pth"}},
            "cache_dir": {"cache_dir": str(tmp_path)},
        }
        for i, (bad, kwargs) in enumerate(cases.items()):
            f = with_config(saved, tmp_path / f"f{i}", backbone="timm:resnet18", backbone_kwargs=kwargs)
            with pytest.raises(ConfigError, match=rf"backbone_kwargs sets '{bad}'.*may not set it"):
                segzoo.create(f"local-dir:{f}")
    assert files.requests == []


def test_builder_arguments_must_be_declared_by_the_builder(saved, tmp_path):
    f = with_config(saved, tmp_path / "a", head_kwargs={"inter_channels": 64, "surprise": 1})
    with pytest.raises(ConfigError, match=r"head_kwargs passes \['surprise'\].*'lraspp' does not take"):
        segzoo.create(f"local-dir:{f}")
    f = with_config(saved, tmp_path / "b", backbone_kwargs={"os": 8})
    with pytest.raises(ConfigError, match=r"backbone_kwargs passes \['os'\]"):
        segzoo.create(f"local-dir:{f}")


def test_a_builder_refusing_a_value_is_one_usage_error(saved, tmp_path):
    f = with_config(saved, tmp_path / "a", head_kwargs={"inter_channels": -5})
    with pytest.raises(UsageError, match=r"head 'lraspp'"):
        segzoo.create(f"local-dir:{f}")


# -- config.json fields -------------------------------------------------------------------------

BAD_FIELDS = [
    ({"num_classes": 0}, "num_classes", "an integer from 1"),
    ({"num_classes": -3}, "num_classes", "an integer from 1"),
    ({"num_classes": 2.5}, "num_classes", "an integer from 1"),
    ({"num_classes": "3"}, "num_classes", "an integer from 1"),
    ({"num_classes": True}, "num_classes", "an integer from 1"),
    ({"num_classes": ...}, "num_classes", "lacks"),
    ({"backbone": None}, "backbone", "lacks"),
    ({"backbone": ["resnet50"]}, "backbone", "registered backbone name"),
    ({"backbone": "../../etc"}, "backbone", "registered backbone name"),
    ({"head": "lraspp; rm -rf /"}, "head", "registered head name"),
    ({"backbone_kwargs": "output_stride=8"}, "backbone_kwargs", "an object"),
    ({"head_kwargs": [1, 2]}, "head_kwargs", "an object"),
    ({"aux": "yes"}, "aux", "true or false"),
    ({"labels": ["a", "b"]}, "labels", "a list of 3 strings"),
    ({"labels": "abc"}, "labels", "a list of 3 strings"),
    ({"preprocessing": "none"}, "preprocessing", "an object"),
    ({"preprocessing": {"resize": 0}}, "preprocessing.resize", "from 1 to 8192"),
    ({"preprocessing": {"resize": -1}}, "preprocessing.resize", "from 1 to 8192"),
    ({"preprocessing": {"resize": 10**9}}, "preprocessing.resize", "from 1 to 8192"),
    ({"preprocessing": {"mean": "abc"}}, "preprocessing.mean", "three finite numbers"),
    ({"preprocessing": {"mean": [0.5, 0.5]}}, "preprocessing.mean", "three finite numbers"),
    ({"preprocessing": {"std": [0, 1, 1]}}, "preprocessing.std", "three positive numbers"),
    ({"preprocessing": {"interpolation": "lanczos9"}}, "preprocessing.interpolation", "one of"),
    ({"ignore_index": "255"}, "ignore_index", "an integer"),
    ({"providers": "me"}, "providers", "an object"),
    ({"surprise": 1}, "surprise", "unknown field"),
]


@pytest.mark.parametrize(("changes", "field", "expected"), BAD_FIELDS, ids=[str(c) for c, _, _ in BAD_FIELDS])
def test_a_bad_config_field_is_one_error_naming_config_json_and_the_field(
    saved, tmp_path, changes, field, expected
):
    f = with_config(saved, tmp_path / "f", **changes)
    with pytest.raises(ConfigError) as info:
        segzoo.create(f"local-dir:{f}")
    message = str(info.value)
    assert "config.json" in message and field.split(".")[0] in message and expected in message


def test_deep_nesting_and_huge_configs_are_refused(saved, tmp_path):
    f = with_config(saved, tmp_path / "deep")
    (f / "config.json").write_text('{"format": "segzoo", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply|not valid JSON"):
        segzoo.create(f"local-dir:{f}")
    f = with_config(saved, tmp_path / "kw", head_kwargs={"inter_channels": [[[[[[[[1]]]]]]]]})
    with pytest.raises(ConfigError, match="nested at most"):
        segzoo.create(f"local-dir:{f}")
    f = with_config(saved, tmp_path / "big")
    (f / "config.json").write_text(" " * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        segzoo.create(f"local-dir:{f}")
    f = with_config(saved, tmp_path / "nan")
    (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"num_classes": 3', '"num_classes": NaN')
    )
    with pytest.raises(ConfigError, match="NaN"):
        segzoo.create(f"local-dir:{f}")


def test_messages_never_suggest_commands_made_of_config_text(saved, tmp_path):
    evil = "x' ; touch p ; echo '"
    f = with_config(
        saved,
        tmp_path / "f",
        head="unet_from_nowhere",
        providers={"head": {"plugin": "p", "distribution": evil, "version": "1.0; rm -rf ~"}},
    )
    with pytest.raises(PluginError) as info:
        segzoo.create(f"local-dir:{f}")
    message = str(info.value)
    assert "pip install" not in message
    assert repr(evil) in message  # quoted as data, never as part of a command
    f = with_config(
        saved,
        tmp_path / "g",
        head="unet_from_nowhere",
        providers={"head": {"plugin": "p", "distribution": "segzoo-unet", "version": "1.0; rm -rf ~"}},
    )
    with pytest.raises(PluginError, match=r"pip install 'segzoo-unet'$"):
        segzoo.create(f"local-dir:{f}")


def test_the_model_card_escapes_config_text(tmp_path):
    labels = ["<script>alert(1)</script>", "a | b", "[click](http://evil.example)"]
    model = tiny()
    model.config["labels"] = labels
    model.config["weights"] = {"tag": "t", "source": "<img src=x onerror=alert(1)>", "metrics": {}}
    folder = model.save_pretrained(tmp_path / "m")
    card = (folder / "README.md").read_text()
    assert "<script>" not in card and "<img" not in card and "](http" not in card
    rows = [line for line in card.splitlines() if line.startswith("| 1 |")]
    assert rows == ["| 1 | a \\| b |"]  # the pipe cannot open a new table cell
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["id2label"] == {"0": labels[0], "1": labels[1], "2": labels[2]}
    assert cfg["label2id"] == {labels[0]: 0, labels[1]: 1, labels[2]: 2}
    assert segzoo.create(f"local-dir:{folder}").labels == labels


# -- writing ------------------------------------------------------------------------------------


def test_saving_refuses_a_folder_that_is_not_segzoos(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my project\n")
    (project / "config.json").write_text('{"mine": true}\n')
    with pytest.raises(UsageError, match=r"not empty \(README.md, config.json\) and is not a segzoo folder"):
        tiny().save_pretrained(project)
    assert (project / "README.md").read_text() == "my project\n"
    assert sorted(os.listdir(project)) == ["README.md", "config.json"]
    tiny().save_pretrained(project, overwrite=True)
    assert segzoo.create(f"local-dir:{project}").num_classes == 3
    tiny(seed=2).save_pretrained(project)  # a segzoo folder may be re-saved without asking


def test_convert_refuses_a_project_root(tmp_path, monkeypatch, capsys):
    from segzoo.cli import main

    from .test_torchvision_parity import torchvision_model

    tv = torchvision_model("lraspp_mobilenet_v3_large", num_classes=3, aux=False)
    pth = tmp_path / "w.pth"
    torch.save(tv.state_dict(), pth)
    root = tmp_path / "root"
    root.mkdir()
    (root / "README.md").write_text("keep me\n")
    monkeypatch.chdir(root)
    assert main(["convert", "torchvision", "lraspp_mobilenet_v3_large", str(pth), "."]) == 2
    assert "not a segzoo folder" in capsys.readouterr().err
    assert sorted(os.listdir(root)) == ["README.md"] and (root / "README.md").read_text() == "keep me\n"


def test_concurrent_saves_leave_one_whole_model(tmp_path):
    models = [tiny(seed=s) for s in (1, 2)]
    expected = [outputs(m) for m in models]
    target = tmp_path / "m"
    for _ in range(3):
        barrier = threading.Barrier(len(models))
        errors: list[BaseException] = []

        def save(m, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                for _ in range(4):
                    m.save_pretrained(target)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=save, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        got = outputs(segzoo.create(f"local-dir:{target}"))
        assert any(torch.equal(got, e) for e in expected)
    assert not [p for p in os.listdir(tmp_path) if p != "m"]  # no temp folders left
    assert sorted(os.listdir(target)) == ["README.md", "config.json", "model.safetensors"]  # no lock file


def test_written_files_get_the_users_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        folder = tiny().save_pretrained(tmp_path / "m")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        for name in ("model.safetensors", "config.json", "README.md"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
        tiny(seed=3).save_pretrained(folder)  # re-saved file by file: same modes
        for name in ("model.safetensors", "config.json", "README.md"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
        from segzoo._files import write_text

        assert stat.S_IMODE(write_text(tmp_path / "x.txt", "x").stat().st_mode) == 0o644
    finally:
        os.umask(old)


# -- weights ------------------------------------------------------------------------------------


def _rewrite_weights(folder: Path, mutate) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    tensors = mutate(tensors)
    save_file(
        tensors, folder / "model.safetensors", metadata={"format": "pt", "segzoo_save_id": cfg["save_id"]}
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_cast_with_a_warning(saved, tmp_path, dtype):
    f = with_config(saved, tmp_path / "half")
    _rewrite_weights(f, lambda t: {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()})
    with pytest.warns(
        UserWarning, match=rf"cast \d+ {str(dtype)[6:]} tensor\(s\) to the model's dtype \(float32\)"
    ):
        model = segzoo.create(f"local-dir:{f}")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ref = segzoo.create(f"local-dir:{saved}")
    torch.testing.assert_close(outputs(model), outputs(ref), rtol=0.05, atol=0.05)


def test_integer_and_non_finite_weights_are_refused_by_name(saved, tmp_path):
    key = "classifier.high_classifier.weight"
    f = with_config(saved, tmp_path / "int")
    _rewrite_weights(f, lambda t: {**t, key: t[key].to(torch.int32)})
    with pytest.raises(WeightsError, match=rf"wrong kind: {key} \(torch.int32 vs torch.float32\)"):
        segzoo.create(f"local-dir:{f}")
    for bad in (float("nan"), float("inf")):
        f = with_config(saved, tmp_path / f"bad{bad}")

        def poison(t, bad=bad):
            t[key] = t[key].clone()
            t[key][0, 0] = bad
            return t

        _rewrite_weights(f, poison)
        with pytest.raises(WeightsError, match=rf"NaN or infinite values in {key}"):
            segzoo.create(f"local-dir:{f}")


def test_loaded_weights_are_64_byte_aligned(saved):
    """oneDNN picks kernels by alignment too: a reload must compute bit-exactly what was saved on
    any CPU, so no loaded tensor may sit at an odd offset of the memory-mapped file."""
    model = segzoo.create(f"local-dir:{saved}")
    for k, v in model.state_dict().items():
        assert v.numel() == 0 or v.data_ptr() % 64 == 0, k


@requires("segzoo-deeplabv3plus")
def test_a_part_whose_plugin_is_excluded_by_segzoo_plugins_says_so(tmp_path):
    folder = segzoo.create("deeplabv3plus", backbone="mobilenet_v3_small", num_classes=2).save_pretrained(
        tmp_path / "m"
    )
    code = f"import segzoo\nsegzoo.create('local-dir:{folder}')\n"
    proc = run_python(code, env={"SEGZOO_PLUGINS": "someotherplugin"})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        "segzoo.errors.PluginError" in last
        and "installed plugin 'deeplabv3plus'" in last
        and "SEGZOO_PLUGINS excludes" in last
    )
    assert "pip install" not in last


@pytest.mark.slow
def test_the_trainer_does_not_write_its_best_model_over_a_foreign_folder(tmp_path):
    from .test_train import TINY

    out = tmp_path / "run"
    (out / "best").mkdir(parents=True)
    (out / "best" / "README.md").write_text("notes\n")
    with pytest.raises(UsageError, match="not a segzoo folder"):
        segzoo.train(**TINY, max_steps=2, output=str(out))
    assert (out / "best" / "README.md").read_text() == "notes\n"
