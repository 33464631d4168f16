"""The measured timm backbone matrix (``timm_matrix.json``, written by
``benchmarks/backbone_matrix.py``): what each architecture gives and which heads work on it.

Only JSON is read here (no torch, no timm), so ``segzoo list`` and ``segzoo info`` stay quick.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from importlib import resources
from typing import Any

__all__ = [
    "cause",
    "export_kind",
    "load_matrix",
    "outcome",
    "render_markdown",
    "sample",
    "summarize",
    "totals",
]

MATRIX_FILE = "timm_matrix.json"

# A head error with one of these causes means the head does not fit this backbone (it needs a
# feature the backbone lacks), not that something is broken.
INCOMPATIBLE = "head needs a feature the backbone lacks"


@functools.cache
def load_matrix() -> dict[str, Any]:
    """The matrix shipped with segzoo (``{"models": {}}`` when absent)."""
    try:
        text = resources.files("segzoo.backbones").joinpath(MATRIX_FILE).read_text()
    except FileNotFoundError:
        return {"models": {}}
    return json.loads(text)


def cause(error: str) -> str:
    """The kind of a recorded error, for grouping: matched on the messages segzoo and timm write."""
    rules = (
        ("features_only not implemented", "no features_only in timm"),
        ("no feature at reduction", INCOMPATIBLE),
        ("returns a single feature", INCOMPATIBLE),
        # the plugin heads' wording: "needs a backbone feature at ...", "needs backbone features at
        # reductions ...", "DPT needs 4 backbone features, the backbone has 3"
        ("needs a backbone feature", INCOMPATIBLE),
        ("needs backbone features", INCOMPATIBLE),
        ("backbone features, the backbone has", INCOMPATIBLE),
        ("cannot be dilated", "not dilatable"),
        ("not dilatable: ", "not dilatable"),
        ("timeout", "timeout (per-architecture limit)"),
        ("worker died", "worker died (out of memory)"),
        ("does not run even at its own input size", "does not run at its own input size"),
        ("batch of 1", "needs a batch of 2 or more in train mode"),
    )
    for needle, kind in rules:
        if needle in error:
            return kind
    stage, _, rest = error.partition(": ")
    exc = rest.split(":", 1)[0] if rest else stage.split(":", 1)[0]
    return f"{stage} fails ({exc})" if rest else f"fails ({exc})"


def outcome(result: str) -> str:
    """A head's result as ``ok``, ``incompatible`` or ``fails`` (what the sample test compares)."""
    if result == "ok":
        return "ok"
    return "incompatible" if cause(result) == INCOMPATIBLE else "fails"


def sample(data: dict[str, Any]) -> dict[str, str]:
    """The stratified sample CI re-checks: per timm module, its smallest architecture that built
    on the meta device (by parameters); for a module where none did, its first that failed."""
    best: dict[str, tuple[int, str]] = {}
    for name, e in sorted(data["models"].items()):
        meta = e.get("meta") or {}
        if "params" in meta:
            key = (meta["params"], name)
        elif "error" in meta:
            key = (1 << 62, name)  # only if no architecture of the module built
        else:
            continue
        best[e["module"]] = min(best.get(e["module"], key), key)
    return {mod: name for mod, (_, name) in sorted(best.items())}


def _tier_ok(rec: dict[str, Any] | None, heads: list[str]) -> bool:
    return bool(rec) and "error" not in rec and "skipped" not in rec and all(h in rec["heads"] for h in heads)


def summarize(name: str, entry: dict[str, Any], heads: list[str]) -> dict[str, Any]:
    """One architecture: its best passed tier, the heads that work, fit not, or fail, and why."""
    meta, real = entry.get("meta"), entry.get("real")
    out: dict[str, Any] = {"name": f"timm:{name}", "module": entry.get("module")}
    if meta and "error" not in meta:
        out.update(
            params=meta["params"],
            strides=[r for _, r in meta["features"]],
            channels=[c for c, _ in meta["features"]],
            input=meta["input"],
            min_size=meta["min_size"],
            output_strides=["32"]
            + [o for o in ("16", "8") if meta["os"].get(o) in ("as built", "timm", "segzoo")],
            dilation={
                o: v if v in ("as built", "timm", "segzoo") else cause(v) for o, v in meta["os"].items()
            },
        )
    if _tier_ok(real, heads):
        tier, results = "real", real["heads"]  # type: ignore[index]
    elif _tier_ok(meta, heads):
        tier, results = "meta", meta["heads"]  # type: ignore[index]
    else:
        tier, results = None, {}
    out["tier"] = tier
    out["heads"] = sorted(h for h in heads if results.get(h) == "ok")
    out["incompatible"] = sorted(
        h for h in heads if h in results and results[h] != "ok" and cause(results[h]) == INCOMPATIBLE
    )
    out["failing"] = {
        h: results[h] for h in heads if h in results and results[h] != "ok" and h not in out["incompatible"]
    }
    out["verified"] = tier == "real" and not out["failing"] and bool(out["heads"])
    if tier is None:
        failed = next((r for r in (real, meta) if r and "error" in r), None)
        if failed:
            out["error"], out["cause"] = failed["error"], cause(failed["error"])
        else:
            out["cause"] = "pending (not measured yet)"
    if real and "skipped" in real:
        out["real"] = real["skipped"]
    elif real and "error" in real and tier == "meta":
        out["real"] = "failed: " + real["error"]
    elif not real:
        out["real"] = "pending (not measured yet)"
    if "export" in entry:
        out["export"] = {k: v for k, v in entry["export"].items() if k != "s"}
        out["export"]["how"] = export_kind(entry["export"])
    return out


