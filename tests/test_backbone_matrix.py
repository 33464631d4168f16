"""The timm backbone matrix: the docs table is the JSON's, the JSON names only registered heads
and every timm architecture, and a stratified sample re-checked for real gives what it records."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import timm
import torch

import segzoo
from segzoo.backbones._verify import work_export, work_meta, work_real
from segzoo.backbones.matrix import (
    cause,
    export_kind,
    load_matrix,
    outcome,
    render_markdown,
    sample,
    summarize,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"
BUILT_IN_HEADS = ("fcn", "deeplabv3", "lraspp")
REAL_TEST_PARAMS = 30_000_000  # bigger sample members are checked on the meta device


def test_the_docs_table_is_generated_from_the_json():
    assert DOC.read_text() == render_markdown(load_matrix()), (
        "docs/backbones.md differs from segzoo/backbones/timm_matrix.json: run "
        "python benchmarks/backbone_docs.py"
    )


def test_the_matrix_names_only_registered_heads():
    data = load_matrix()
    named = set(data["heads"])
    for entry in data["models"].values():
        for tier in ("meta", "real"):
            named |= set((entry.get(tier) or {}).get("heads", {}))
    assert named <= set(segzoo.list_heads())


def test_the_matrix_lists_every_timm_architecture():
    assert set(load_matrix()["models"]) == set(timm.list_models())


def test_a_summary_says_what_was_measured():
    heads = ["fcn", "lraspp"]
    entry = {
        "module": "vision_transformer",
        "meta": {
            "params": 5,
            "features": [[192, 16]],
            "roles": {"out": 0, "aux": None, "low": None},
            "input": {},
            "min_size": 32,
            "os": {"16": "as built", "8": "NotDilatableError: timm:x cannot be dilated to output_stride=8"},
            "heads": {"fcn": "ok", "lraspp": "build: ValueError: no feature at reduction 8 for 'low'"},
        },
    }
    s = summarize("x", entry, heads)
    assert s["tier"] == "meta" and not s["verified"] and s["real"] == "pending (not measured yet)"
    assert s["heads"] == ["fcn"] and s["incompatible"] == ["lraspp"] and s["output_strides"] == ["32", "16"]
    entry["real"] = {"size": 64, "heads": {"fcn": "ok", "lraspp": entry["meta"]["heads"]["lraspp"]}}
    assert summarize("x", entry, heads)["verified"]
    entry["real"]["heads"]["fcn"] = "train: RuntimeError: boom"
    s = summarize("x", entry, heads)
    assert not s["verified"] and s["failing"] == {"fcn": "train: RuntimeError: boom"}
    assert "export" not in s  # not measured
    entry["real"] = {"error": "timeout: more than 300 s", "s": 300.0}
    s = summarize("x", entry, heads)
    assert s["tier"] == "meta" and s["real"] == "failed: timeout: more than 300 s"
    entry["export"] = {"head": "fcn", "static": "ok", "dynamic": "multiples of 32", "s": 3.0}
    assert summarize("x", entry, heads)["export"] == {
        "head": "fcn",
        "static": "ok",
        "dynamic": "multiples of 32",
        "how": "k*32",
    }


@pytest.mark.parametrize(
    "rec, how",
    [
        ({"static": "ok", "dynamic": "any size"}, "dynamic"),
        ({"static": "ok", "dynamic": "multiples of 14"}, "k*14"),
        ({"static": "ok", "dynamic": "no: the backbone takes one input size"}, "static"),
        ({"static": "ok", "dynamic": "TimeoutError: more than 150 s"}, "static"),
        ({"static": "TorchRuntimeError: boom", "dynamic": "no"}, "fails"),
        ({"error": "build: UsageError: boom"}, "fails"),
    ],
)
def test_an_export_record_reads_as_one_word(rec, how):
    assert export_kind(rec) == how


def test_the_sample_covers_every_timm_module():
    data = load_matrix()
    pending = {e["module"] for e in data["models"].values()} - set(sample(data))
    assert not pending, f"modules without any measurement: {sorted(pending)}"


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(sample(load_matrix())))
def test_a_stratified_sample_still_works_as_recorded(module):
    """Per timm module its smallest architecture, for real with the built-in heads: a regression
    in segzoo or a timm upgrade shows as a changed outcome."""
    data = load_matrix()
    name = sample(data)[module]
    entry = data["models"][name]
    real = entry.get("real") or {}
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if entry["meta"].get("params", 0) > REAL_TEST_PARAMS or "error" in entry["meta"]:
            # a module whose smallest model is too big to run here for real: shapes only
            rec, got = entry["meta"], work_meta(name, list(BUILT_IN_HEADS), "error" in entry["meta"])
        else:
            rec = real if "heads" in real or "error" in real else entry["meta"]
            got = work_real(name, list(BUILT_IN_HEADS), True)
    if "error" in rec or "error" in got:
        want, now = (cause(r["error"]) if "error" in r else "builds" for r in (rec, got))
        assert now == want, (name, got.get("error"))
        return
    for h in BUILT_IN_HEADS:
        assert outcome(got["heads"][h]) == outcome(rec["heads"][h]), (
            name,
            h,
            rec["heads"][h],
            got["heads"][h],
        )


EXPORT_RECHECKS = 3


def _export_recheck_names() -> list[str]:
    data = load_matrix()
    measured = [n for n in sample(data).values() if "export" in data["models"][n]]
    return sorted(measured, key=lambda n: data["models"][n]["export"]["s"])[:EXPORT_RECHECKS]


@pytest.mark.slow
@pytest.mark.parametrize("name", _export_recheck_names())
def test_the_quickest_recorded_exports_still_export_as_recorded(name):
    """torch.export of a timm backbone with a head, as the matrix records it (static, dynamic or
    multiples), re-run on the sample's quickest members: a torch or timm upgrade shows."""
    rec = load_matrix()["models"][name]["export"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = work_export(name, [rec["head"]], True)
    assert export_kind(got) == export_kind(rec), (name, rec, got)


def test_cli_shows_the_measured_status(capsys):
    from segzoo.cli import main

    assert main(["list", "--backbones", "timm:resnet18", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["timm_backbones"]
    want = summarize("resnet18", load_matrix()["models"]["resnet18"], load_matrix()["heads"])
    assert want in rows and all(r["name"].startswith("timm:resnet18") for r in rows)
    assert main(["info", "timm:resnet18", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"]["tier"] == want["tier"] and info["verified"]["heads"] == want["heads"]
    assert main(["list", "--backbones", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "timm:resnet18 " in out and "HEADS THAT WORK" in out and "EXPORT" in out
