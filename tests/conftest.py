from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import segzoo

torch.set_num_threads(min(2, os.cpu_count() or 1))


# A throwaway plugin: `with plugin(obj, name) as record:` registers it and removes it afterwards.
plugin = segzoo.register_plugin


@pytest.fixture
def fresh_plugins(monkeypatch):
    """Reload plugins from scratch for one test, and again afterwards."""
    from segzoo import _plugins

    _plugins.reset()
    yield _plugins
    monkeypatch.undo()
    _plugins.reset()


def randomize_bn_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm running statistics, so that a mixed-up or skipped BatchNorm shows in the
    outputs (fresh ones are mean 0, variance 1: nearly the identity in eval mode)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (for import-time behaviour)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300, check=False
    )


def installed(distribution: str) -> bool:
    """Whether a distribution (e.g. an optional plugin package) is installed."""
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def requires(distribution: str) -> pytest.MarkDecorator:
    """Skip a test that needs an optional plugin package: core tests run without any plugin."""
    return pytest.mark.skipif(not installed(distribution), reason=f"{distribution} is not installed")
