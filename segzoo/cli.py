"""The ``segzoo`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ._factory import create, list_models, model_info
from ._files import write_text
from ._names import parse_hub_name
from ._optimize import optimize
from ._plugins import plugins, registry
from ._registry import describe_builder, filter_names, unknown_name_message
from ._version import __version__
from ._viz import confusion_matrix_image, save_image
from .backbones.matrix import load_matrix, summarize
from .engine._device import device_name
from .engine.evaluate import evaluate
from .engine.predict import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    class_names,
    iter_predictions,
    write_prediction,
)
from .engine.train import TrainConfig, train
from .errors import SegzooError, UnknownNameError, UsageError
from .hub import download_folder, push_to_hub

MIN_TILE = 32  # the deepest feature of the zoo's backbones is 32 times smaller than its input

# One line and exit code 2 for these, no traceback (--debug or SEGZOO_DEBUG=1 shows it): every
# error segzoo raises on purpose, and a file or folder the user named that is missing, in the way
# or not accessible. Anything else is a bug in segzoo: its traceback and a request to report it.
USER_ERRORS = (
    SegzooError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- argument types: a bad value is an argparse error (one line, exit 2) naming the option --------


def _ranged(
    kind: type, low: float | None = None, high: float | None = None, *, open_low: bool = False,
    open_high: bool = False, note: str = "",
) -> Callable[[str], Any]:  # fmt: skip
    """An argparse ``type`` for an int or float within [low, high] (or open at either end)."""
    if low is not None and high is not None:
        interval = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    elif low is not None:
        interval = f"{'more than' if open_low else 'at least'} {low}"
    else:
        interval = f"{'less than' if open_high else 'at most'} {high}"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}"
            ) from None
        ok = value == value  # not NaN
        if low is not None:
            ok = ok and (value > low if open_low else value >= low)
        if high is not None:
            ok = ok and (value < high if open_high else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {interval}{note}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from a parser that raises SegzooError: its message becomes argparse's."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except SegzooError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _device(text: str) -> str:

    return _checked(device_name)(text)


# -- list / info / plugins ----------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:

    reg = registry()
    kinds = [k for k in ("model", "backbone", "head", "converter") if getattr(args, f"{k}s")] or [
        "model",
        "backbone",
        "head",
        "converter",
    ]
    pattern = args.filter or ""
    if pattern and not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    if args.pretrained:
        return _list_pretrained(pattern, args.json)
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        rows = []
        for name in reg.names(kind, pattern):
            e = reg.get(kind, name)
            row = {"name": name, "plugin": e.plugin, "description": e.description}
            if kind == "model":
                r = e.obj
                row.update(head=r.head, backbone=r.backbone, num_classes=r.num_classes, aux=r.aux)
            rows.append(row)
        out[kind + "s"] = rows
    if "backbone" in kinds:
        out["timm_backbones"] = _timm_rows(pattern)
    if args.json:
        _print_json(out)
        return 0
    timm_rows = out.pop("timm_backbones", None)
    for kind, rows in out.items():
        print(f"{kind} ({len(rows)})")
        if kind == "models":
            print(table([[r["name"], r["head"], r["backbone"], r["num_classes"], r["plugin"]] for r in rows],
                        ["NAME", "HEAD", "BACKBONE", "CLASSES", "PLUGIN"]))  # fmt: skip
        else:
            print(
                table(
                    [[r["name"], r["plugin"], r["description"]] for r in rows],
                    ["NAME", "PLUGIN", "DESCRIPTION"],
                )
            )
        print()
    if timm_rows is not None:
        _print_timm_rows(timm_rows, filtered=bool(pattern))
    return 0


def _timm_rows(pattern: str) -> list[dict[str, Any]]:
    """The measured status of the timm architectures whose ``timm:NAME`` matches."""

    data = load_matrix()
    names = filter_names([f"timm:{n}" for n in data["models"]], pattern or "*")
    return [summarize(n[5:], data["models"][n[5:]], data.get("heads", [])) for n in names]


def _print_timm_rows(rows: list[dict[str, Any]], filtered: bool) -> None:

    data = load_matrix()
    tiers = [r["tier"] for r in rows]
    print(
        f"timm architectures ({len(rows)}; measured with timm {data.get('timm')}: {tiers.count('real')} for real, "
        f"{tiers.count('meta')} on the meta device only, {tiers.count(None)} failed or not measured; docs/backbones.md)"
    )
    if not filtered:
        print("  filter to see them, e.g. segzoo list --backbones convnext")
        return
    print(table([[r["name"], r["module"], f"{r['params'] / 1e6:.1f}" if "params" in r else "",
                  "/".join(r.get("output_strides", [])), r["tier"] or "-", r.get("export", {}).get("how", ""),
                  " ".join(r["heads"]) or r.get("cause", "")] for r in rows],
                ["NAME", "FAMILY", "PARAMS(M)", "OUTPUT STRIDES", "TIER", "EXPORT", "HEADS THAT WORK"]))  # fmt: skip


def _list_pretrained(pattern: str, as_json: bool) -> int:

    rows = []
    for full in list_models(pattern, pretrained=True):
        name, tag = full.split(".", 1)
        recipe = registry().get("model", name).obj
        ws = recipe.weights[tag]
        m = ws.metrics or {}
        rows.append({"name": full, "default": tag == recipe.default_tag, "num_classes": ws.num_classes,
                     "dataset": m.get("dataset"), "miou": m.get("miou"), "pixel_acc": m.get("pixel_acc"),
                     "source": "hub" if ws.hf_hub_id else "url"})  # fmt: skip
    if as_json:
        _print_json(rows)
        return 0
    print(table([[r["name"], "yes" if r["default"] else "", r["num_classes"], r["dataset"], r["miou"], r["pixel_acc"]]
                 for r in rows], ["NAME.TAG", "DEFAULT", "CLASSES", "DATASET", "mIoU", "PIXEL ACC"]))  # fmt: skip
    return 0


def cmd_info(args: argparse.Namespace) -> int:

    reg = registry()
    name = args.name
    if name.startswith(("local-dir:", "hf-hub:")):
        info: dict[str, Any] = {"kind": "saved model", **model_info(name)}
    elif name.split(".", 1)[0] in reg.names("model"):
        info = {"kind": "model", **model_info(name)}
    else:
        for kind in ("backbone", "head"):
            try:
                e = reg.get(kind, name)
            except UnknownNameError:
                continue
            info = {
                "kind": kind,
                "name": name,
                "description": e.description,
                "provider": e.provider(),
                "kwargs": describe_builder(e),
            }
            if kind == "backbone" and name.startswith("timm:"):
                info["verified"] = _timm_status(name[5:])
            break
        else:
            known = reg.names("model") + reg.names("backbone") + reg.names("head")
            raise UnknownNameError(unknown_name_message("model, backbone or head", name, known))
    if args.json:
        _print_json(info)
        return 0
    for key, value in info.items():
        if key == "features":
            print("features:")
            print(table([[f["name"], f["channels"], f["reduction"], ",".join(f["roles"])] for f in value],
                        ["  NAME", "CHANNELS", "REDUCTION", "ROLES"]))  # fmt: skip
        elif key == "weights":
            print("weights:" if value else "weights: none")
            for tag, ws in value.items():
                if tag == "saved":
                    print(f"  source: {ws.get('source')}, tag: {ws.get('tag')}, metrics: {ws.get('metrics')}")
                    continue
                m = ws.get("metrics") or {}
                score = (
                    f" mIoU {m.get('miou')} / pixel acc {m.get('pixel_acc')} on {m.get('dataset')}"
                    if m
                    else ""
                )
                print(f"  {info['name']}.{tag}{' (default)' if ws['default'] else ''}:{score}")
                print(f"    source: {ws.get('source') or ws.get('url') or ws.get('hf_hub_id')}")
        elif isinstance(value, dict | list):
            print(f"{key}: {json.dumps(value, default=str)}")
        else:
            print(f"{key}: {value}")
    return 0


def _timm_status(arch: str) -> dict[str, Any]:

    data = load_matrix()
    entry = data["models"].get(arch)
    if entry is None:
        return {"tier": None, "cause": f"not in the matrix measured with timm {data.get('timm')}"}
    s = summarize(arch, entry, data.get("heads", []))
    return {k: v for k, v in s.items() if k not in ("name", "module")}


def cmd_plugins(args: argparse.Namespace) -> int:

    recs = plugins()
    status = 1 if args.strict and any(r.failed for r in recs) else 0
    if args.json:
        _print_json([r.__dict__ | {"failed": r.failed} for r in recs])
        return status
    rows = []
    for r in recs:
        what = "; ".join(f"{k}s: {', '.join(v)}" for k, v in r.registered.items()) or "-"
        source = (
            "built-in" if r.builtin else (f"{r.distribution} {r.version}" if r.distribution else "run time")
        )
        rows.append([r.name, source, ",".join(r.hooks) or "-", what if not r.failed else "-",
                     "FAILED: " + r.error if r.failed else "ok"])  # fmt: skip
    print(table(rows, ["PLUGIN", "SOURCE", "HOOKS", "REGISTERED", "STATUS"]))
    failed = [r.name for r in recs if r.failed]
    if args.strict and failed:
        print(f"segzoo plugins: error: --strict: {len(failed)} plugin(s) failed: {', '.join(failed)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:

    converter = registry().get("converter", args.source).obj
    if not args.inputs:
        raise ValueError(f"segzoo convert {args.source} needs its input(s) and then OUTDIR")
    inputs = [
        str(download_folder(*parse_hub_name(i[len("hf-hub:") :]))) if i.startswith("hf-hub:") else i
        for i in args.inputs
    ]
    folder = converter(*inputs, outdir=args.outdir, overwrite=args.overwrite)
    print(f"wrote {folder} (model.safetensors, config.json, README.md); load it with "
          f"segzoo.create('local-dir:{folder}')")  # fmt: skip
    return 0


def cmd_push(args: argparse.Namespace) -> int:

    url = push_to_hub(
        args.directory,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        commit_message=args.message,
        token=args.token,
    )
    print(f"pushed {args.directory} to {args.repo_id}: {url}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    result = train(cfg)
    if result.best_dir is not None:
        print(f"best val mIoU {result.best_miou:.4f} after {result.steps} steps: {result.best_dir}")
    return 0


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One argument per TrainConfig field, with its type, default, help text and choices, so the CLI
    and the Python API cannot drift apart; a required field is a positional argument."""

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        helptext, choices, parse = f.metadata["help"], f.metadata.get("choices"), f.metadata.get("parse")
        if f.default is dataclasses.MISSING:
            p.add_argument(f.name, metavar=f.name.upper(), help=helptext)
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if type(None) in args else kind
        default = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        kw: dict[str, Any] = {"default": None, "help": f"{helptext} (default: {default})"}
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            p.add_argument(flag, type=item, nargs=len(typing.get_args(base)), metavar=("LOW", "HIGH"), **kw)
        else:
            p.add_argument(flag, type=_checked(parse) if parse else base, choices=choices, **kw)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args)


