"""Inference speed at 520 x 520: segzoo eager and fast path vs torchvision, smp, ONNX Runtime and
AOTInductor, and a GPU section when CUDA is available.

Every ratio compares two timings of the same run (medians of ``--repeat`` calls after one warm-up,
the two sides interleaved), on the same weights. Goals: segzoo eager <= 1.02x torchvision's time;
the fast path (``segzoo.optimize``) >= 1.4x faster than torchvision eager, >= 1.6x with
``torch.compile``; segzoo <= 1.0x smp on the same architecture.

    python benchmarks/bench_infer.py [--models fcn_resnet50 ...] [--repeat 3] [--compile]
        [--export-models lraspp_mobilenet_v3_large] [--size 520]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import segzoo

TV_MODELS = [
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
]
# (segzoo head, smp class) on resnet34: smp's DeepLabV3/V3+ are the segzoo-smp-heads variants
SMP_CASES = [
    ("unet", "Unet"),
    ("unetplusplus", "UnetPlusPlus"),
    ("manet", "MAnet"),
    ("linknet", "Linknet"),
    ("fpn", "FPN"),
    ("pspnet", "PSPNet"),
    ("deeplabv3_smp", "DeepLabV3"),
    ("deeplabv3plus_smp", "DeepLabV3Plus"),
    ("pan", "PAN"),
    ("upernet", "UPerNet"),
    ("segformer", "Segformer"),
]


def timed(fns: dict[str, Callable[[], object]], repeat: int, sync: Callable[[], None] = lambda: None):
    """Median seconds per call of each function; one warm-up call each, then the calls interleaved."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        sync()
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def row(*cells) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def torchvision_model(name: str) -> torch.nn.Module:
    from torchvision.models import segmentation

    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)