def export_kind(rec: dict[str, Any]) -> str:
    """A measured ``torch.export`` as one word: ``dynamic`` (any height and width), ``k*N``
    (multiples of N), ``static`` (one size), or ``fails``."""
    if rec.get("static") != "ok":
        return "fails"
    dynamic = rec.get("dynamic", "")
    if dynamic == "any size":
        return "dynamic"
    if dynamic.startswith("multiples of "):
        return "k*" + dynamic.removeprefix("multiples of ")
    return "static"


def totals(data: dict[str, Any]) -> dict[str, Any]:
    """Counts per tier, per head and per failure cause."""
    heads = data.get("heads", [])
    rows = [summarize(n, e, heads) for n, e in sorted(data["models"].items())]
    causes: Counter[str] = Counter()
    for r in rows:
        if r["tier"] is None:
            causes[r.get("cause") or cause(r.get("error", ""))] += 1
        for h, err in r["failing"].items():
            causes[f"{h}: {cause(err)}"] += 1
        if r.get("real", "").startswith("too large"):
            causes["tier real skipped: too large for this machine"] += 1
        elif r.get("real", "").startswith("failed: "):
            causes[f"tier real: {cause(r['real'].removeprefix('failed: '))}"] += 1
        for o, how in (r.get("dilation") or {}).items():
            if how not in ("as built", "timm", "segzoo"):
                causes[f"output_stride={o}: {how}"] += 1
        if "export" in r and r["export"]["how"] == "fails":
            causes[f"torch.export: {cause(r['export'].get('error') or r['export']['static'])}"] += 1
    return {
        "architectures": len(rows),
        "meta_passed": sum(r["tier"] in ("meta", "real") for r in rows),
        "real_passed": sum(r["tier"] == "real" for r in rows),
        "verified_real_every_compatible_head": sum(r["verified"] for r in rows),
        "real_pending": sum(r.get("real") == "pending (not measured yet)" for r in rows),
        "per_head": {h: sum(h in r["heads"] for r in rows) for h in heads},
        "export": dict(Counter(r["export"]["how"] for r in rows if "export" in r).most_common()),
        "output_stride": {
            o: dict(Counter((r.get("dilation") or {}).get(o) for r in rows if "dilation" in r).most_common())
            for o in ("16", "8")
        },
        "seconds": {
            tier: _seconds([e[tier]["s"] for e in data["models"].values() if "s" in (e.get(tier) or {})])
            for tier in ("meta", "real", "export")
        },
        "causes": dict(causes.most_common()),
    }


