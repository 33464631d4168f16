"""Which timm architectures work as segzoo backbones, with which heads: measured, not assumed.

    nice -n 19 .venv/bin/python benchmarks/backbone_matrix.py --tier meta   # every architecture
    nice -n 19 .venv/bin/python benchmarks/backbone_matrix.py --tier real   # real forward+backward
    nice -n 19 .venv/bin/python benchmarks/backbone_matrix.py --tier export --sample  # torch.export

Each architecture runs in a worker process (one worker serves many architectures, so torch is
imported once; a worker that passes the per-architecture timeout is killed and replaced, the
architecture recorded as timed out). Results go to ``segzoo/backbones/timm_matrix.json`` after
every architecture, written atomically, so a stopped run resumes where it stopped. A later run
only does what is missing: new architectures, a tier not run yet, or heads registered since (a
head plugin adds its column without redoing the rest).

Tier "meta" builds on the meta device (shapes only): features, roles, input sizes taken, output
strides 16 and 8, and per head a build, a forward in train and eval mode and a backward. Tier
"real" does the heads' forward (train and eval) and backward for real at a small size, cheapest
architectures first; those over ``--max-params`` are recorded as skipped. Tier "export" runs
``torch.export`` on the backbone with one head that works (FCN where it does), static at the
real tier's size and with dynamic height and width, each program compared with eager once.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "segzoo" / "backbones" / "timm_matrix.json"
MARK = "@@matrix@@ "
BIG_WORDS = (
    "large",
    "huge",
    "giant",
    "gigantic",
    "xlarge",
    "xxl",
    "_1b",
    "_3b",
    "_5b",
    "_7b",
    "base",
    "_l_",
    "448",
    "512",
    "384",
)
SMALL_WORDS = (
    "atto",
    "femto",
    "pico",
    "nano",
    "tiny",
    "small",
    "xxs",
    "xs",
    "mini",
    "lite",
    "_s",
    "b0",
    "18",
    "050",
    "035",
)


def worker(tier: str) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from segzoo.backbones._verify import error_text, work_export, work_meta, work_real

    fn = {"meta": work_meta, "real": work_real, "export": work_export}[tier]
    for line in sys.stdin:
        job = json.loads(line)
        try:
            rec = fn(job["name"], job["heads"], job["full"])
        except Exception as e:  # a bug of this script shows as such, not as a model's failure
            rec = {"error": "matrix script: " + error_text(e)}
        sys.stdout.write(MARK + json.dumps(rec) + "\n")
        sys.stdout.flush()


# -- parent: schedules, times out, writes ------------------------------------------------------


class Worker:
    def __init__(self, tier: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--tier", tier],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(line[len(MARK) :])
        self.lines.put(None)

    def ask(self, job: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return {"error": "worker died (out of memory?)"} if line is None else json.loads(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"models": {}}


class Store:
    """The JSON file, shared by runs of both tiers at once: every write re-reads it under a lock
    and changes only this run's tier of one architecture, then replaces it atomically."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.lock = path.with_name("." + path.name + ".lock")

    def update(self, fn) -> dict[str, Any]:
        import fcntl

        with open(self.lock, "w") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            data = load(self.path)
            heads = sorted(set(data.get("heads", [])) | set(self.header.get("heads", [])))
            data.update(self.header, heads=heads)
            fn(data["models"])
            save(data, self.path)
        return data


