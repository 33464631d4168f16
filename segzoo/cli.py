"""The ``segzoo`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

USER_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError, NotADirectoryError, PermissionError)


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
                "kwargs": describe_builder(e.obj),
            }
            break
        else:
            known = reg.names("model") + reg.names("backbone") + reg.names("head")
            raise UnknownNameError(unknown_name_message("model", name, known))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args)


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

    p = sub.add_parser("demo", help="run every registered model on a generated image")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.set_defaults(func=cmd_demo)
    return parser


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
