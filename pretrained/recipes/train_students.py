"""What the student recipes share (digits-v, kd, pd, cd): options, the teacher, the v start, quick FID, manifests."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

import samplers
from samplers.schedules import VPLinear
from samplers.students import STUDENT_T_END

from ..data import digits_split, split_sha256
from ..digits import DATA_SHAPE, as_model, load_feature_net, load_unet
from ..distill import T_MIN, v_model
from ..nets import UNet
from ..weights import WEIGHTS_ROOT
from .train_digits import EVAL_SEED, quantize

V_FOLDER = WEIGHTS_ROOT / "digits-v"


def student_args(description: str, *, workdir: str, out, steps: int, eval_every: int, lr: float = 2e-4,
                 batch: int = 128, ema: float = 0.999) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "samplerbench" / workdir),
                   help="training state, log and best EMA weights (not shipped); a rerun resumes from it")
    p.add_argument("--out", default=str(out))
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps (per round for pd)")
    p.add_argument("--max-minutes", type=float, default=float("inf"), help="stop earlier after this wall time")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=ema)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=0,
                   help="stopping rule: stop once the last k evaluations did not improve the best quick FID by more "
                        "than --min-improvement (0: off, run --steps)")
    p.add_argument("--min-improvement", type=float, default=0.01, help="relative, for --patience")
    return p


def open_log(workdir) -> Path:
    """Log to ``workdir``/train.log (created); returns the work directory."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=work / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")
    return work


def teacher():
    """The digits eps teacher (pin-checked): its network, its no-grad boundary and its manifest."""
    net, manifest = load_unet()
    return net, as_model(net, "digits-teacher"), manifest


def v_start() -> tuple[dict, dict]:
    """The digits-v weights every student starts from (pin-checked) and their manifest."""
    net, manifest = load_unet(V_FOLDER, name="digits-v")
    return net.state_dict(), manifest


def data_sampler(batch: int) -> Callable[[torch.Generator], torch.Tensor]:
    """generator -> a batch of the digits 'train' split drawn with replacement."""
    x, _ = digits_split("train")
    return lambda g: x[torch.randint(len(x), (batch,), generator=g)]


def fid_evaluator(runs: dict[str, tuple[str, int]], n: int, head: str | None = None) -> Callable[[UNet], dict]:
    """EMA net -> {column: FID} for each column's (sampler, NFE) on n samples (x_T and noise of seed EVAL_SEED),
    classifier features vs the 'reference' split: train_digits' quick FID, with the registered sampler the student
    is benchmarked with. ``head``: the net is that head of the sampled boundary (else the boundary itself)."""
    feat_net, _ = load_feature_net()
    with torch.no_grad():
        ref = fid_features_to_statistics(feat_net.features(digits_split("reference")[0]).double())
    x_T = samplers.initial_noise(EVAL_SEED, range(n), DATA_SHAPE, dtype=torch.float32)

    def evaluate(net: UNet) -> dict:
        out = {}
        for column, (name, nfe) in runs.items():
            model = v_model(net, "student")
            if head is not None:
                model = model.replace(heads={head: model})
            noise = samplers.SampleNoise(EVAL_SEED, range(n), DATA_SHAPE, dtype=torch.float32)
            x = samplers.get(name).sample(model, x_T, nfe, noise=noise).float()
            with torch.no_grad():
                f = feat_net.features(quantize(x)).double()
            out[column] = fid_statistics_to_metric(fid_features_to_statistics(f), ref, verbose=False)[
                "frechet_inception_distance"]
        return out

    return evaluate


def base_manifest(name: str, a, teacher_manifest: dict, init: dict, fid_protocol: str) -> dict:
    """The manifest entries every student shares."""
    _, feat_manifest = load_feature_net()
    return {"name": name, "architecture": {"class": "pretrained.nets.UNet", "config": UNet().config,
                                           "params": sum(p.numel() for p in UNet().parameters())},
            "schedule": VPLinear().config(), "prediction": "v", "time_input": "continuous", "t_range": [T_MIN, 1.0],
            "t_end": STUDENT_T_END, "split_sha256": split_sha256(),
            "teacher": {"name": "digits", "prediction": "eps", "weights_sha256": teacher_manifest["weights_sha256"]},
            "init": init, "feature_net_sha256": feat_manifest["weights_sha256"],
            "fid_protocol": f"EMA weights, {fid_protocol}, {a.eval_samples} samples (x_T seed {EVAL_SEED}), "
                            "classifier features vs the 300 'reference' images",
            "optimiser": {"adam_lr": a.lr, "warmup": a.warmup, "clip": a.clip, "batch": a.batch, "ema": a.ema,
                          "ema_warmup": "min(ema, (1 + k) / (10 + k))", "seed": a.seed, "threads": 1}}


