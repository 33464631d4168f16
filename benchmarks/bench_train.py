"""segzoo's training step against a plain loop written the torchvision-references way.

Same model (torchvision's builder for the plain loop, segzoo.create for segzoo: identical
networks), same synthetic images, augmentations and order, batch, optimizer (SGD, poly LR, aux loss at 0.5, aux
head at 10x LR) and number of steps. Each run is a fresh process; it reports the median seconds
per step after the warm-up steps and the peak RSS over the training steps (from after the imports
to the last step; segzoo's final evaluation and checkpoint come after). Goal: <= 1.0x both.

    python benchmarks/bench_train.py [--models lraspp_mobilenet_v3_large] [--steps 30] [--batch 8] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
import torchvision, segzoo
from segzoo.data import SyntheticSegmentation, collate, train_transforms

def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS from here on: imports do not count
before = status_mb("VmRSS")
name, steps, warm, batch, size = cfg["model"], cfg["steps"], cfg["warmup"], cfg["batch"], cfg["size"]
aux = name != "lraspp_mobilenet_v3_large"

if cfg["kind"] == "segzoo":
    from segzoo.engine import train as T
    from segzoo.engine.train import train
    # the peak over the training steps: read it when the final evaluation starts (the plain loop
    # has no evaluation, checkpoint or best-model save at the end)
    steps_peak, real_eval = [], T._Trainer._evaluate
    def _evaluate(self, *a, **k):
        steps_peak.append(status_mb("VmHWM"))
        return real_eval(self, *a, **k)
    T._Trainer._evaluate = _evaluate
    res = train(model=name, data="synth", synth_n=cfg["n"], num_classes=6, aux=aux, max_steps=steps,
                batch_size=batch, base_size=size, crop_size=size, workers=0, lr=0.01, log_every=1,
                eval_every=0, eval_every_steps=10**9, checkpoint_every=10**9, output=cfg["out"],
                progress=False, tensorboard=False)
    times = [json.loads(l) for l in open(cfg["out"] + "/metrics.jsonl") if '"loss"' in l]
    per_step = [batch / r["images_per_s"] for r in times][warm:]
else:
    import torchvision.models.segmentation as tvs
    torch.manual_seed(0)
    kw = {"aux_loss": True} if aux else {}
    model = getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=6, **kw)
    # the very same images, crops and order as segzoo's run: only the training step differs
    from segzoo.engine.train import ResumableSampler, SeededSamples
    raw = SyntheticSegmentation(cfg["n"], seed=0, split="train", num_classes=6, cache=True)
    data = SeededSamples(raw, train_transforms(size, size), seed=0)
    sampler = ResumableSampler(len(data), seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler, collate_fn=collate, drop_last=True)
    params = [{"params": [p for p in model.backbone.parameters() if p.requires_grad]},
              {"params": [p for p in model.classifier.parameters() if p.requires_grad]}]
    if aux:
        params.append({"params": [p for p in model.aux_classifier.parameters() if p.requires_grad], "lr": 0.1})
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9)
    crit = torch.nn.CrossEntropyLoss(ignore_index=255)
    model.train()
    per_step, done = [], 0
    while done < steps:
        sampler.set_epoch(done // len(loader))
        data.epoch = done // len(loader)
        t0 = time.perf_counter()
        for images, target in loader:
            out = model(images)
            loss = crit(out["out"], target) + (0.5 * crit(out["aux"], target) if aux else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            float(loss)
            t1 = time.perf_counter()
            per_step.append(t1 - t0)
            t0 = t1
            done += 1
            if done == steps:
                break
    per_step = per_step[warm:]
peak = steps_peak[0] if cfg["kind"] == "segzoo" else status_mb("VmHWM")
print(json.dumps({"step_s": sorted(per_step)[len(per_step) // 2], "peak_mb": peak - before}))
"""


def run(kind: str, model: str, args: argparse.Namespace, out: str) -> dict:
    cfg = {"kind": kind, "model": model, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
           "size": args.size, "n": args.n, "threads": args.threads, "out": out}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", nargs="*", default=["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n", type=int, default=200, help="synthetic samples")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--rounds", type=int, default=2, help="runs of each, order alternated; medians reported")
    args = p.parse_args()
    rows = []
    for model in args.models:
        plain, ours = [], []
        for i in range(args.rounds):  # alternate the order: the machine's drift falls on both sides
            for kind in ("plain", "segzoo") if i % 2 == 0 else ("segzoo", "plain"):
                with tempfile.TemporaryDirectory() as tmp:
                    (plain if kind == "plain" else ours).append(run(kind, model, args, tmp + "/" + kind))
        plain = {k: sorted(r[k] for r in plain)[len(plain) // 2] for k in ("step_s", "peak_mb")}
        ours = {k: sorted(r[k] for r in ours)[len(ours) // 2] for k in ("step_s", "peak_mb")}
        rows.append([model, f"{plain['step_s']:.3f}", f"{ours['step_s']:.3f}", f"{ours['step_s'] / plain['step_s']:.2f}",
                     f"{plain['peak_mb']:.0f}", f"{ours['peak_mb']:.0f}", f"{ours['peak_mb'] / plain['peak_mb']:.2f}"])  # fmt: skip
        print(f"done {model}", file=sys.stderr)
    headers = ["model", "plain s/step", "segzoo s/step", "ratio", "plain peak MB", "segzoo peak MB", "ratio"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"\nbatch {args.batch}, {args.size} px crops, {args.steps} steps ({args.warmup} warm-up), "
          f"{args.threads} threads, median step time, median of {args.rounds} runs each")  # fmt: skip


if __name__ == "__main__":
    main()
