"""Train the digits UNet: eps-prediction denoising (Ho et al. 2020) on the VP linear SDE (Song et al. 2021).

Continuous t ~ U[T_MIN, 1], Adam with linear warm-up, gradient clipping, EMA weights (with warm-up). Resumable: the
training state is saved to the work directory every ``--ckpt-every`` steps. Every ``--eval-every`` steps
the EMA model is scored by a quick FID (DDIM 20 steps, fixed x_T, classifier features vs the
"reference" split); training stops when that FID has not improved for ``--patience`` evaluations, and
the EMA weights of the best evaluation are shipped. ``train`` is that loop with the loss, the initial weights and
extra evaluations as arguments (``train_lw`` reuses it).
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

import samplers
from samplers.schedules import VPLinear

from ..data import digits_split, split_sha256
from ..digits import DATA_SHAPE, as_model, load_feature_net
from ..nets import UNet
from ..weights import WEIGHTS_ROOT, save_weights
from .pins_note import pin_note

T_MIN = 1e-3
EVAL_SEED = 1234
OUT = WEIGHTS_ROOT / "digits"
log = logging.getLogger("train_digits")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit levels -> [-1, 1], as the FID pipeline sees images."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def quick_fid(net: UNet, feat_net, ref_stats, x_T: torch.Tensor, nfe: int, model_fn: Callable = as_model,
              sampler: str = "ddim") -> float:
    x0 = samplers.get(sampler).sample(model_fn(net), x_T, nfe).float()
    with torch.no_grad():
        f = feat_net.features(quantize(x0)).double()
    out = fid_statistics_to_metric(fid_features_to_statistics(f), ref_stats, verbose=False)
    return out["frechet_inception_distance"]


def add_training_args(p: argparse.ArgumentParser, *, workdir: str, out) -> argparse.ArgumentParser:
    """The options every UNet recipe shares (optimiser, EMA, checkpoints, quick FID); defaults of this recipe."""
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "samplerbench" / workdir),
                   help="training state, log and best EMA weights (not shipped)")
    p.add_argument("--out", default=str(out))
    p.add_argument("--feature-net", default=None, metavar="FOLDER",
                   help="FID feature network trained by `pretrained.train features --out FOLDER` (its manifest is "
                        "trusted); default: the shipped one, checked against its pin")
    p.add_argument("--max-steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=600)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--eval-nfe", type=int, default=20)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--max-minutes", type=float, default=float("inf"), help="stop earlier after this wall time "
                   "(summed over resumes; checked between steps)")
    p.add_argument("--seed", type=int, default=0)
    return p


def eps_loss(net: UNet, sch, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Ho et al.'s simple loss, t ~ U[T_MIN, 1]: mean |eps_theta(x_t, t) - eps|^2."""
    t = T_MIN + (1 - T_MIN) * torch.rand(len(x0), generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g)
    return denoising_loss(net, sch, x0, t, eps)


