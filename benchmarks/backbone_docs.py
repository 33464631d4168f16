"""Write docs/backbones.md from segzoo/backbones/timm_matrix.json (see backbone_matrix.py).

.venv/bin/python benchmarks/backbone_docs.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from segzoo.backbones.matrix import load_matrix, render_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"


def main() -> None:
    text = render_markdown(load_matrix())
    fd, tmp = tempfile.mkstemp(dir=DOC.parent, prefix=".backbones-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, DOC)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