def _seconds(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "total": round(sum(values)),
        "median": values[len(values) // 2],
        "max": values[-1],
    }


def render_markdown(data: dict[str, Any]) -> str:
    """docs/backbones.md: totals, then one row per architecture."""
    heads = data.get("heads", [])
    t = totals(data)
    chosen = sample(data)
    lines = [
        "# timm backbones: measured, not assumed",
        "",
        "Generated by `benchmarks/backbone_docs.py` from `segzoo/backbones/timm_matrix.json`, which",
        "`benchmarks/backbone_matrix.py` writes (see the end of this page). Do not edit by hand.",
        "",
        f"timm {data.get('timm')}, torch {data.get('torch')}, segzoo {data.get('segzoo')}; heads: "
        + ", ".join(heads)
        + ".",
        "",
        f"- architectures: {t['architectures']}",
        f"- tier meta passed (built on the meta device, every head built and run for shapes): {t['meta_passed']}",
        f"- tier real passed (every head: forward in train and eval mode, backward, at a small size): "
        f"{t['real_passed']}",
        f"- verified for real with every compatible head: {t['verified_real_every_compatible_head']}",
        f"- tier real not measured yet: {t['real_pending']}"
        + (
            " (the costliest under the parameter limit; `--tier real` resumes there)"
            if t["real_pending"]
            else ""
        ),
        "- per head (architectures where it works, best tier): "
        + ", ".join(f"{h} {n}" for h, n in t["per_head"].items()),
        f"- torch.export with one working head, measured for {sum(t['export'].values())} architectures "
        f"({sum('export' in data['models'][n] for n in chosen.values())} of the {len(chosen)} in the "
        "stratified sample, one per timm module): "
        + ", ".join(f"{how} {n}" for how, n in t["export"].items()),
        "- output stride 16 / 8 (measured on the meta device; how: as built, timm's own dilation,"
        " segzoo's generic dilation, or why not): "
        + "; ".join(
            f"{o}: " + ", ".join(f"{how} {n}" for how, n in counts.items())
            for o, counts in t["output_stride"].items()
        ),
        "",
        "## Failures and skips by cause",
        "",
        "| cause | count |",
        "|---|---|",
    ]
    lines += [f"| {c} | {n} |" for c, n in t["causes"].items()]
    lines += [
        "",
        "## Architectures",
        "",
        "Tier: `real` (forward and backward for real), `meta` (shapes only), `-` (failed or not measured;",
        "see the cause). Output strides: `32` as built; `16`/`8` by timm's own dilation (t) or segzoo's",
        "generic dilation (s). Heads: those that work; in brackets those that do not fit (the backbone",
        "lacks a feature they need); `!` marks heads that fail. Export (`torch.export` of the backbone",
        "with FCN, or another working head, compared with eager): `dynamic` any height and width, `k*N`",
        "multiples of N, `static` one size only, `fails`; empty where not measured.",
        "",
        "| architecture | family | params (M) | strides | output strides | input | tier | heads | export |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(data["models"].items()):
        r = summarize(name, entry, heads)
        if "params" not in r:
            lines.append(f"| {name} | {r['module']} | | | | | - | {r.get('cause', '')} | |")
            continue
        mark = {"as built": "", "timm": "t", "segzoo": "s"}
        oss = " ".join(
            ["32"] + [o + mark[r["dilation"][o]] for o in ("16", "8") if r["dilation"].get(o) in mark]
        )
        inp = r["input"]
        inp_s = (
            "x".join(map(str, inp["fixed"]))
            if "fixed" in inp
            else (f"k*{inp['multiple']}" if "multiple" in inp else "any")
        ) + (f", >= {r['min_size']}" if r["min_size"] and "fixed" not in inp else "")
        hs = " ".join(r["heads"])
        if r["incompatible"]:
            hs += " (" + " ".join(r["incompatible"]) + ")"
        if r["failing"]:
            hs += " " + " ".join(f"!{h}" for h in r["failing"])
        tier = r["tier"] or "-"
        lines.append(
            f"| {name} | {r['module']} | {r['params'] / 1e6:.1f} | {'/'.join(map(str, r['strides']))} | {oss} "
            f"| {inp_s} | {tier} | {hs} | {r['export']['how'] if 'export' in r else ''} |"
        )
    lines += [
        "",
        "## How it is measured",
        "",
        "`nice -n 19 python benchmarks/backbone_matrix.py --tier meta` then `--tier real` (resumable; a",
        "later run adds new architectures and newly registered heads only; `--sample` runs the real tier",
        "on the stratified sample that `tests/test_backbone_matrix.py` re-checks). Tier real skips",
        "backbones over 150M parameters on this 2-core machine; they are listed as such in the causes.",
        "Tier meta builds a backbone whose forward reads values (`Tensor.item()`, as gemma4's ViT does)",
        "on the CPU instead of the meta device, which has no values.",
        "`--tier export` runs `torch.export` (static at the real tier's size, then with dynamic height",
        "and width) on the backbone with one working head and runs each program once against eager;",
        "a window transformer's export can take minutes in torch's shape solver (up to 150 s per",
        "attempt here), so it is measured on the stratified sample, and on more as time allows.",
        "",
        "Wall-clock seconds per architecture (2-core x86_64 shared with other jobs, run at nice 19, so",
        "these are upper bounds): "
        + "; ".join(
            f"{tier}: {v['n']} runs, median {v['median']} s, max {v['max']} s, total {v['total']} s"
            for tier, v in t["seconds"].items()
            if v["n"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)
