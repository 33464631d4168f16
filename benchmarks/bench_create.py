"""segzoo.create(local weights) against torchvision build + torch.load + load_state_dict.

Same weights, same process for the warm timings; a fresh process per measurement for the cold
timings and peak memory. Prints a table; the goals are <= 0.15x the time for the ResNet-101
models and a peak RSS at most the weights' size + 10 % over the process before loading.

    python benchmarks/bench_create.py [--models deeplabv3_resnet101 ...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TV_MODELS = {
    "fcn_resnet50": True,
    "fcn_resnet101": True,
    "deeplabv3_resnet50": True,
    "deeplabv3_resnet101": True,
    "deeplabv3_mobilenet_v3_large": True,
    "lraspp_mobilenet_v3_large": False,
}

# One measurement in a fresh interpreter: imports first (not timed), then the load (timed), then
# the peak RSS over the RSS before loading. Weights are touched (summed) so that memory-mapped
# pages count too.
CHILD = r"""
import json, sys, time
import torch, torchvision, segzoo
segzoo.list_models()  # plugins loaded: part of importing, not of loading a model
kind, name, path, aux = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak RSS (VmHWM) to the current RSS: imports do not count
before = status_mb("VmRSS")
t0 = time.perf_counter()
if kind == "segzoo":
    model = segzoo.create("local-dir:" + path)
else:
    import torchvision.models.segmentation as tvs
    kw = {"aux_loss": True} if aux else {}
    model = getattr(tvs, name)(weights=None, weights_backbone=None, **kw)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
elapsed = time.perf_counter() - t0
total = sum(float(t.float().sum()) for t in model.state_dict().values())  # touch every weight
peak = status_mb("VmHWM")
print(json.dumps({"seconds": elapsed, "before_mb": before, "peak_mb": peak}))
"""


def child(kind: str, name: str, path: Path, aux: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, name, str(path), "1" if aux else "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="*", default=list(TV_MODELS))
    parser.add_argument("--repeat", type=int, default=5, help="warm repetitions (median reported)")
    args = parser.parse_args()

    import torch
    import torchvision.models.segmentation as tvs

    import segzoo
    from segzoo.convert import convert_torchvision

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            aux = TV_MODELS[name]
            kw = {"aux_loss": True} if aux else {}
            pth = Path(tmp) / f"{name}.pth"
            torch.save(getattr(tvs, name)(weights=None, weights_backbone=None, **kw).state_dict(), pth)
            folder = convert_torchvision(name, pth, Path(tmp) / name)
            size_mb = (folder / "model.safetensors").stat().st_size / 2**20

            def tv_load(name=name, kw=kw, pth=pth):
                model = getattr(tvs, name)(weights=None, weights_backbone=None, **kw)
                model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
                return model

            def sz_load(folder=folder):
                return segzoo.create(f"local-dir:{folder}")

            warm = {}
            for label, fn in (("torchvision", tv_load), ("segzoo", sz_load)):
                fn()  # warm-up: imports, registry, page cache
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                warm[label] = statistics.median(times)
            cold_tv = child("torchvision", name, pth, aux)
            cold_sz = child("segzoo", name, folder, aux)
            rows.append(
                [
                    name,
                    f"{size_mb:.0f}",
                    f"{warm['torchvision']:.3f}",
                    f"{warm['segzoo']:.3f}",
                    f"{warm['segzoo'] / warm['torchvision']:.3f}",
                    f"{cold_tv['seconds']:.3f}",
                    f"{cold_sz['seconds']:.3f}",
                    f"{cold_sz['seconds'] / cold_tv['seconds']:.3f}",
                    f"{cold_tv['peak_mb'] - cold_tv['before_mb']:.0f}",
                    f"{cold_sz['peak_mb'] - cold_sz['before_mb']:.0f}",
                    f"{(cold_sz['peak_mb'] - cold_sz['before_mb']) / size_mb:.2f}",
                ]
            )
            print(f"done {name}", file=sys.stderr)

    headers = ["model", "weights MB", "tv warm s", "segzoo warm s", "ratio", "tv cold s", "segzoo cold s",
               "ratio", "tv peak +MB", "segzoo peak +MB", "segzoo peak / weights"]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"\ntorch {torch.__version__}, segzoo {segzoo.__version__}, {os.cpu_count()} CPU(s), {args.repeat} warm runs"
    )


if __name__ == "__main__":
    main()
