"""Pretrained weight tags: where a tag's weights come from, download, verification and the cache."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__


@dataclass(frozen=True)
class WeightSpec:
    """A weight tag of a recipe (``deeplabv3_resnet101.tv_coco_voc``) and what is known about it.

    Sources, in order: ``hf_hub_id`` at the pinned ``revision`` (a segzoo folder with
    safetensors), else ``url``: a torchvision-format checkpoint downloaded once, checked against
    ``sha256`` and converted into a segzoo folder in the cache. ``sha256`` may be a prefix:
    torchvision publishes only the first 8 hex digits of its files' hashes.
    """

    num_classes: int
    aux: bool = False
    hf_hub_id: str | None = None
    revision: str | None = None
    filename: str = "model.safetensors"
    url: str | None = None
    sha256: str | None = None
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # {"dataset": ..., "miou": ..., "pixel_acc": ...}
    license: str | None = None
    source: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.hf_hub_id is None and self.url is None:
            raise ValueError("a weight tag needs hf_hub_id or url")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        if self.sha256 is not None and not all(c in "0123456789abcdef" for c in self.sha256.lower()):
            raise ValueError(f"sha256 must be hex digits, got {self.sha256!r}")

    @classmethod
    def from_any(cls, value: WeightSpec | dict[str, Any]) -> WeightSpec:
        if isinstance(value, WeightSpec):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown weight tag field(s) {sorted(unknown)}")
        return cls(**value)

    def card_metadata(self, tag: str) -> dict[str, Any]:
        """What config.json records about these weights (for the model card)."""
        return {
            "tag": tag,
            "source": self.source or self.url or self.hf_hub_id,
            "license": self.license,
            "metrics": dict(self.metrics),
        }


def cache_dir() -> Path:
    """segzoo's cache: ``$SEGZOO_CACHE``, else ``$XDG_CACHE_HOME/segzoo``, else ``~/.cache/segzoo``."""
    if os.environ.get("SEGZOO_CACHE"):
        return Path(os.environ["SEGZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "segzoo"


def offline() -> bool:
    """True when huggingface_hub's offline switch is set: use cached files only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class DownloadError(OSError):
    """A download that failed after its retries, or whose content did not match its hash."""


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
    from .convert import convert_state_dict_file

    folder = cache_dir() / "weights" / f"{recipe}.{tag}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    if offline():
        raise FileNotFoundError(
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
        from .hub import HubNotFoundError, download_folder

        try:
            return download_folder(spec.hf_hub_id, spec.revision, token=token, sha256=spec.sha256)
        except HubNotFoundError:
            if spec.url is None:
                raise
        # not published on the Hub, or not cached while offline: the checkpoint URL (or its cache)
    return fetch_url_weights(recipe, tag, spec)
