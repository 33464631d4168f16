"""The segzoo folder format (model.safetensors + config.json + README.md), and the Hugging Face Hub.

A folder is written atomically and read back with clear errors; ``hf-hub:`` names pull such a
folder through huggingface_hub (its cache, offline mode and errors), and ``push_to_hub`` sends one
as a single commit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__

if TYPE_CHECKING:
    from .model import SegmentationModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT = "segzoo"
FORMAT_VERSION = 1


class FolderFormatError(ValueError):
    """A segzoo folder, config.json or safetensors file that cannot be used as it is."""


class HubNotFoundError(FileNotFoundError):
    """A Hub repository, revision or file that does not exist, or is not cached while offline."""


class HubAccessError(PermissionError):
    """The Hub refused a push: no token, a wrong one, or one without write access."""


# -- writing ------------------------------------------------------------------------------------


def folder_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config.json of a model: its build config plus the format header."""
    cfg = json.loads(json.dumps(dict(model_config), default=_json_default))
    if cfg.get("backbone") is None:
        raise FolderFormatError(
            "this model's backbone is a module passed to create(), not a registered name, so a folder "
            "could not rebuild it: register the backbone in a plugin, or save its state_dict yourself"
        )
    cfg.pop("save_id", None)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "segzoo_version": __version__, **cfg}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} in the model config is not JSON-serialisable")


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in state_dict.items():
        if v.is_meta:
            raise FolderFormatError(
                f"tensor {k!r} is on the meta device (no data); load weights before saving"
            )
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def write_folder(
    directory: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """Write model.safetensors, config.json and README.md atomically.

    Everything is written to a temporary folder beside ``directory`` first. A new folder is
    renamed into place in one step; into an existing folder the files are moved one by one,
    config.json last, and a ``save_id`` shared by config.json and the safetensors header lets a
    reader detect a save that was cut off in between.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {**config, "save_id": uuid.uuid4().hex}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_file(
            _plain_tensors(state_dict),
            str(tmp / WEIGHTS_NAME),
            metadata={"format": "pt", "segzoo_save_id": config["save_id"]},
        )
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(render_card(config))
        try:
            os.rename(tmp, directory)  # atomic when the folder does not exist yet
        except OSError:
            for name in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME):
                os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_pretrained(model: SegmentationModel, directory: str | os.PathLike) -> Path:
    """Save a model as a segzoo folder (see write_folder)."""
    return write_folder(directory, model.state_dict(), folder_config(model.config))


# -- reading ------------------------------------------------------------------------------------


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a segzoo folder, checked for format and version."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise FileNotFoundError(f"no segzoo folder at {directory}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_NAME}: not a segzoo folder (save one with model.save_pretrained)"
        )
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderFormatError(
            f"{path} is not valid JSON ({err}); re-save or re-download the model"
        ) from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise FolderFormatError(f'{path} is not a segzoo config (no "format": "segzoo")')
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise FolderFormatError(
            f"{path} has format_version {version!r}; this segzoo ({__version__}) reads version "
            f"{FORMAT_VERSION}. Upgrade segzoo (pip install -U segzoo) or re-save the model."
        )
    for key in ("backbone", "head", "num_classes"):
        if key not in cfg:
            raise FolderFormatError(f"{path} lacks {key!r}")
    return cfg


def load_state_file(path: str | os.PathLike, *, save_id: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, memory-mapped; a clear error if it is truncated or corrupt."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise FolderFormatError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: re-save or re-download it"
        ) from None
    if save_id is not None and meta.get("segzoo_save_id") not in (None, save_id):
        raise FolderFormatError(
            f"{path} and its config.json come from different saves (a save was interrupted); save the model again"
        )
    return tensors


# -- model card ---------------------------------------------------------------------------------


def _metrics_list(weights: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    metrics = (weights or {}).get("metrics") or []
    return [metrics] if isinstance(metrics, Mapping) else list(metrics)


def render_card(config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """README.md for a segzoo folder: YAML front matter for the Hub, usage, labels,
    preprocessing and the known metrics (percent)."""
    from huggingface_hub import EvalResult, ModelCardData

    weights = config.get("weights") or {}
    metrics = [m for m in _metrics_list(weights) if m.get("dataset")]
    name = config.get("recipe") or f"{config['head']}_{config['backbone']}"
    tags = ["segzoo", "semantic-segmentation", config["head"], str(config["backbone"])]
    evals = []
    for m in metrics:
        for key, label in (("miou", "mIoU"), ("pixel_acc", "pixel accuracy")):
            if m.get(key) is not None:
                evals.append(
                    EvalResult(
                        task_type="image-segmentation",
                        dataset_type=str(m["dataset"]),
                        dataset_name=str(m["dataset"]),
                        dataset_split=m.get("split"),
                        metric_type="mean_iou" if key == "miou" else "accuracy",
                        metric_name=label,
                        metric_value=m[key],
                    )
                )
    data = ModelCardData(
        library_name="segzoo",
        pipeline_tag="image-segmentation",
        tags=list(dict.fromkeys(tags)),
        license=weights.get("license"),
        datasets=list(dict.fromkeys(str(m["dataset"]) for m in metrics)) or None,
        model_name=name,
        eval_results=evals or None,
    )
    labels = config.get("labels") or [f"class_{i}" for i in range(config["num_classes"])]
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH_TO_THIS_FOLDER"
    pre = config.get("preprocessing") or {}
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        f"A segzoo semantic-segmentation model: the `{config['head']}` head on the `{config['backbone']}` "
        f"backbone, {config['num_classes']} classes"
        + (", with an auxiliary head." if config.get("aux") else "."),
        "",
    ]
    if weights.get("source"):
        tag = f"`{weights['tag']}` " if weights.get("tag") else ""
        lines += [f"Weights {tag}from {weights['source']}.", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "import segzoo, torch",
        f'model = segzoo.create("{where}").eval()',
        "with torch.inference_mode():",
        '    logits = model(images)["out"]  # N x C x H x W, normalised as below',
        "```",
        "",
        f"or `segzoo predict {where} image.jpg --out masks/`.",
        "",
        "## Preprocessing",
        "",
        f"- resize: {pre.get('resize')} (shorter side), interpolation: {pre.get('interpolation', 'bilinear')}",
        f"- mean: {pre.get('mean')}",
        f"- std: {pre.get('std')}",
        f"- ignore_index: {config.get('ignore_index', 255)}",
        "",
        "## Labels",
        "",
        "| index | label |",
        "| --- | --- |",
        *[f"| {i} | {label} |" for i, label in enumerate(labels)],
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| dataset | mIoU | pixel accuracy |", "| --- | --- | --- |"]
        lines += [f"| {m['dataset']} | {m.get('miou', '-')} | {m.get('pixel_acc', '-')} |" for m in metrics]
    else:
        lines.append("No metrics recorded for these weights.")
    providers = config.get("providers") or {}
    parts = sorted(
        {(p.get("distribution"), p.get("version")) for p in providers.values() if p.get("distribution")}
    )
    lines += [
        "",
        "## Built with",
        "",
        f"segzoo {config.get('segzoo_version', __version__)}"
        + "".join(f", {d} {v}" for d, v in parts if d != "segzoo")
        + f"; folder format {config.get('format_version', FORMAT_VERSION)}.",
        "",
    ]
    return "\n".join(lines)


# -- the Hub ------------------------------------------------------------------------------------


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``ORG/REPO[@REVISION]`` -> (repo_id, revision)."""
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"hf-hub: names look like 'hf-hub:ORG/REPO' or 'hf-hub:ORG/REPO@REVISION', got {name!r}"
        )
    return repo_id, revision or None


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
        raise FolderFormatError(f"{where}: config.json and model.safetensors resolved to different snapshots")
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
    import hashlib

    from ._weights import cache_dir

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
        raise FolderFormatError(f"sha256 mismatch for {what}: expected {expected}, got {got}")
    from ._files import write_text

    write_text(marker, json.dumps(stamp))


def push_to_hub(
    source: SegmentationModel | str | os.PathLike,
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

    from .model import SegmentationModel

    api = HfApi(token=token, library_name="segzoo", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="segzoo-push-") as tmp:
        if isinstance(source, SegmentationModel):
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
