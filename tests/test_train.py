"""Training: the reference recipe, files, resume after SIGKILL, bad input, options, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import segzoo
from segzoo.data import SyntheticSegmentation, write_synthetic
from segzoo.engine._checkpoint import CheckpointError, checkpoints, load_checkpoint
from segzoo.engine.train import TrainConfig, _Trainer, train
from segzoo.errors import UsageError

TINY = dict(
    model="lraspp",
    backbone="mobilenet_v3_small",
    data="synth",
    synth_n=30,
    num_classes=3,
    batch_size=4,
    base_size=48,
    crop_size=48,
    workers=0,
    progress=False,
    tensorboard=False,
    optimizer="adamw",
    lr=3e-3,
    bn_momentum=0.1,
    log_every=1,
)


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in log(run) if "loss" in r}


def test_training_learns_and_writes_every_file(tmp_path):
    run = tmp_path / "run"
    result = train(**TINY, max_steps=12, checkpoint_every=4, eval_every_steps=6, output=str(run))
    assert result.steps == 12 and result.best_dir == run / "best"
    records = log(run)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, 13))
    assert {"epoch", "loss", "lr", "images_per_s"} <= set(train_records[0])
    first, last = train_records[0]["loss"], sum(r["loss"] for r in train_records[-3:]) / 3
    assert last < 0.8 * first  # it learns
    evals = [r for r in records if "val_miou" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert result.best_miou == max(r["val_miou"] for r in evals)
    # keep_checkpoints=2: the two newest
    assert [p.name for p in checkpoints(run)] == ["checkpoint-00000008.pt", "checkpoint-00000012.pt"]
    state = load_checkpoint(run / "checkpoint-00000012.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config"} <= set(state)
    # the best model is a segzoo folder whose card carries the measured metrics
    best = segzoo.create(f"local-dir:{run / 'best'}")
    assert best.labels == ["background", "circle", "square"]
    assert best.config["preprocessing"]["resize"] == 48
    card = (run / "best" / "README.md").read_text()
    assert f"{round(100 * result.best_miou, 2)}" in card and "segzoo-synthetic" in card
    again = segzoo.evaluate(best, SyntheticSegmentation(30, seed=0, split="val", num_classes=3))
    assert again.metrics.miou == pytest.approx(result.best_miou, abs=1e-6)


def test_the_reference_recipe_is_the_default(tmp_path):
    cfg = TrainConfig(model="fcn", backbone="resnet18", aux=True, output=str(tmp_path / "r"))
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.lr_power) == ("sgd", 0.9, 1e-4, 0.9)
    assert (cfg.aux_weight, cfg.aux_lr_mult, cfg.ignore_index) == (0.5, 10.0, 255)
    assert (cfg.base_size, cfg.crop_size, cfg.scale, cfg.hflip) == (520, 480, (0.5, 2.0), 0.5)
    trainer = _Trainer(TrainConfig(**{**TINY, "model": "fcn", "backbone": "resnet18", "aux": True,
                                      "optimizer": "sgd", "lr": 0.02, "max_steps": 10, "warmup_steps": 2,
                                      "output": str(tmp_path / "r")}))  # fmt: skip
    trainer.prepare()
    groups = trainer.optimizer.param_groups
    assert isinstance(trainer.optimizer, torch.optim.SGD) and groups[0]["momentum"] == 0.9
    aux_params = {id(p) for p in trainer.model.aux_classifier.parameters()}
    (aux_group,) = [g for g in groups if {id(p) for p in g["params"]} == aux_params]
    lrs = [g["lr"] for g in groups]
    assert aux_group["lr"] == pytest.approx(10 * lrs[0])
    # linear warm-up from 1 % then polynomial decay with power 0.9, per step
    factors = [trainer.scheduler.lr_lambdas[0](s) for s in range(11)]
    assert factors[0] == pytest.approx(0.01) and factors[1] == pytest.approx(0.505 * 0.9**0.9, rel=1e-6)
    assert factors[5] == pytest.approx(0.5**0.9) and factors[10] == 0.0


RUNNER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import torch
    from segzoo.engine import _checkpoint, train as T

    cfg, mode = json.loads(sys.argv[1]), sys.argv[2]
    if mode == "slow":  # slow steps after step 4, so that the parent can kill us mid-run
        real = T._Trainer._micro_step
        def slow(self, *a, **k):
            if self.step >= 4:
                time.sleep(0.3)
            return real(self, *a, **k)
        T._Trainer._micro_step = slow
    if mode == "die-while-saving":  # the second checkpoint dies half-written
        real_save, calls = torch.save, []
        def dying(obj, f, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                f.write(b"PK\\x03\\x04 half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)
        _checkpoint.torch.save = dying
    T.train(**cfg)
    """
)