def fit_options(a) -> dict:
    return dict(lr=a.lr, warmup=a.warmup, ema=a.ema, clip=a.clip, seed=a.seed, ckpt_every=a.ckpt_every,
                eval_every=a.eval_every, max_seconds=a.max_minutes * 60, patience=a.patience,
                min_improvement=a.min_improvement)


def v_stage(v_manifest: dict) -> list[dict]:
    """The digits-v fine-tune every student starts from, as a training-cost stage (data only: no teacher calls)."""
    t = v_manifest["training"]
    return [{"stage": "digits-v", "optimiser_steps": t.get("steps_run", t["steps"]), "teacher_nfe": 0,
             "seconds": t["seconds"], "threads": v_manifest["optimiser"].get("threads", 1)}]


TEACHER_NFE_PER_SAMPLE = {"cd": 1, "pd": 2}  # per training sample per step: CD one DDIM step, PD two


def cost_stages(manifest: dict, v_manifest: dict) -> list[dict]:
    """The training-cost stages of a student manifest (kd, pd, cd): its ``training_cost`` where it has one, else
    derived from what it records: the digits-v start, KD's pair set (pairs x the teacher solver's NFE) and its
    training, each PD round (steps x batch x 2 DDIM steps of the round's teacher: the digits teacher in round 1,
    the previous student after), CD's training (steps x batch x one teacher DDIM step)."""
    if "training_cost" in manifest:
        return list(manifest["training_cost"]["stages"])
    t, batch, threads = manifest["training"], manifest["optimiser"]["batch"], manifest["optimiser"]["threads"]
    student = manifest["student"]
    if student == "kd":
        ds = manifest["data_set"]
        solver_nfe = int(ds["x_end"].rsplit(",", 1)[1].split()[0])  # "..., 50 NFE"
        return v_stage(v_manifest) + [
            {"stage": "kd pairs", "optimiser_steps": 0, "teacher_nfe": ds["pairs"] * solver_nfe,
             "seconds": ds["seconds"], "threads": threads},
            {"stage": "kd", "optimiser_steps": t["steps_run"], "teacher_nfe": 0, "seconds": t["seconds"],
             "threads": threads, "shipped_step": t["steps"]}]
    if student == "pd":
        return v_stage(v_manifest) + [
            {"stage": f"pd round {r['student_steps']} steps", "optimiser_steps": r["steps_run"],
             "teacher_nfe": r["steps_run"] * batch * TEACHER_NFE_PER_SAMPLE["pd"], "seconds": r["seconds"],
             "threads": threads, "shipped_step": r["steps"]} for r in manifest["rounds"]]
    return v_stage(v_manifest) + [
        {"stage": student, "optimiser_steps": t["steps_run"],
         "teacher_nfe": t["steps_run"] * batch * TEACHER_NFE_PER_SAMPLE[student], "seconds": t["seconds"],
         "threads": threads, "shipped_step": t["steps"]}]


def training_cost(stages: list[dict]) -> dict:
    """A student's full training cost: its stages (the digits-v start included) and their sums. Teacher NFE counts
    teacher network evaluations per training sample (batch x teacher calls per sample x steps; KD's pairs: pairs x
    the teacher solver's NFE); CPU seconds = wall-clock seconds x threads (the quick-FID evaluations included)."""
    return {"optimiser_steps": sum(s["optimiser_steps"] for s in stages),
            "teacher_nfe": sum(s["teacher_nfe"] for s in stages),
            "seconds": round(sum(s["seconds"] for s in stages), 1),
            "threads": max(s["threads"] for s in stages),
            "cpu_seconds": round(sum(s["seconds"] * s["threads"] for s in stages), 1),
            "stages": stages}


def pd_costs(stages: list[dict]) -> dict[str, dict]:
    """PD's cost per shipped student: the N-step student costs every round up to and including its own."""
    out = {}
    for i, st in enumerate(stages):
        if st["stage"].startswith("pd round"):
            n = st["stage"].split()[2]
            out[n] = {k: v for k, v in training_cost(stages[:i + 1]).items() if k != "stages"}
    return out


def add_costs(folders=("digits-kd", "digits-pd", "digits-cd")) -> None:
    """Write ``training_cost`` into shipped student manifests that lack it (derived by ``cost_stages``); the
    weights, and so their pins, are untouched."""
    import json
    _, v_manifest = v_start()
    for name in folders:
        path = WEIGHTS_ROOT / name / "manifest.json"
        manifest = json.loads(path.read_text())
        if "training_cost" in manifest:
            continue
        stages = cost_stages(manifest, v_manifest)
        manifest["training_cost"] = training_cost(stages)
        if manifest["student"] == "pd":
            manifest["training_cost"]["per_student"] = pd_costs(stages)
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        print(f"{name}: {manifest['training_cost']['optimiser_steps']} steps, "
              f"{manifest['training_cost']['teacher_nfe']} teacher NFE, {manifest['training_cost']['seconds']} s")


if __name__ == "__main__":
    add_costs()
