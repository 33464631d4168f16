"""The Hugging Face Hub: ``hf-hub:`` names pull a segzoo folder through huggingface_hub (its cache,
offline mode and errors), and ``push_to_hub`` sends one as a single commit."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ._config import CONFIG_NAME, read_config
from ._files import cache_dir, write_text
from ._folder import CARD_NAME, WEIGHTS_NAME, load_state_file, render_card, save_pretrained
from ._version import __version__
from .errors import FolderError, HubAccessError, HubNotFoundError

# -- the Hub ------------------------------------------------------------------------------------


def download_folder(
    repo_id: str, revision: str | None = None, *, token: str | None = None, sha256: str | None = None
) -> Path:
    """config.json and model.safetensors of a Hub repo, through the huggingface_hub cache.

    Both come from one commit: model.safetensors is fetched at the commit config.json resolved to,
    so a push to the branch in between cannot mix two versions. Honours ``HF_ENDPOINT`` and
    ``HF_HUB_OFFLINE`` (cache only). Returns the snapshot folder.
    """
    config = _download(repo_id, CONFIG_NAME, revision, token=token, asked=revision)
    commit = config.parent.name  # the cache keeps a commit's files in snapshots/<commit sha>/
    pinned = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision
    weights = _download(repo_id, WEIGHTS_NAME, pinned, token=token, asked=revision)
    where = f"{repo_id}@{revision}" if revision else repo_id
    if sha256 is not None:
        _check_sha256(weights, sha256, f"{where}/{WEIGHTS_NAME}")
    if weights.parent != config.parent:
        raise FolderError(f"{where}: config.json and model.safetensors resolved to different snapshots")
    return config.parent


def _download(
    repo_id: str, filename: str, revision: str | None, *, token: str | None, asked: str | None
) -> Path:
    """One file through hf_hub_download; a missing repo, revision or file is one HubNotFoundError
    naming what the caller asked for (``asked``: their revision, ``revision`` may be its commit)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{asked}" if asked else repo_id
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                token=token,
                library_name="segzoo",
                library_version=__version__,
            )
        )
    except RevisionNotFoundError:
        raise HubNotFoundError(f"Hub repo {repo_id!r} has no revision {asked!r}") from None
    except GatedRepoError:
        raise HubNotFoundError(
            f"Hub repo {repo_id!r} is gated: accept its conditions on the Hub, then pass token=... "
            "or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise HubNotFoundError(_what_is_missing(repo_id, filename, asked, token)) from None
    except LocalEntryNotFoundError:
        raise HubNotFoundError(
            f"{filename} of {where} is not in the local cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE is set, or no network): download it once online"
        ) from None
    except EntryNotFoundError:
        raise HubNotFoundError(
            f"Hub repo {where} has no {filename}: it is not a segzoo model folder"
        ) from None


def _what_is_missing(repo_id: str, filename: str, revision: str | None, token: str | None) -> str:
    """The message for a RepoNotFound answer. The Hub gives it for the repo only, but a mirror may
    give it for any miss (olah serving git repositories offline does for a missing branch, or a
    file missing on a branch), so the repo's refs decide between repo, revision and file."""
    from huggingface_hub import HfApi

    try:
        refs = HfApi(token=token, library_name="segzoo", library_version=__version__).list_repo_refs(repo_id)
    except Exception:  # the repo is missing or private indeed (or the server went away): say that
        return f"Hub repo {repo_id!r} does not exist, or is private (pass token=... or set HF_TOKEN)"
    if (revision or "main") not in {ref.name for ref in (*refs.branches, *refs.tags)}:
        return f"Hub repo {repo_id!r} has no revision {revision or 'main'!r}"
    where = f"{repo_id}@{revision}" if revision else repo_id
    return f"Hub repo {where} has no {filename}: it is not a segzoo model folder"


def _check_sha256(path: Path, expected: str, what: str) -> None:
    """Hash the bytes on disk. (The cache names a blob after the ETag the server announced, and
    huggingface_hub checks only the size: a name is no proof of content.) A file that passed once
    is remembered by path, size and mtime in segzoo's cache, so later loads skip the hashing
    (about 0.3 s for a 240 MB file)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected.lower()}
    marker = cache_dir() / "verified" / f"{hashlib.sha256(real.encode()).hexdigest()}.json"
    try:
        if json.loads(marker.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass  # not verified yet, or an unreadable marker: hash it
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    got = digest.hexdigest()
    if not got.startswith(expected.lower()):
        raise FolderError(f"sha256 mismatch for {what}: expected {expected}, got {got}")
    write_text(marker, json.dumps(stamp))


def push_to_hub(
    source: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Create the repo if needed and push model.safetensors, config.json and a regenerated
    README.md in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token, library_name="segzoo", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="segzoo-push-") as tmp:
        if hasattr(source, "state_dict"):  # a SegmentationModel (not imported: model.py imports this)
            folder = save_pretrained(source, Path(tmp) / "model")
        else:
            folder = Path(source)
        config = read_config(folder)
        load_state_file(
            folder / WEIGHTS_NAME, save_id=config.get("save_id")
        )  # refuse to push a broken folder
        card = render_card(config, repo_id)  # regenerated, so that it always matches config.json
        step = f"create {repo_id}"
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                step = f"create branch {revision!r} of {repo_id}"
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            step = f"commit to {repo_id}" + (f"@{revision}" if revision else "")
            info = api.create_commit(
                repo_id,
                operations=[
                    CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
                    CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
                    CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode()),
                ],
                commit_message=commit_message
                or f"Upload {config.get('recipe') or config['head']} with segzoo",
                revision=revision,
            )
        except HfHubHTTPError as err:
            status = err.response.status_code
            if status not in (401, 403):
                raise
            reason = (err.server_message or "").strip().splitlines()
            raise HubAccessError(
                f"the Hub refused to {step} (HTTP {status}{': ' + reason[0] if reason else ''}): pass "
                f"token=... (segzoo push --token) or set HF_TOKEN, a token with write access to "
                f"{repo_id.split('/')[0]}"
            ) from None
    return str(info.commit_url)
