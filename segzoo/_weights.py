"""Pretrained weight tags: download, verification, conversion into the cache, and the Hub."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ._files import cache_dir, offline
from ._registry import WeightSpec
from ._version import __version__
from .convert import convert_state_dict_file
from .errors import DownloadError, HubNotFoundError
from .hub import download_folder

_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def download(
    url: str, dest: Path, *, sha256: str | None = None, attempts: int = 3, timeout: float = 60
) -> Path:
    """Download ``url`` to ``dest`` atomically (a temp file beside it, renamed at the end).

    A dropped connection or short read is retried from scratch (``attempts`` times in all);
    a sha256 mismatch is not retried. Nothing is left at ``dest`` unless the download is whole
    and matches ``sha256`` (a prefix of the hex digest is accepted).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.sha256()
            req = urllib.request.Request(url, headers={"User-Agent": f"segzoo/{__version__}"})
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(req, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                size = 0
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                if expected is not None and size != int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - size)
            got = digest.hexdigest()
            if sha256 is not None and not got.startswith(sha256.lower()):
                raise DownloadError(
                    f"sha256 mismatch for {url}: expected {sha256}, got {got}. The file was not kept; "
                    "the source may have changed or the transfer was corrupted."
                )
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as err:
            if err.code < 500:  # 404 and friends do not get better by retrying
                raise DownloadError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
            last = err
        except _RETRYABLE as err:
            last = err
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if attempt < attempts:
            time.sleep(min(2 ** (attempt - 1), 8) * 0.5)
    raise DownloadError(f"download of {url} failed after {attempts} attempts: {type(last).__name__}: {last}")


def fetch_url_weights(recipe: str, tag: str, spec: WeightSpec) -> Path:
    """The segzoo folder for a torchvision-format checkpoint tag: from the cache, or downloaded,
    verified and converted once."""
    folder = cache_dir() / "weights" / f"{recipe}.{tag}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if offline():
        raise HubNotFoundError(
            f"{recipe}.{tag} is not in the cache ({folder}) and HF_HUB_OFFLINE is set: run once "
            "online to download it, or unset HF_HUB_OFFLINE"
        )
    assert spec.url is not None
    downloads = cache_dir() / "downloads"
    pth = download(spec.url, downloads / Path(spec.url).name, sha256=spec.sha256)
    try:
        convert_state_dict_file(recipe, pth, folder, weights_meta=spec.card_metadata(tag), spec=spec)
    finally:
        pth.unlink(missing_ok=True)  # the converted folder is all that is kept
    return folder


def fetch_weights(recipe: str, tag: str, spec: WeightSpec, *, token: str | None = None) -> Path:
    """The folder (config.json + model.safetensors) holding a tag's weights."""
    if spec.hf_hub_id is not None:
        try:
            return download_folder(spec.hf_hub_id, spec.revision, token=token, sha256=spec.sha256)
        except HubNotFoundError:
            if spec.url is None:
                raise
        # not published on the Hub, or not cached while offline: the checkpoint URL (or its cache)
    return fetch_url_weights(recipe, tag, spec)
