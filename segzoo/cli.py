"""The ``segzoo`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# One line and exit code 2 for these, no traceback (--debug or SEGZOO_DEBUG=1 shows it): bad
# input, missing files, refused or failed downloads and pushes (OSError), a diverging training run.
USER_ERRORS = (ValueError, TypeError, LookupError, OSError, FloatingPointError)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with left-aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- list / info / plugins ----------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from ._plugins import registry

    reg = registry()
    kinds = [k for k in ("model", "backbone", "head") if getattr(args, f"{k}s")] or [
        "model",
        "backbone",
        "head",
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
    if args.json:
        _print_json(out)
        return 0
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
    return 0


def _list_pretrained(pattern: str, as_json: bool) -> int:
    from ._factory import list_models
    from ._plugins import registry

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
    from ._factory import model_info
    from ._plugins import registry
    from ._registry import UnknownNameError, describe_builder, unknown_name_message

    reg = registry()
    name = args.name
    if name.split(".", 1)[0] in reg.names("model"):
        info: dict[str, Any] = {"kind": "model", **model_info(name)}
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


def cmd_plugins(args: argparse.Namespace) -> int:
    from ._plugins import plugins

    recs = plugins()
    if args.json:
        _print_json([r.__dict__ | {"failed": r.failed} for r in recs])
        return 0
    rows = []
    for r in recs:
        what = "; ".join(f"{k}s: {', '.join(v)}" for k, v in r.registered.items()) or "-"
        source = (
            "built-in" if r.builtin else (f"{r.distribution} {r.version}" if r.distribution else "run time")
        )
        rows.append([r.name, source, ",".join(r.hooks) or "-", what if not r.failed else "-",
                     "FAILED: " + r.error if r.failed else "ok"])  # fmt: skip
    print(table(rows, ["PLUGIN", "SOURCE", "HOOKS", "REGISTERED", "STATUS"]))
    return 1 if args.strict and any(r.failed for r in recs) else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_torchvision

    folder = convert_torchvision(args.name, args.checkpoint, args.outdir)
    print(f"wrote {folder} (model.safetensors, config.json, README.md); load it with "
          f"segzoo.create('local-dir:{folder}')")  # fmt: skip
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

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
    import dataclasses

    from .engine.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    result = train(cfg)
    if result.best_dir is not None:
        print(f"best val mIoU {result.best_miou:.4f} after {result.steps} steps: {result.best_dir}")
    return 0


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, so the CLI and the Python API cannot drift apart."""
    import dataclasses
    import typing

    from .engine.train import FIELD_HELP, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            p.add_argument("model", help=FIELD_HELP["model"])
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f"{FIELD_HELP.get(f.name, '')} (default: {default})"
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif typing.get_origin(base) is tuple:
            p.add_argument(flag, type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help=helptext)
        else:
            p.add_argument(flag, type=base, default=None, help=helptext)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args)


# -- predict / eval / data ----------------------------------------------------------------------


