"""The segzoo folder format: model.safetensors + config.json + README.md, written and read safely.

A folder is written atomically (a new one appears in one rename; an existing one is updated under a
lock, config.json last, with a ``save_id`` that ties it to its weights), never over a folder that
is not segzoo's unless asked, and read back with the weights 64-byte aligned and checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._config import CONFIG_NAME, FORMAT, FORMAT_VERSION
from ._constants import default_labels
from ._files import locked, normal_mode
from ._loading import ALIGNMENT, aligned
from ._version import __version__
from .errors import FolderError, FolderNotFoundError, UsageError

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)

# -- writing ------------------------------------------------------------------------------------


def folder_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config.json of a model: its build config, the format header and Hugging Face's
    ``id2label`` / ``label2id``."""
    cfg = json.loads(json.dumps(dict(model_config), default=_json_default))
    if cfg.get("backbone") is None:
        raise UsageError(
            "this model's backbone is a module passed to create(), not a registered name, so a folder "
            "could not rebuild it: register the backbone in a plugin, or save its state_dict yourself"
        )
    cfg.pop("save_id", None)
    labels = cfg.get("labels")
    if labels:
        cfg["id2label"] = {str(i): label for i, label in enumerate(labels)}
        cfg["label2id"] = {label: i for i, label in enumerate(labels)}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "segzoo_version": __version__, **cfg}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise UsageError(f"{type(obj).__name__} in the model config is not JSON-serialisable")


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in state_dict.items():
        if v.is_meta:
            raise UsageError(f"tensor {k!r} is on the meta device (no data); load weights before saving")
        t = v.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def save_aligned(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file whose tensors start 64-byte aligned wherever their sizes allow.

    safetensors' own writer packs tensors right after a header padded to 8 bytes, so nearly every
    tensor lands at an odd offset: memory-mapped, oneDNN then takes other kernels than for the same
    values in torch's (64-byte aligned) memory, and a reload is not bit-exact on some CPUs. The
    format lets a header be padded with spaces and tensors come in any order, so here the header
    is padded to 64 bytes and tensors whose size is a multiple of 64 bytes come first. The file is
    read by safetensors itself; the few tensors left unaligned are copied on load.
    """
    order = sorted(tensors, key=lambda k: (tensors[k].nbytes % ALIGNMENT != 0, -tensors[k].nbytes))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for k in order:
        t = tensors[k]
        if t.dtype not in _DTYPES:
            raise UsageError(f"tensor {k!r} has dtype {t.dtype}, which a safetensors file cannot hold")
        header[k] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for k in order:
            t = tensors[k]
            if t.nbytes:
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def is_segzoo_folder(directory: Path) -> bool:
    """Whether ``directory`` holds a config.json that says it is a segzoo folder."""
    try:
        cfg = json.loads((directory / CONFIG_NAME).read_bytes()[: 1 << 20])
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == FORMAT


def check_target(directory: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder that is not a segzoo folder unless ``overwrite``:
    ``segzoo convert ... .`` must not replace a project's README.md."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder: choose another path for the model")
    if overwrite or not directory.is_dir() or is_segzoo_folder(directory):
        return
    others = sorted(p.name for p in directory.iterdir())
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise UsageError(
            f"{directory} is not empty ({shown}) and is not a segzoo folder; saving would replace its "
            f"{', '.join(n for n in FOLDER_FILES if n in others) or 'files'}. Choose a new folder, or pass "
            "overwrite=True (--overwrite) to write the model there anyway."
        )


def write_folder(
    directory: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write model.safetensors, config.json and README.md atomically.

    Everything is written to a temporary folder beside ``directory`` first. A new folder is
    renamed into place in one step; into an existing folder the files are moved under a lock (so
    concurrent saves take turns and the last one wins whole), config.json last, and a ``save_id``
    shared by config.json and the safetensors header lets a reader detect a save cut off between
    two files.
    """
    directory = Path(directory)
    check_target(directory, overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {**config, "save_id": uuid.uuid4().hex}
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_aligned(
            _plain_tensors(state_dict),
            tmp / WEIGHTS_NAME,
            metadata={"format": "pt", "segzoo_save_id": config["save_id"]},
        )
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(render_card(config))
        for p in (tmp, *tmp.iterdir()):
            normal_mode(p)
        try:
            os.rename(tmp, directory)  # atomic when the folder does not exist yet
        except OSError:
            with locked(directory):
                check_target(directory, overwrite)  # another process may have filled it meanwhile
                for name in (WEIGHTS_NAME, CARD_NAME, CONFIG_NAME):
                    os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_pretrained(model: Any, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a model (a state_dict and a ``config``) as a segzoo folder (see write_folder)."""
    return write_folder(directory, model.state_dict(), folder_config(model.config), overwrite=overwrite)


# -- reading ------------------------------------------------------------------------------------


def load_state_file(path: str | os.PathLike, *, save_id: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, memory-mapped where aligned; a clear error if it is truncated
    or corrupt, or from another save than its config.json."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FolderNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise FolderError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: re-save or "
            "re-download it"
        ) from None
    if save_id is not None and meta.get("segzoo_save_id") not in (None, save_id):
        raise FolderError(
            f"{path} and its config.json come from different saves (a save was interrupted); save the "
            "model again"
        )
    return aligned(tensors)


# -- model card ---------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans(
    {c: "\\" + c for c in "\\`*_{}[]()#+!|~$"}
    | {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": " ", "\r": " "}
)


def md(text: Any) -> str:
    """Text from a config (labels, sources, ...) as inert Markdown: no links, HTML, code or tables."""
    return str(text).translate(_MD_SPECIAL)


def _metrics_list(weights: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    metrics = (weights or {}).get("metrics") or []
    metrics = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    return [m for m in metrics if isinstance(m, Mapping)]


def render_card(config: Mapping[str, Any], repo_id: str | None = None) -> str:
    """README.md for a segzoo folder: YAML front matter for the Hub, usage, labels, preprocessing
    and the known metrics (percent). Every string from the config is escaped."""
    from huggingface_hub import EvalResult, ModelCardData

    weights = config.get("weights") or {}
    metrics = [m for m in _metrics_list(weights) if m.get("dataset")]
    name = config.get("recipe") or f"{config['head']}_{config['backbone']}"
    tags = ["segzoo", "semantic-segmentation", config["head"], str(config["backbone"])]
    evals = []
    for m in metrics:
        for key, label in (("miou", "mIoU"), ("pixel_acc", "pixel accuracy")):
            if isinstance(m.get(key), int | float):
                evals.append(
                    EvalResult(
                        task_type="image-segmentation",
                        dataset_type=str(m["dataset"]),
                        dataset_name=str(m["dataset"]),
                        dataset_split=str(m["split"]) if m.get("split") is not None else None,
                        metric_type="mean_iou" if key == "miou" else "accuracy",
                        metric_name=label,
                        metric_value=m[key],
                    )
                )
    data = ModelCardData(
        library_name="segzoo",
        pipeline_tag="image-segmentation",
        tags=list(dict.fromkeys(tags)),
        license=str(weights["license"]) if weights.get("license") else None,
        datasets=list(dict.fromkeys(str(m["dataset"]) for m in metrics)) or None,
        model_name=name,
        eval_results=evals or None,
    )
    labels = config.get("labels") or default_labels(config["num_classes"])
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH_TO_THIS_FOLDER"
    pre = config.get("preprocessing") or {}
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {md(name)}",
        "",
        f"A segzoo semantic-segmentation model: the `{config['head']}` head on the `{config['backbone']}` "
        f"backbone, {config['num_classes']} classes"
        + (", with an auxiliary head." if config.get("aux") else "."),
        "",
    ]
    if weights.get("source"):
        tag = f"{md(weights['tag'])} " if weights.get("tag") else ""
        lines += [f"Weights {tag}from {md(weights['source'])}.", ""]
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
        f"- resize: {md(pre.get('resize'))} (shorter side), interpolation: "
        f"{md(pre.get('interpolation', 'bilinear'))}",
        f"- mean: {md(pre.get('mean'))}",
        f"- std: {md(pre.get('std'))}",
        f"- ignore_index: {md(config.get('ignore_index', 255))}",
        "",
        "## Labels",
        "",
        "| index | label |",
        "| --- | --- |",
        *[f"| {i} | {md(label)} |" for i, label in enumerate(labels)],
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| dataset | mIoU | pixel accuracy |", "| --- | --- | --- |"]
        lines += [
            f"| {md(m['dataset'])} | {md(m.get('miou', '-'))} | {md(m.get('pixel_acc', '-'))} |"
            for m in metrics
        ]
    else:
        lines.append("No metrics recorded for these weights.")
    providers = config.get("providers") or {}
    parts = sorted(
        {
            (str(p.get("distribution")), str(p.get("version")))
            for p in providers.values()
            if isinstance(p, Mapping) and p.get("distribution")
        }
    )
    lines += [
        "",
        "## Built with",
        "",
        f"segzoo {md(config.get('segzoo_version', __version__))}"
        + "".join(f", {md(d)} {md(v)}" for d, v in parts if d != "segzoo")
        + f"; folder format {md(config.get('format_version', FORMAT_VERSION))}.",
        "",
    ]
    return "\n".join(lines)