def section_torchvision(args, x: torch.Tensor) -> None:
    print(f"\n## segzoo vs torchvision, eager and fast path ({args.size} x {args.size}, batch 1, CPU)\n")
    head = ["model", "tv eager s", "segzoo eager s", "eager ratio (<= 1.02)", "fast s", "speed-up (>= 1.4)"]
    if args.compile:
        head += ["compiled s", "speed-up (>= 1.6)"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for name in args.models:
        tv = torchvision_model(name).eval()
        sz = segzoo.create(name).eval()
        sz.load_state_dict(tv.state_dict())  # the same weights: the state_dict keys are torchvision's
        fast = segzoo.optimize(sz)
        fns = {
            "tv": lambda tv=tv: tv(x),
            "sz": lambda sz=sz: sz(x),
            "fast": lambda fast=fast: fast(x),
        }
        if args.compile:
            compiled = segzoo.optimize(sz, compile=True)
            fns["compiled"] = lambda compiled=compiled: compiled(x)
        with torch.inference_mode():
            t = timed(fns, args.repeat)
        cells = [name, t["tv"], t["sz"], t["sz"] / t["tv"], t["fast"], t["tv"] / t["fast"]]
        if args.compile:
            cells += [t["compiled"], t["tv"] / t["compiled"]]
        print(row(*cells), flush=True)


def section_exported(args, x: torch.Tensor) -> None:
    from segzoo.export import load_exported

    print(f"\n## Exported files vs segzoo eager ({args.size} x {args.size}, batch 1, CPU)\n")
    print(
        "| model | eager s | ONNX Runtime s | eager / ORT | AOTInductor s | eager / AOTI | max rel. error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.export_models:
        model = segzoo.create(name).eval()
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = segzoo.export(model, Path(tmp) / "m.onnx", "onnx")
            aoti_path = segzoo.export(model, Path(tmp) / "m.pt2", "aoti")
            ort, aoti = load_exported(onnx_path), load_exported(aoti_path)
            with torch.inference_mode():
                ref = model(x)["out"]
                err = max(((f(x)["out"] - ref).abs().max() / ref.abs().max()).item() for f in (ort, aoti))
                t = timed(
                    {"eager": lambda m=model: m(x), "ort": lambda m=ort: m(x), "aoti": lambda m=aoti: m(x)},
                    args.repeat,
                )
        print(row(name, t["eager"], t["ort"], t["eager"] / t["ort"], t["aoti"], t["eager"] / t["aoti"], f"{err:.1e}"),
              flush=True)  # fmt: skip


def section_smp(args, x: torch.Tensor) -> None:
    """smp's model against the same network in segzoo: smp's save_pretrained folder converted by
    ``segzoo convert smp``, so that defaults (smp's encoder depth, output stride) cannot differ."""
    heads = set(segzoo.list_heads())
    cases = [(h, cls) for h, cls in SMP_CASES if h in heads]
    size = -(-args.size // 32) * 32  # smp refuses sizes that are not multiples of its stride
    x = torch.randn(1, 3, size, size)
    print(f"\n## segzoo vs segmentation-models-pytorch on resnet34 ({size} x {size}, batch 1, CPU)\n")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        print("(segmentation-models-pytorch is not installed: section skipped)")
        return
    missing = [h for h, _ in SMP_CASES if h not in heads]
    if missing:
        print(f"(heads not registered here, skipped: {', '.join(missing)})\n")
    if not cases:
        return
    from segzoo.cli import main as cli

    print("| architecture | smp s | segzoo s | ratio (<= 1.0) | max rel. error |")
    print("| --- | --- | --- | --- | --- |")
    for _, cls in cases:
        torch.manual_seed(0)
        ref = getattr(smp, cls)("resnet34", encoder_weights=None, classes=21).eval()
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(f"{tmp}/smp")
            if cli(["convert", "smp", f"{tmp}/smp", f"{tmp}/segzoo"]) != 0:
                print(row(cls, "-", "-", "-", "segzoo convert smp failed"))
                continue
            sz = segzoo.create(f"local-dir:{tmp}/segzoo").eval()
        with torch.inference_mode():
            got, want = sz(x)["out"], ref(x)
            err = ((got - want).abs().max() / want.abs().max()).item()
            t = timed({"smp": lambda ref=ref: ref(x), "sz": lambda sz=sz: sz(x)}, args.repeat)
        print(row(cls, t["smp"], t["sz"], t["sz"] / t["smp"], f"{err:.1e}"), flush=True)


def section_gpu(args) -> None:
    print("\n## GPU: bf16, channels_last, batch 16\n")
    if not torch.cuda.is_available():
        print("(no CUDA device on this machine: section skipped)")
        return
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device("cuda")
    x = torch.randn(args.gpu_batch, 3, args.size, args.size, device=dev)
    print(f"{torch.cuda.get_device_name(dev)}; peak assumed {args.gpu_peak_tflops} bf16 TFLOP/s\n")
    print("| model | eager fp32 img/s | fast (bf16, channels_last) img/s | + compile img/s | "
          "+ CUDA graphs img/s | share of peak |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model = segzoo.create(name).eval().to(dev)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(x[:1])
        flops = counter.get_total_flops() * args.gpu_batch
        variants = {
            "eager": model,
            "fast": segzoo.optimize(model),
            "compiled": segzoo.optimize(model, compile=True),
            "graphs": segzoo.optimize(model, compile=True, compile_kwargs={"mode": "reduce-overhead"}),
        }
        with torch.inference_mode():
            t = timed(
                {k: (lambda m=m: m(x)) for k, m in variants.items()}, args.repeat, torch.cuda.synchronize
            )
        best = min(t.values())
        ips = {k: args.gpu_batch / v for k, v in t.items()}
        share = flops / best / (args.gpu_peak_tflops * 1e12)
        print(
            row(name, ips["eager"], ips["fast"], ips["compiled"], ips["graphs"], f"{100 * share:.1f} %"),
            flush=True,
        )
        del variants, model
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=TV_MODELS, help="torchvision recipes to time")
    p.add_argument("--export-models", nargs="*", default=["lraspp_mobilenet_v3_large"],
                   help="models exported to ONNX and AOTInductor (each export takes a minute or two)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size", type=int, default=520)
    p.add_argument(
        "--compile", action="store_true", help="also time the torch.compile'd fast path (slow to build)"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["torchvision", "export", "smp", "gpu"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--gpu-batch", type=int, default=16)
    p.add_argument(
        "--gpu-peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeat} after 1 warm-up")
    if "torchvision" not in args.skip:
        section_torchvision(args, x)
    if "export" not in args.skip and args.export_models:
        section_exported(args, x)
    if "smp" not in args.skip:
        section_smp(args, x)
    if "gpu" not in args.skip:
        section_gpu(args)


if __name__ == "__main__":
    main()