def save(data: dict[str, Any], path: Path) -> None:
    """One line per architecture (compact, diff-friendly), written atomically."""
    head = {k: v for k, v in data.items() if k != "models"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))},")
    lines.append('"models":{')
    items = sorted(data["models"].items())
    for i, (k, v) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}{sep}")
    lines.append("}}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".matrix-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=("meta", "real", "export"), default="meta")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", default="", help="fnmatch filter on architecture names")
    ap.add_argument("--limit", type=int, default=0, help="at most this many architectures (0: all)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per architecture")
    ap.add_argument("--max-params", type=float, default=150e6, help="tier real: skip bigger backbones")
    ap.add_argument("--retry-errors", action="store_true", help="redo entries whose tier failed")
    ap.add_argument("--sample", action="store_true", help="only the stratified sample (smallest per module)")
    ap.add_argument(
        "--shard", default="0/1", help="K/N: every Nth architecture of the plan from the Kth (run N at once)"
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.tier)

    import timm
    import torch

    import segzoo
    from segzoo.backbones.matrix import sample, summarize

    heads = segzoo.list_heads()
    timeout = args.timeout or {"meta": 120.0, "real": 300.0, "export": 900.0}[args.tier]
    header = dict(
        timm=timm.__version__, torch=torch.__version__.split("+")[0], segzoo=segzoo.__version__, heads=heads
    )
    store = Store(args.out, header)
    module_of = {n: mod for mod in timm.list_modules() for n in timm.list_models(module=mod)}
    names = timm.list_models(args.only or "")
    skip_msg = f"too large for this machine's tier-real budget (> {args.max_params / 1e6:.0f}M parameters)"

    def plan(models: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
        todo = []
        chosen = set(sample({"models": models}).values()) if args.sample else None
        for n in names:
            if chosen is not None and n not in chosen:
                continue
            entry = models.setdefault(n, {"module": module_of.get(n, "?")})
            tier = entry.get(args.tier)
            if args.tier == "export":
                # after the other tiers, with one head that works there (FCN where it does)
                ok = summarize(n, entry, heads)["heads"]
                if ok and (tier is None or (args.retry_errors and "error" in tier)):
                    todo.append((n, ["fcn" if "fcn" in ok else ok[0]], True))
                continue
            if args.tier == "real":
                if "params" not in entry.get("meta", {}):
                    continue  # real runs after meta, cheapest first by the meta parameter count
                if entry["meta"]["params"] > args.max_params:
                    if tier is None or "skipped" in tier:  # keep what a bigger budget measured
                        entry["real"] = {"skipped": skip_msg}
                    continue
            if tier is None or (args.retry_errors and "error" in tier):
                todo.append((n, heads, True))
            elif "error" not in tier and "skipped" not in tier:
                missing = [h for h in heads if h not in tier.get("heads", {})]
                if missing:
                    todo.append((n, missing, False))
        if args.tier in ("real", "export"):
            todo.sort(key=lambda j: models[j[0]]["meta"]["params"])
        else:
            # Round robin over timm's modules, so that every family is covered early; within one,
            # names that say "big" last (sizes are unknown before the build).
            def smallish(n: str) -> tuple:
                return (sum(w in n for w in BIG_WORDS) - sum(w in n for w in SMALL_WORDS), len(n), n)

            rank = {}
            covered = {e["module"] for e in models.values() if "meta" in e}
            for mod in {module_of.get(j[0], "?") for j in todo}:
                mine = sorted((j[0] for j in todo if module_of.get(j[0], "?") == mod), key=smallish)
                rank.update({n: (i + (mod in covered), smallish(n)) for i, n in enumerate(mine)})
            todo.sort(key=lambda j: rank[j[0]])
        return todo

    todo: list = []
    store.update(lambda models: todo.extend(plan(models)))
    k, _, n = args.shard.partition("/")
    todo = todo[int(k) :: int(n)]  # the plan is sorted by cost, so shards take turns: equal work
    if args.limit:
        todo = todo[: args.limit]
    print(f"{args.tier}: {len(todo)} architectures to run, {len(heads)} heads", flush=True)
    w = Worker(args.tier)
    started = time.time()
    try:
        for i, (name, hs, full) in enumerate(todo):
            t = time.perf_counter()
            rec = w.ask({"name": name, "heads": hs, "full": full}, timeout)
            if rec is None or rec.get("error", "").startswith("worker died"):
                w.kill()
                w = Worker(args.tier)
                rec = rec or {"error": f"timeout: more than {timeout:.0f} s"}
                rec["s"] = round(time.perf_counter() - t, 2)

            def put(models: dict[str, Any], name=name, rec=rec, full=full) -> None:
                if full or "error" in rec:
                    models[name][args.tier] = rec
                else:
                    models[name][args.tier]["heads"].update(rec.get("heads", {}))

            store.update(put)
            status = (
                rec.get("error")
                or (f"static={rec['static']} dynamic={rec['dynamic']}" if args.tier == "export" else "")
                or " ".join(f"{h}={'ok' if v == 'ok' else 'x'}" for h, v in rec.get("heads", {}).items())
            )
            print(
                f"[{i + 1}/{len(todo)} {time.time() - started:.0f}s] {name} {rec.get('s')}s {status[:100]}",
                flush=True,
            )
    finally:
        w.kill()


if __name__ == "__main__":
    main()