def denoising_loss(net: UNet, sch, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps; mean over batch and pixels of |eps_theta(x_t, t[, y]) - eps|^2."""
    a_t, s_t = sch.alpha(t).float()[:, None, None, None], sch.sigma(t).float()[:, None, None, None]
    x_t = a_t * x0 + s_t * eps
    return (((net(x_t, t.float()) if y is None else net(x_t, t.float(), y)) - eps) ** 2).mean()


def main(argv=None):
    p = add_training_args(argparse.ArgumentParser(description=__doc__), workdir="train_digits", out=OUT)
    train(p.parse_args(argv), name="digits")


def train(a: argparse.Namespace, *, name: str, loss: Callable = eps_loss, init: dict | None = None,
          evaluate: Callable[[UNet], dict] | None = None, select: str | Callable[[dict], float] = "fid",
          eval_at_start: bool = False, select_start: bool = False,
          manifest: dict | None = None, training: dict | None = None, net_factory: Callable[[], UNet] = UNet,
          labelled: bool = False, schedule=None, model_fn: Callable = as_model, eval_sampler: str = "ddim") -> dict:
    """Train a UNet with Adam (warm-up, clip), EMA weights, a quick FID every ``eval_every`` steps; ship the best.

    Args:
        a: the options of ``add_training_args``.
        name: the checkpoint name written to the manifest.
        loss: (net, schedule, x0 batch, generator) -> scalar loss; draws its times and noise from the generator.
            With ``labelled`` it is called ``loss(net, schedule, x0, generator, y=labels of x0)``.
        init: a state dict both the network and its EMA start from (default: random init, seed ``a.seed``).
        net_factory: () -> the network (and its EMA); its ``config`` goes into the manifest.
        labelled: pass the class labels of each batch to ``loss``.
        evaluate: EMA net -> {column: value}, extra columns of the training curve (and the manifest's
            "eval_curves") at every evaluation.
        select: the column (lower is better) that picks the shipped step and counts ``patience``: "fid" or a
            key of ``evaluate``'s result, or a function of the evaluation's columns (named by its ``__name__``).
        eval_at_start: also evaluate the initial EMA (a step-0 row; selected only with ``select_start``: a run that
            continues shipped weights ships them again unless a later step beats them).
        manifest, training: entries added to (or replacing) the manifest's top level and its "training" entry.
        schedule: the noise schedule ``loss`` trains on (default VPLinear()); ``model_fn`` (net -> DiffusionModel)
            puts the net behind its model boundary and ``eval_sampler`` samples the quick FID (another family: another
            prediction, and a sampler that suits it).
    Returns the written manifest.
    """
    torch.set_num_threads(1)
    score = select if callable(select) else (lambda ev: ev[select])
    select = getattr(select, "__name__", select)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=work / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")

    sch = VPLinear() if schedule is None else schedule
    x_data, y_data = digits_split("train")
    feat_net, feat_manifest = (load_feature_net() if a.feature_net is None
                               else load_feature_net(a.feature_net, trust_manifest=True))
    with torch.no_grad():
        ref_stats = fid_features_to_statistics(feat_net.features(digits_split("reference")[0]).double())
    x_T = samplers.initial_noise(EVAL_SEED, range(a.eval_samples), DATA_SHAPE, std=sch.prior_std)

    def evaluation(net: UNet) -> dict:
        return {"fid": quick_fid(net, feat_net, ref_stats, x_T, a.eval_nfe, model_fn, eval_sampler),
                **(evaluate(net) if evaluate else {})}

    torch.manual_seed(a.seed)
    net, ema = net_factory(), net_factory()
    if init is not None:
        net.load_state_dict(init)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    state = {"step": 0, "curve": [], "best": float("inf"), "best_step": 0, "elapsed": 0.0, "loss_sum": 0.0,
             "loss_n": 0, "stale": 0, "columns": []}
    state_path = work / "state.pt"
    if state_path.exists():
        ck = torch.load(state_path, weights_only=True)
        net.load_state_dict(ck["net"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log.info("resumed at step %d", state["step"])

    t0 = time.time() - state["elapsed"]
    if eval_at_start and not state["curve"]:
        ev = evaluation(ema)
        state["columns"] = [k for k in ev if k != "fid"]
        state["curve"].append([0, float("nan"), ev["fid"], 0.0, *(ev[k] for k in state["columns"])])
        if select_start:
            state["best"] = score(ev)
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(work / "best_ema.safetensors"))
        log.info("step 0 (initial EMA) %s", " ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    max_seconds = getattr(a, "max_minutes", float("inf")) * 60
    while state["step"] < a.max_steps and state["stale"] < a.patience and time.time() - t0 < max_seconds:
        step = state["step"]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)  # batch depends on the step only: resumable
        pick = torch.randint(len(x_data), (a.batch,), generator=g)
        value = loss(net, sch, x_data[pick], g, y=y_data[pick]) if labelled else loss(net, sch, x_data[pick], g)
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip)
        opt.step()
        # EMA with warm-up: decay min(ema, (1 + k) / (10 + k)), so the random init is forgotten early.
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - decay)
        state["step"] = step = step + 1
        state["loss_sum"] += value.item()
        state["loss_n"] += 1

        if step % a.eval_every == 0 or step == a.max_steps:
            ev = evaluation(ema)
            state["columns"] = [k for k in ev if k != "fid"]
            loss_avg = state["loss_sum"] / state["loss_n"]
            state["loss_sum"], state["loss_n"] = 0.0, 0
            state["curve"].append([step, loss_avg, ev["fid"], round(time.time() - t0, 1),
                                   *(ev[k] for k in state["columns"])])
            if score(ev) < state["best"]:
                state["best"], state["best_step"], state["stale"] = score(ev), step, 0
                save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(work / "best_ema.safetensors"))
            else:
                state["stale"] += 1
            extra = "".join(f" {k} {ev[k]:.4f}" for k in state["columns"])
            by = "" if select == "fid" else f"{select} "
            log.info("step %d loss %.4f fid %.3f%s (best %s%.3f at %d) %.0fs", step, loss_avg, ev["fid"], extra,
                     by, state["best"], state["best_step"], time.time() - t0)
        if step % a.ckpt_every == 0:
            state["elapsed"] = time.time() - t0
            torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "state": state},
                       work / "state.tmp")
            (work / "state.tmp").replace(state_path)
            log.info("step %d loss %.4f saved", step, value.item())

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        # the quick-FID column is named by its default protocol (the manifest's fid_curve says the one run)
        w.writerow(["step", "train_loss", f"fid_{eval_sampler}20_1000", "elapsed_s", *state["columns"]])
        w.writerows(state["curve"])
    best = state["best_step"]
    best_row = next(c for c in state["curve"] if c[0] == best)
    manifest = save_weights(out, load_file(str(work / "best_ema.safetensors")), {
        "name": name, "architecture": {"class": "pretrained.nets.UNet", "config": net.config,
                                       "params": sum(p.numel() for p in net.parameters())},
        "schedule": sch.config(), "prediction": "eps", "time_input": "continuous", "t_range": [T_MIN, 1.0],
        "data": "sklearn load_digits, (1, 8, 8) in [-1, 1], split 'train'", "split_sha256": split_sha256(),
        "training": {"steps": best, "steps_run": state["step"], "batch": a.batch, "lr": a.lr, "warmup": a.warmup,
                     "ema": a.ema, "ema_warmup": "min(ema, (1 + k) / (10 + k))", "clip": a.clip,
                     "seed": a.seed, "threads": 1, "final_loss": best_row[1],
                     "seconds": state["curve"][-1][3], "recipe": f"python -m pretrained.train {name}",
                     "stopping_rule": f"stop after {a.patience} evaluations (every {a.eval_every} steps) without a "
                                      f"new best {select}, or at {a.max_steps} steps",
                     "stopped": ("plateau" if state["stale"] >= a.patience else "steps" if state["step"] >= a.max_steps
                                 else "time"),
                     **(training or {})},
        "fid_curve": {"protocol": f"EMA weights, {eval_sampler} {a.eval_nfe} NFE, {a.eval_samples} samples (seed {EVAL_SEED}), "
                                  "classifier features vs the 300 'reference' images",
                      "best_fid": best_row[2], "best_step": best,
                      "curve": [[c[0], round(c[2], 3)] for c in state["curve"]]},
        "feature_net_sha256": feat_manifest["weights_sha256"],
        **({"eval_curves": {k: [[c[0], round(c[4 + i], 4)] for c in state["curve"]]
                            for i, k in enumerate(state["columns"])}} if state["columns"] else {}),
        **(manifest or {})})
    log.info("shipped EMA weights of step %d (quick FID %.3f) to %s", best, best_row[2], out)
    print(f"shipped step {best}, quick FID {best_row[2]:.3f}"
          + (f", {select} {state['best']:.4f}" if select != "fid" else "")
          + f", sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note(name, out, manifest["weights_sha256"]))
    return manifest


if __name__ == "__main__":
    main()