def _load_model(name: str, device: str | None):
    import torch

    from . import create

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return create(name, pretrained=True).to(device), device


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import class_names, iter_predictions, write_prediction

    model, device = _load_model(args.model, args.device)
    labels = class_names(model)
    n = 0
    for pred in iter_predictions(
        model, args.images, size=args.size, batch_size=args.batch_size, device=device,
        tile=args.tile, overlap=args.overlap, progress=True,
    ):  # fmt: skip
        write_prediction(pred, args.out, labels, alpha=args.alpha)
        n += 1
    print(
        f"wrote {n} masks to {os.path.join(args.out, 'masks')} and overlays to {os.path.join(args.out, 'overlays')}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._files import write_text
    from ._viz import confusion_matrix_image, save_image
    from .engine.evaluate import evaluate

    split = None if args.split == "all" else args.split
    model, device = _load_model(args.model, args.device)
    num_classes = model.config.get("num_classes")
    if args.format == "synth":
        from .data import SYNTHETIC_CLASSES, SyntheticSegmentation

        if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
            raise ValueError(
                f"the synthetic set has 2 to {len(SYNTHETIC_CLASSES)} classes; this model predicts {num_classes}"
            )
        data = SyntheticSegmentation(args.n, seed=args.seed, split=split, num_classes=num_classes)
        where = f"synthetic n={args.n} seed={args.seed}"
    else:
        from .data import open_dataset

        if not args.data:
            raise ValueError("--data PATH is required (or --format synth for the generated dataset)")
        # the model's class count names the classes only where the folder does not
        named = any((Path(args.data) / f).is_file() for f in ("classes.txt", "classes.json"))
        data = open_dataset(args.data, args.format, split, num_classes=None if named else num_classes)
        where = args.data
    print(f"evaluating {args.model} on {where} (split {args.split}, {len(data)} images)", file=sys.stderr)
    result = evaluate(model, data, batch_size=args.batch_size, size=args.size, device=device,
                      num_workers=args.workers, progress=True)  # fmt: skip
    print(result.table())
    result.extra.update(model=args.model, data=where, format=args.format, split=args.split, size=args.size)
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


# -- wiring -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
    p.add_argument("--pretrained", action="store_true", help="list model weight tags (name.tag)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe a model, backbone or head")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plugins", help="installed plugins, what they registered, failures")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("convert", help="convert another library's checkpoint into a segzoo folder")
    p.add_argument("source", choices=["torchvision"], help="where the checkpoint comes from")
    p.add_argument("name", help="the segzoo recipe, e.g. deeplabv3_resnet101")
    p.add_argument("checkpoint", help="the .pth file (read with torch.load(weights_only=True))")
    p.add_argument("outdir", help="the segzoo folder to write")
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
    p.add_argument("--n", type=int, default=1000, help="synthetic samples to train and validate on")
    p.set_defaults(func=cmd_demo)

    model_help = "any name segzoo.create accepts: local-dir:DIR, hf-hub:ORG/REPO, NAME or NAME.TAG"
    p = sub.add_parser("predict", help="segment images: palette PNG masks and overlays")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/masks/NAME.png and DIR/overlays/NAME.png"
    )
    _run_options(p)
    p.add_argument("--tile", type=int, metavar="SIZE", help="sliding-window inference with SIZE x SIZE tiles")
    p.add_argument("--overlap", type=float, default=0.25, metavar="F", help="tile overlap fraction (0.25)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in overlays (0.5)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="mIoU, accuracies and per-class IoU on a labelled dataset")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--data", metavar="PATH", help="dataset folder (not needed with --format synth)")
    p.add_argument("--format", choices=["voc", "folder", "synth"], help="dataset layout (default: detected)")
    p.add_argument(
        "--split", default="val", help="split to evaluate ('all': every image of a folder dataset)"
    )
    p.add_argument("--n", type=int, default=200, help="--format synth: samples in the generated set (200)")
    p.add_argument("--seed", type=int, default=0, help="--format synth: seed of the generated set (0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics and the confusion matrix as JSON")
    p.add_argument("--confusion-matrix", metavar="PNG",
                   help="write the row-normalised confusion matrix (default with --json: OUT.confusion.png)")  # fmt: skip
    _run_options(p)
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (0)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = data_sub.add_parser("synth", help="write the synthetic dataset in the folder layout")
    p.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--n", type=int, default=200, help="number of samples (200)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--num-classes", type=int, default=6, help="classes including background, 2..6 (6)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of samples in splits/val.txt (0.2)")
    p.set_defaults(func=cmd_data_synth, command="data synth")
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (1)")
    p.add_argument("--size", type=int,
                   help="resize the shorter side to SIZE (default: the model's preprocessing; 0 keeps the size)")  # fmt: skip


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


if __name__ == "__main__":
    sys.exit(main())