# -- predict / eval / data ----------------------------------------------------------------------


def _load_model(name: str, device: str | None):
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return create(name, pretrained=True).to(device), device


def _maybe_optimize(model, args: argparse.Namespace):
    """--fast / --compile: segzoo.optimize's inference path."""
    if not (getattr(args, "fast", False) or getattr(args, "compile", False)):
        return model

    return optimize(model, compile=args.compile)


def cmd_predict(args: argparse.Namespace) -> int:

    model, device = _load_model(args.model, args.device)
    model = _maybe_optimize(model, args)
    labels = class_names(model)
    n = 0
    for pred in iter_predictions(
        model, args.images, size=args.size, batch_size=args.batch_size, device=device,
        tile=args.tile, overlap=args.overlap, progress=True, max_pixels=args.max_pixels,
    ):  # fmt: skip
        write_prediction(pred, args.out, labels, alpha=args.alpha)
        n += 1
    print(
        f"wrote {n} masks to {os.path.join(args.out, 'masks')} and overlays to {os.path.join(args.out, 'overlays')}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    split = None if args.split == "all" else (args.split or "val")
    model, device = _load_model(args.model, args.device)
    model = _maybe_optimize(model, args)
    num_classes = model.config.get("num_classes")
    if args.format == "synth":
        from .data import SYNTHETIC_CLASSES, SyntheticSegmentation

        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise UsageError(
                f"the synthetic set has 2 to {len(SYNTHETIC_CLASSES)} classes; this model predicts {num_classes}"
            )
        data = SyntheticSegmentation(args.n, seed=args.seed, split=split, num_classes=num_classes)
        where = f"synthetic n={args.n} seed={args.seed}"
    else:
        from .data import detect_format, open_dataset

        if not args.data:
            raise UsageError("--data PATH is required (or --format synth for the generated dataset)")
        fmt = args.format or detect_format(args.data)
        if fmt == "folder" and args.split is None and not (Path(args.data) / "splits").is_dir():
            split = None
            print(f"{args.data} has no splits/ folder: evaluating every image", file=sys.stderr)
        # the model's class count names the classes only where the folder does not
        named = any((Path(args.data) / f).is_file() for f in ("classes.txt", "classes.json"))
        data = open_dataset(args.data, fmt, split, num_classes=None if named else num_classes,
                            categories=_split_list(args.categories), labels=model.config.get("labels"))  # fmt: skip
        where = args.data
    shown = "all" if split is None else split
    print(f"evaluating {args.model} on {where} (split {shown}, {len(data)} images)", file=sys.stderr)
    result = evaluate(model, data, batch_size=args.batch_size, size=args.size, device=device,
                      num_workers=args.workers, progress=True, max_pixels=args.max_pixels)  # fmt: skip
    print(result.table())
    result.extra.update(model=args.model, data=where, format=args.format, split=shown, size=args.size)
    if args.json:
        write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    cm_path = args.confusion_matrix or (
        str(Path(args.json).with_suffix(".confusion.png")) if args.json else None
    )
    if cm_path:
        save_image(confusion_matrix_image(result.confusion_matrix, result.class_names), cm_path)
        print(f"wrote {cm_path}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import write_synthetic

    out = write_synthetic(args.out, args.n, seed=args.seed, num_classes=args.num_classes,
                          val_fraction=args.val_fraction, progress=lambda it: tqdm(it, unit="img", disable=None))  # fmt: skip
    print(f"wrote {args.n} samples to {out} (images/, masks/, classes.txt, splits/train.txt, splits/val.txt)")
    return 0


def _split_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def cmd_data_coco_subset(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data import write_coco_subset

    out = write_coco_subset(args.annotations, args.images, args.out, _split_list(args.categories) or [],
                            min_area=args.min_area, val_fraction=args.val_fraction, seed=args.seed,
                            progress=lambda it: tqdm(it, unit="img", disable=None))  # fmt: skip
    n = len((out / "splits" / "train.txt").read_text().split()) + len(
        (out / "splits" / "val.txt").read_text().split()
    )
    classes = (out / "classes.txt").read_text().split("\n")
    print(f"wrote {n} images of {', '.join(c for c in classes[1:] if c)} to {out} "
          "(images/, masks/, classes.txt, splits/train.txt, splits/val.txt)")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, read_metadata

    model, _ = _load_model(args.model, "cpu")
    path = export(model, args.out, args.format, static=args.static, keep_aux=args.keep_aux,
                  multiple=args.multiple)  # fmt: skip
    size = read_metadata(path)["size"]
    if size["static"]:
        shape = f"N x 3 x {size['static'][0]} x {size['static'][1]}"
    else:
        shape = f"N x 3 x H x W, H and W multiples of {size['multiple']} and at least {size['min']}"
    print(f"wrote {path} ({args.format}; input {shape}) and its metadata {path}.json")
    return 0


# -- wiring -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="segzoo", description="A plugin-based semantic-segmentation model zoo."
    )
    parser.add_argument("--version", action="version", version=f"segzoo {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list models, backbones and heads")
    p.add_argument("filter", nargs="?", help="fnmatch pattern, or a substring (e.g. 'deeplab*', 'mobilenet')")
    p.add_argument("--models", action="store_true", help="only models")
    p.add_argument("--backbones", action="store_true", help="only backbones")
    p.add_argument("--heads", action="store_true", help="only heads")
    p.add_argument("--converters", action="store_true", help="only checkpoint converters")
    p.add_argument("--pretrained", action="store_true", help="list model weight tags (name.tag)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe a model, backbone or head")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plugins", help="installed plugins, what they registered, failures")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 if a plugin failed or is missing")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("convert", help="convert another library's checkpoint into a segzoo folder")
    p.add_argument(
        "source", help="the converter: torchvision, or one a plugin adds (segzoo list --converters)"
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="what the converter reads: torchvision RECIPE CHECKPOINT.pth; hf-hub:ORG/REPO is downloaded first",
    )
    p.add_argument("outdir", help="the segzoo folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder that is not segzoo's")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("push", help="push a segzoo folder to the Hugging Face Hub")
    p.add_argument("directory", help="a folder written by save_pretrained or convert")
    p.add_argument("repo_id", help="ORG/REPO on the Hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "train",
        help="train or fine-tune a model (runs under torchrun too)",
        description="Train or fine-tune any model segzoo.create accepts, with torchvision's reference "
        "recipe by default. Under torchrun --nproc_per_node=N it trains with DistributedDataParallel.",
    )
    _add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "demo", help="the whole pipeline offline: synthetic data, train, eval, save, reload, predict"
    )
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument(
        "--n", type=_ranged(int, 1), default=1000, help="synthetic samples to train and validate on"
    )
    p.set_defaults(func=cmd_demo)

    model_help = "any name segzoo.create accepts: local-dir:DIR, hf-hub:ORG/REPO, NAME or NAME.TAG"
    p = sub.add_parser("predict", help="segment images: palette PNG masks and overlays")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/masks/NAME.png and DIR/overlays/NAME.png"
    )
    _run_options(p)
    p.add_argument("--tile", type=_ranged(int, MIN_TILE, note=f" (the models downsample up to {MIN_TILE} times)"),
                   metavar="SIZE", help=f"sliding-window inference with SIZE x SIZE tiles, SIZE >= {MIN_TILE}")  # fmt: skip
    p.add_argument("--overlap", type=_ranged(float, 0, 1, open_high=True), default=0.25, metavar="F",
                   help="tile overlap fraction in [0, 1) (0.25)")  # fmt: skip
    p.add_argument("--alpha", type=_ranged(float, 0, 1), default=0.5,
                   help="opacity of the class colours in overlays, in [0, 1] (0.5)")  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="mIoU, accuracies and per-class IoU on a labelled dataset")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--data", metavar="PATH", help="dataset folder (not needed with --format synth)")
    p.add_argument("--format", choices=["voc", "folder", "coco", "cityscapes", "ade20k", "synth"],
                   help="dataset layout (default: detected)")  # fmt: skip
    p.add_argument(
        "--split",
        help="split to evaluate (default: val; a folder dataset without splits/ and 'all': every image)",
    )
    p.add_argument("--categories", metavar="A,B",
                   help="--format coco: COCO category names or ids (default: the model's labels when they "
                   "are COCO categories, else the 20 Pascal VOC ones)")  # fmt: skip
    p.add_argument(
        "--n", type=_ranged(int, 1), default=200, help="--format synth: samples in the generated set (200)"
    )
    p.add_argument("--seed", type=int, default=0, help="--format synth: seed of the generated set (0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics and the confusion matrix as JSON")
    p.add_argument("--confusion-matrix", metavar="PNG",
                   help="write the row-normalised confusion matrix (default with --json: OUT.confusion.png)")  # fmt: skip
    _run_options(p)
    p.add_argument("--workers", type=_ranged(int, 0), default=0, help="data-loading worker processes (0)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export", help="export a model to ONNX, a torch.export program or an AOTInductor package"
    )
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--format", required=True, choices=["onnx", "pt2", "aoti"],
                   help="onnx (ONNX Runtime), pt2 (torch.export.load), aoti (AOTInductor package for C++)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write (metadata: PATH.json)")
    p.add_argument("--static", type=int, nargs=2, metavar=("H", "W"), help="export one input size")
    p.add_argument("--keep-aux", action="store_true", help="also return the auxiliary head's output")
    p.add_argument("--multiple", type=int, metavar="M",
                   help="H and W multiples of M (default: the least constraint the model exports with)")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("synth", help="write the synthetic dataset in the folder layout")
    p.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--n", type=_ranged(int, 1), default=200, help="number of samples (200)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--num-classes", type=int, default=6, help="classes including background, 2..6 (6)")
    p.add_argument("--val-fraction", type=_ranged(float, 0, 1, open_low=True, open_high=True), default=0.2,
                   help="share of samples in splits/val.txt, in (0, 1) (0.2)")  # fmt: skip
    p.set_defaults(func=cmd_data_synth, command="data synth")
    p = data_sub.add_parser("coco-subset", help="write COCO images of some categories in the folder layout")
    p.add_argument(
        "annotations", metavar="ANNOTATIONS", help="a COCO instances file, e.g. instances_train2017.json"
    )
    p.add_argument("images", metavar="IMAGES", help="the folder of its images, e.g. train2017/")
    p.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    p.add_argument(
        "--categories", required=True, metavar="A,B", help="COCO category names or ids, e.g. cat,dog"
    )
    p.add_argument("--min-area", type=float, default=1000,
                   help="leave out images whose kept annotations cover this many pixels or fewer (1000)")  # fmt: skip
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images in splits/val.txt (0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (0)")
    p.set_defaults(func=cmd_data_coco_subset, command="data coco-subset")
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:

    p.add_argument(
        "--device", type=_device, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)"
    )
    p.add_argument("--batch-size", type=_ranged(int, 1), default=1, help="images per forward pass (1)")
    p.add_argument("--size", type=_ranged(int, 0),
                   help="resize the shorter side to SIZE (default: the model's preprocessing; 0 keeps the size)")  # fmt: skip
    p.add_argument("--max-pixels", type=_ranged(int, 1), metavar="N",
                   help=f"refuse images of more than N pixels as read or resized (default: ${MAX_PIXELS_ENV}, "
                   f"else {DEFAULT_MAX_PIXELS})")  # fmt: skip
    p.add_argument("--fast", action="store_true",
                   help="segzoo.optimize: BatchNorm folded, channels_last, bf16 autocast on GPU")  # fmt: skip
    p.add_argument(
        "--compile", action="store_true", help="--fast and torch.compile (compiles at each new size)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("segzoo: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if args.debug or os.environ.get("SEGZOO_DEBUG"):
            raise
        print(f"segzoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        torch = sys.modules.get("torch")
        if isinstance(err, MemoryError | getattr(torch, "OutOfMemoryError", MemoryError)):
            print(f"segzoo {args.command}: error: out of memory ({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                  "use a smaller --batch-size or --size, --tile, or another --device", file=sys.stderr)  # fmt: skip
            return 2
        traceback.print_exc()
        print(
            f"segzoo {args.command}: this is a bug in segzoo {__version__}, not a mistake of yours: please "
            "report it to the segzoo developers with the command you ran and the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
