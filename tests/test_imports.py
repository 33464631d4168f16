"""`import segzoo` and `segzoo list` stay light: no torchvision, timm or huggingface_hub."""

from __future__ import annotations

import json

from .conftest import run_python

HEAVY = ("torchvision", "timm", "huggingface_hub")


def test_import_and_listing_do_not_import_heavy_packages():
    code = (
        "import sys, json, segzoo\n"
        f"after_import = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "segzoo.list_models(); segzoo.list_backbones(); segzoo.list_heads()\n"
        "from segzoo.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['list'])\n"
        "print(json.dumps({'rc': rc, 'after_import': after_import,\n"
        f"                  'after_list': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res == {"rc": 0, "after_import": [], "after_list": []}


def test_building_a_model_imports_torchvision_only_then():
    proc = run_python(
        "import sys, segzoo; segzoo.create('fcn', backbone='resnet18', num_classes=2);"
        "print('torchvision' in sys.modules, 'timm' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
