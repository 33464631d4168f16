"""The CLI tells a user's mistake (one line, exit 2) from a bug in segzoo (traceback, exit 1), and
checks option values before any work."""

from __future__ import annotations

import dataclasses
import re
from importlib import metadata

import pytest
import torch

import segzoo
from segzoo import _plugins, cli
from segzoo.cli import main
from segzoo.engine.train import TrainConfig
from segzoo.errors import DataError, UsageError


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def parse_error(capsys, *argv: str) -> str:
    """argparse's error line for argv (it exits 2 before any command runs)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "error,rc,one_line",
    [
        (UsageError("--foo must be positive"), 2, True),
        (DataError("image a.png is empty"), 2, True),
        (FileNotFoundError("dataset folder x does not exist"), 2, True),
        (TypeError("unsupported operand type(s) for +: 'int' and 'str'"), 1, False),
        (LookupError("'k'"), 1, False),
        (ValueError("not enough values to unpack"), 1, False),
        (KeyboardInterrupt(), 130, True),
    ],
)
def test_user_errors_are_one_line_and_bugs_a_traceback_with_a_report_request(
    capsys, monkeypatch, error, rc, one_line
):
    def command(args):
        raise error

    monkeypatch.setattr(cli, "cmd_list", command)
    code, out, err = run(capsys, "list")
    assert code == rc and out == ""
    if one_line:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        if rc == 2:
            assert err == f"segzoo list: error: {error}\n"
    else:
        assert err.startswith("Traceback (most recent call last):")
        assert f"{type(error).__name__}: {error}" in err
        assert err.strip().splitlines()[-1] == (
            f"segzoo list: this is a bug in segzoo {segzoo.__version__}, not a mistake of yours: please "
            "report it to the segzoo developers with the command you ran and the traceback above"
        )


@pytest.mark.parametrize(
    "error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")]
)
def test_out_of_memory_is_one_line_with_advice(capsys, monkeypatch, error):
    def command(args):
        raise error

    monkeypatch.setattr(cli, "cmd_list", command)
    rc, _, err = run(capsys, "list")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("segzoo list: error: out of memory (") and "--batch-size" in err


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    def command(args):
        raise UsageError("bad")

    monkeypatch.setattr(cli, "cmd_list", command)
    with pytest.raises(UsageError, match="bad"):
        main(["--debug", "list"])


PREDICT = ("predict", "some-model", "image.png", "--out", "out")


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            (*PREDICT, "--tile", "0"),
            r"argument --tile: must be at least 32 \(the models downsample up to 32 times\), got 0$",
        ),
        ((*PREDICT, "--tile", "1"), r"argument --tile: must be at least 32 .*, got 1$"),
        ((*PREDICT, "--tile", "x"), r"argument --tile: 'x' is not a whole number"),
        ((*PREDICT, "--size", "-1"), r"argument --size: must be at least 0, got -1$"),
        ((*PREDICT, "--alpha", "1.5"), r"argument --alpha: must be in \[0, 1\], got 1.5$"),
        ((*PREDICT, "--alpha", "-0.1"), r"argument --alpha: must be in \[0, 1\], got -0.1$"),
        ((*PREDICT, "--alpha", "nan"), r"argument --alpha: must be in \[0, 1\], got nan$"),
        ((*PREDICT, "--overlap", "1"), r"argument --overlap: must be in \[0, 1\), got 1$"),
        ((*PREDICT, "--batch-size", "0"), r"argument --batch-size: must be at least 1, got 0$"),
        ((*PREDICT, "--max-pixels", "0"), r"argument --max-pixels: must be at least 1, got 0$"),
        ((*PREDICT, "--device", "gpu"), r"argument --device: unknown device 'gpu': use cpu, cuda"),
        ((*PREDICT, "--device", "meta"), r"argument --device: segzoo cannot run on device 'meta'"),
        (("eval", "m", "--device", "cuda"), r"argument --device: device 'cuda' is not available: .*use cpu"),
        (("eval", "m", "--workers", "-1"), r"argument --workers: must be at least 0, got -1$"),
        (
            ("data", "synth", "out", "--val-fraction", "0"),
            r"argument --val-fraction: must be in \(0, 1\), got 0$",
        ),
        (
            ("data", "synth", "out", "--val-fraction", "1"),
            r"argument --val-fraction: must be in \(0, 1\), got 1$",
        ),
        (("data", "synth", "out", "--n", "0"), r"argument --n: must be at least 1, got 0$"),
        (("train", "lraspp", "--device", "cuda:7"), r"argument --device: device 'cuda:7' is not available"),
        (("train", "lraspp", "--optimizer", "adam"), r"argument --optimizer: invalid choice: 'adam'"),
        (("train", "lraspp", "--amp", "fp8"), r"argument --amp: invalid choice: 'fp8'"),
    ],
)
def test_bad_option_values_are_argparse_errors(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer with a GPU
    line = parse_error(capsys, *argv)
    assert line.startswith(f"segzoo {argv[0]}: error: ") or line.startswith("segzoo data synth: error: ")
    assert re.search(message, line), line
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_train_config_checks_the_device_too():
    with pytest.raises(UsageError, match="unknown device 'cuda0'"):
        TrainConfig(model="lraspp", device="cuda0")
    with pytest.raises(UsageError, match=r"hflip is a probability in \[0, 1\], got 2"):
        TrainConfig(model="lraspp", hflip=2)


def test_plugins_strict_fails_when_a_chosen_plugin_is_missing(capsys, monkeypatch, fresh_plugins):
    good = metadata.EntryPoint("goodplugin", "tests.plugin_good", "segzoo")
    monkeypatch.setattr(_plugins.metadata, "entry_points", lambda group=None, **_: [good])
    monkeypatch.setenv(_plugins.ENV_VAR, "goodplugin,segzoo-unet")
    with pytest.warns(_plugins.PluginWarning, match="segzoo-unet"):
        rc, out, err = run(capsys, "plugins", "--strict")
    assert rc == 1
    assert (
        "segzoo-unet" in out and "FAILED: SEGZOO_PLUGINS names 'segzoo-unet', but no installed plugin" in out
    )
    assert err == "segzoo plugins: error: --strict: 1 plugin(s) failed: segzoo-unet\n"
    rc, out, _ = run(capsys, "plugins")  # without --strict: a report, exit 0
    assert rc == 0 and "goodplugin" in out


@pytest.mark.parametrize(
    "content,what",
    [
        (b"epoch 3: loss 0.12\n", "a text file"),
        (b"", "an empty file (0 bytes)"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n", "a Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
        ("safetensors", "a safetensors file"),
        (b"PK\x03\x04 half a zip", "a damaged zip archive"),
        (b"\x1f\x8b\x08\x00\x00", "a gzip-compressed file"),
    ],
)
def test_convert_says_what_a_file_that_is_no_checkpoint_is(capsys, tmp_path, content, what):
    path = tmp_path / "model.pth"
    if content == "safetensors":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    rc, _, err = run(capsys, "convert", "torchvision", "fcn_resnet50", str(path), str(tmp_path / "out"))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    line = err.strip()
    assert line.startswith(f"segzoo convert: error: {path} is {what}")
    assert line.endswith("not a PyTorch checkpoint (a .pth file written by torch.save)")
    assert not (tmp_path / "out").exists()


def test_real_checkpoints_pass_the_format_check(tmp_path):
    from segzoo._sniff import torch_checkpoint_problem

    state = {"w": torch.zeros(2)}
    torch.save(state, tmp_path / "new.pth")
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert torch_checkpoint_problem(tmp_path / "new.pth") is None
    assert torch_checkpoint_problem(tmp_path / "old.pth") is None
    assert torch_checkpoint_problem(tmp_path / "missing.pth") is None  # left to the reader to say


def test_every_train_config_field_has_help_and_a_train_option(capsys):
    fields = dataclasses.fields(TrainConfig)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in fields:
        helptext = f.metadata.get("help")
        assert helptext, f"TrainConfig.{f.name} has no help text"
        assert " ".join(helptext.split()) in text, f.name
        if f.default is dataclasses.MISSING:
            assert f.name.upper() in text
        else:
            assert "--" + f.name.replace("_", "-") in text, f.name
    assert len({f.name for f in fields}) == len(fields)
