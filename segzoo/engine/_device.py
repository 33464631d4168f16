"""Checking a device name before any work: a typo or a missing GPU is one clear error."""

from __future__ import annotations

import torch

from ..errors import UsageError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` when this machine has it; a :class:`UsageError` otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(
            f"unknown device {str(device)!r}: use cpu, cuda, cuda:1, mps, ... (torch.device names)"
        ) from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    if dev.type == "meta" or not callable(getattr(backend, "is_available", None)):
        raise UsageError(f"segzoo cannot run on device {str(device)!r}: use cpu, cuda, cuda:1, mps, ...")
    if not backend.is_available():
        raise UsageError(
            f"device {str(device)!r} is not available: this machine has no {dev.type} device; use cpu"
        )
    count = backend.device_count() if callable(getattr(backend, "device_count", None)) else 1
    if dev.index is not None and dev.index >= count:
        raise UsageError(
            f"device {str(device)!r} does not exist: this machine has {count} {dev.type} device(s), "
            f"{dev.type}:0 to {dev.type}:{count - 1}"
        )
    return dev


def device_name(text: str) -> str:
    """``text`` unchanged when it names a device of this machine (for argument parsing)."""
    check_device(text)
    return text
