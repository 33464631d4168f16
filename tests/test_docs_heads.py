"""docs/heads.md's heads table is the registry's: regenerate it with ``python docs/heads_table.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_heads_table_is_current():
    spec = importlib.util.spec_from_file_location("heads_table", DOCS / "heads_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (DOCS / "heads.md").read_text()
    assert module.updated(text) == text, "docs/heads.md is stale: run python docs/heads_table.py"
