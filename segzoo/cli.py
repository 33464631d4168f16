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


def cmd_info(args: argparse.Namespace) -> int:
    from ._factory import model_info
    from ._plugins import registry
    from ._registry import UnknownNameError, describe_builder, unknown_name_message

    reg = registry()
    name = args.name
    if name in reg.names("model"):
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
