"""Training checkpoints: written atomically, found again after a crash, read without unpickling code."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import atomic_path
from .._warn import warn
from ..errors import SegzooError

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(SegzooError, ValueError):
    """A checkpoint that cannot be used to resume this run."""


def save_checkpoint(output: Path, state: dict[str, Any], step: int, *, keep: int) -> Path:
    """Write ``checkpoint-STEP.pt`` atomically (temp file, fsync, rename) and keep the newest ``keep``."""
    path = output / f"checkpoint-{step:08d}.pt"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(output, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
    for old in checkpoints(output)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints in ``output``, oldest first."""
    if not output.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output: Path, *, tidy: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its state, or None when there is none.

    A newer one that cannot be read (cut short by a full disk or a copy, say: writes themselves are
    atomic) is skipped with a warning and, with ``tidy``, renamed to ``NAME.unreadable`` so that
    the resumed run's saves and retention do not mix it up with complete ones. ``tidy`` also
    removes the leftovers of an interrupted write; only one process of a run should tidy.
    """
    if tidy and output.is_dir():
        for leftover in output.glob(".checkpoint-*.tmp"):
            leftover.unlink(missing_ok=True)
    skipped: list[tuple[Path, CheckpointError]] = []
    for path in reversed(checkpoints(output)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path, err))
            continue
        for bad, err in skipped:
            kept = bad.with_name(bad.name + ".unreadable")
            if tidy:
                bad.replace(kept)
            warn(
                f"{err}; resuming from the previous complete checkpoint, {path.name} (step "
                f"{state['step']})" + (f"; the unreadable file is kept as {kept.name}" if tidy else "")
            )
        return path, state
    if skipped:
        reasons = "; ".join(str(err) for _, err in skipped)
        raise CheckpointError(f"no complete checkpoint in {output}: {reasons}")
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a readable segzoo checkpoint ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "config"} <= set(state):
        raise CheckpointError(f"{path} is not a segzoo training checkpoint")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states in types torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
