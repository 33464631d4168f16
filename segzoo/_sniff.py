"""What a file is, from its first bytes: so that a wrong file gets a message naming what it is."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

__all__ = ["torch_checkpoint_problem"]


def _safetensors_header(head: bytes, size: int) -> bool:
    """A little-endian u64 header length, then that many bytes of JSON starting with '{'."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _text_kind(head: bytes) -> str | None:
    if b"\0" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return None
        text = head[: err.start].decode("utf-8")
    start = text.lstrip().lower()
    if start.startswith("version https://git-lfs"):
        return "a Git LFS pointer (a text file), not the checkpoint itself: fetch it with `git lfs pull`"
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page (a text file), probably an error or login page saved instead of the download"
    if start.startswith(("{", "[")):
        try:
            json.loads(text)
            return "a JSON text file"
        except ValueError:
            pass
    return "a text file"


def torch_checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """None when ``path`` looks like a ``torch.save`` file (zip with ``data.pkl``, or the legacy
    pickle format), else what the file is instead, e.g. ``"a text file"``. A missing file or a
    folder is left to the reader, which says so."""
    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive (torch.save writes zip archives: this one may be cut short)"
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None
        return "a zip archive without the data.pkl of a torch.save file"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return None  # the legacy (pre-1.6) torch.save format: pickles, read with weights_only=True
    if _safetensors_header(head, size):
        return "a safetensors file, segzoo's own weights format: load its folder with create('local-dir:DIR')"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file: decompress it first"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (e.g. a Keras model)"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "an image"
    text = _text_kind(head)
    if text is not None:
        return text
    return f"an unknown binary format (it starts with {head[:8].hex(' ')})"
