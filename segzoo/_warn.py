"""Warnings that point at the caller's line, not at the segzoo internals that noticed the problem."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` of the innermost frame outside the segzoo package, as seen from the
    caller of this function (Python 3.12's ``skip_file_prefixes`` does this, but 3.10 is supported)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first line outside segzoo (the user's call)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