def start(cfg: dict, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(cfg), mode], env=env, stderr=subprocess.PIPE
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoints(run)[-1])["model"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_finishes_like_an_uninterrupted_run(tmp_path):
    cfg = {**TINY, "max_steps": 10, "checkpoint_every": 2, "eval_every_steps": 5}
    torch.set_num_threads(1)
    try:
        reference = train(**cfg, output=str(tmp_path / "reference"))
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    run = tmp_path / "run"
    proc = start({**cfg, "output": str(run)}, "slow")
    deadline = time.time() + 120
    while not (run / "checkpoint-00000004.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = max(int(p.name[11:19]) for p in checkpoints(run))
    assert 4 <= done < 10  # killed mid-way
    for p in checkpoints(run):
        load_checkpoint(p)  # every checkpoint on disk is complete
    with pytest.raises(UsageError, match="resume"):
        train(**cfg, output=str(run))  # a new run would mix with the old one
    torch.set_num_threads(1)
    try:
        resumed = train(**cfg, output=str(run), resume=True)
    finally:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    assert resumed.steps == 10
    assert sorted(losses(run)) == list(range(1, 11))  # each step logged once
    ref, got = final_weights(tmp_path / "reference"), final_weights(run)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    assert losses(run) == pytest.approx(losses(tmp_path / "reference"), rel=1e-4)
    assert resumed.best_miou == pytest.approx(reference.best_miou, abs=1e-4)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_leaves_no_corrupt_file(tmp_path):
    run = tmp_path / "run"
    cfg = {**TINY, "max_steps": 6, "checkpoint_every": 2, "output": str(run)}
    proc = start(cfg, "die-while-saving")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in checkpoints(run)] == ["checkpoint-00000002.pt"]
    assert list(run.glob(".checkpoint-*.tmp"))  # the half-written one, never renamed
    resumed = train(**cfg, resume=True)
    assert resumed.steps == 6
    assert not list(run.glob(".checkpoint-*.tmp"))
    assert [p.name for p in checkpoints(run)] == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    for p in checkpoints(run):
        assert load_checkpoint(p)["step"] == int(p.name[11:19])


@pytest.mark.slow
def test_resume_falls_back_past_a_truncated_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    cfg = {**TINY, "checkpoint_every": 1, "keep_checkpoints": 3, "output": str(run)}
    train(**cfg, max_steps=2)
    newest = run / "checkpoint-00000002.pt"
    complete = newest.read_bytes()
    newest.write_bytes(complete[: len(complete) // 2])  # a copy or a full disk cut it short
    with pytest.warns(UserWarning, match=r"checkpoint-00000002\.pt is not a readable.*resuming from the "
                      r"previous complete checkpoint, checkpoint-00000001\.pt \(step 1\)") as caught:  # fmt: skip
        resumed = train(**cfg, max_steps=3, resume=True)
    assert [w.filename for w in caught] == [__file__]  # the warning points at the call above
    assert resumed.steps == 3
    assert [r["step"] for r in log(run) if "loss" in r] == [1, 2, 3]  # step 2 trained again
    assert (run / "checkpoint-00000002.pt.unreadable").read_bytes() == complete[: len(complete) // 2]
    assert [p.name for p in checkpoints(run)] == [f"checkpoint-0000000{i}.pt" for i in (1, 2, 3)]
    assert load_checkpoint(run / "checkpoint-00000002.pt")["step"] == 2  # written again, whole
    for p in checkpoints(run):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*checkpoint-00000003.pt is not"):
        train(**cfg, max_steps=4, resume=True)


def test_bad_input_is_one_clear_error_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(segzoo.errors.UnknownNameError, match="unknown model 'lraspp_mobilenet'"):
        train(**{**TINY, "model": "lraspp_mobilenet", "backbone": None}, output=str(out))
    for sub in ("images", "masks", "splits"):
        (tmp_path / "empty" / sub).mkdir(parents=True)
    (tmp_path / "empty" / "splits" / "train.txt").write_text("")
    (tmp_path / "empty" / "splits" / "val.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(**{**TINY, "data": str(tmp_path / "empty"), "format": "folder"}, output=str(out))
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        train(**{**TINY, "data": str(tmp_path / "missing")}, output=str(out))
    write_synthetic(tmp_path / "six", 12, seed=0, num_classes=6)
    with pytest.raises(ValueError, match=r"num_classes=3 is smaller than the dataset's 6 classes"):
        train(
            **{**TINY, "data": str(tmp_path / "six"), "format": "folder", "num_classes": 3}, output=str(out)
        )
    with pytest.raises(ValueError, match="grad_accum must be at least 1"):
        TrainConfig(**{**TINY, "grad_accum": 0})
    with pytest.raises(ValueError, match="fp16 mixed precision needs CUDA"):
        train(**{**TINY, "amp": "fp16"}, output=str(out))
    with pytest.raises(ValueError, match="SyncBatchNorm does not run on the CPU"):
        train(**{**TINY, "sync_bn": True}, output=str(out))
    with pytest.raises(ValueError, match="fewer than one step"):
        train(**{**TINY, "batch_size": 64}, output=str(out))
    assert not out.exists()  # nothing was written by any of them
    # a checkpoint of another model
    train(**TINY, max_steps=2, output=str(out))
    with pytest.raises(ValueError, match="comes from another run: model was 'lraspp', now 'fcn'"):
        train(**{**TINY, "model": "fcn", "backbone": "resnet18"}, max_steps=4, output=str(out), resume=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(**TINY, max_steps=2, output=str(tmp_path / "fresh"), resume=True)


@pytest.mark.slow
def test_a_diverging_run_is_a_segzoo_error_naming_the_setting(tmp_path):
    from segzoo.engine.train import TrainingDivergedError
    from segzoo.errors import SegzooError

    with pytest.raises(
        TrainingDivergedError, match=r"the loss became (nan|inf) at step \d: lower the learning rate"
    ) as err:
        train(**{**TINY, "optimizer": "sgd", "lr": 1e38}, max_steps=4, output=str(tmp_path / "run"))
    assert isinstance(err.value, SegzooError) and isinstance(err.value, FloatingPointError)


def all_labelled(tmp_path: Path) -> dict:
    """Training settings under which batch composition cannot matter: every pixel labelled (no
    void outlines, no padding) and BatchNorm frozen. Each (micro-)batch's loss is a mean over its
    own labelled pixels, as in torchvision's references and under DDP, so unlabelled pixels would
    weigh batches unevenly."""
    data = write_synthetic(tmp_path / "data", 30, seed=0, num_classes=3, void=0)
    return {**TINY, "data": str(data), "format": "folder", "freeze_bn": True, "scale": (1.0, 1.0)}


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    cfg = {**all_labelled(tmp_path), "max_steps": 3, "checkpoint_every": 3, "optimizer": "sgd", "lr": 0.05}
    for name, batch, accum in (("big", 4, 1), ("acc", 2, 2), ("small", 2, 1)):
        train(**{**cfg, "batch_size": batch, "grad_accum": accum}, output=str(tmp_path / name))
    big, acc, small = (final_weights(tmp_path / n) for n in ("big", "acc", "small"))
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-6, msg=k)
    assert any(not torch.allclose(small[k], big[k], rtol=1e-2) for k in big)  # the test can tell


def test_options_frozen_backbone_bf16_channels_last(tmp_path):
    torch.manual_seed(0)
    before = segzoo.create("lraspp", backbone="mobilenet_v3_small", num_classes=3).backbone.state_dict()
    train(**TINY, max_steps=2, freeze_backbone=True, output=str(tmp_path / "frozen"))
    after = final_weights(tmp_path / "frozen")
    for k, v in before.items():
        assert torch.equal(after[f"backbone.{k}"], v), k  # weights and BatchNorm statistics untouched
    result = train(**TINY, max_steps=2, amp="bf16", channels_last=True, output=str(tmp_path / "bf16"))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(tmp_path / "bf16").values())
    assert result.steps == 2


def test_push_to_hub_sends_the_best_model(tmp_path, monkeypatch):
    from segzoo import hub

    pushed = []
    monkeypatch.setattr(hub, "push_to_hub", lambda src, repo, **kw: pushed.append((Path(src), repo, kw)))
    result = train(**TINY, max_steps=2, output=str(tmp_path / "r"), push_to_hub="org/tiny")
    assert pushed == [(result.best_dir, "org/tiny", {"commit_message": pushed[0][2]["commit_message"]})]
    assert "mIoU" in pushed[0][2]["commit_message"]


def test_train_cli(tmp_path, capsys):
    from segzoo.cli import main

    argv = ["train", "lraspp", "--backbone", "mobilenet_v3_small", "--data", "synth", "--synth-n", "30",
            "--num-classes", "3", "--batch-size", "4", "--base-size", "48", "--crop-size", "48",
            "--max-steps", "2", "--workers", "0", "--no-progress", "--no-tensorboard", "--scale", "0.5", "1.0",
            "--output", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    assert "best val mIoU" in capsys.readouterr().out
    cfg = load_checkpoint(checkpoints(tmp_path / "cli")[-1])["config"]
    assert cfg["scale"] == [0.5, 1.0] and cfg["backbone"] == "mobilenet_v3_small" and cfg["max_steps"] == 2
    with pytest.raises(SystemExit) as exc:  # an argparse error, before any work
        main([*argv[:-1], str(tmp_path / "cli2"), "--optimizer", "adam"])
    assert exc.value.code == 2 and not (tmp_path / "cli2").exists()
    assert (
        "argument --optimizer: invalid choice: 'adam' (choose from 'sgd', 'adamw')" in capsys.readouterr().err
    )


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from segzoo.engine.train import train
    train(**json.loads(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 processes x batch 2 (gloo, CPU) against 1 process x batch 4. BatchNorm is frozen (PyTorch's
    SyncBatchNorm runs on CUDA only, and per-process batch statistics differ by design) and every
    pixel is labelled (see all_labelled)."""
    cfg = {**all_labelled(tmp_path), "max_steps": 4, "checkpoint_every": 4, "eval_every_steps": 4}
    single = train(**cfg, output=str(tmp_path / "single"))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    ddp_cfg = {**cfg, "batch_size": 2, "output": str(tmp_path / "ddp")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), json.dumps(ddp_cfg)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = tmp_path / "ddp"
    assert losses(ddp) == pytest.approx(losses(tmp_path / "single"), rel=1e-4)
    assert len(log(ddp)) == len(log(tmp_path / "single"))  # one writer: no line twice
    assert sorted(p.name for p in ddp.iterdir()) == ["best", "checkpoint-00000004.pt", "metrics.jsonl"]
    evals = [r["val_miou"] for r in log(ddp) if "val_miou" in r]
    assert evals == pytest.approx([single.best_miou], abs=1e-6)  # the sharded eval saw every image once
    ref, got = final_weights(tmp_path / "single"), final_weights(ddp)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-5, msg=k)
