"""Train digits-vdm: a VDM (Kingma et al. 2021) with a learned schedule on the continuous-time VLB of discrete digits.

Per step: antithetic times t_i = mod(u + i / B, 1); loss = recon + prior + 0.5 gamma'(t) ||eps - eps_hat||^2 in bits
per dim, gamma' by autograd. The UNet and the endpoints gamma_0, gamma_1 get the VLB gradient; the shape of the
schedule gets the gradient of the mean squared diffusion term (VDM's variance minimisation: in continuous time the
VLB depends on the endpoints only, so the shape is spent on the estimator's variance). Adam with warm-up, gradient
clipping on the UNet, EMA (with warm-up) of every parameter. Resumable from ``--workdir`` (state every
``--ckpt-every`` steps; batches depend on the step only). Every ``--eval-every`` steps the EMA model is scored: the
bound in bits/dim on the holdout split and a quick FID (DDIM, fixed x_T). The EMA weights of the best holdout bound
are shipped; ``--max-minutes`` bounds the training time.
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

import samplers

from ..data import digits_split, split_sha256
from ..digits import DATA_SHAPE, load_feature_net
from ..vdm import (GAMMA_MAX, GAMMA_MIN, NAME, VDM, VDM_FOLDER, LearnedSchedule, as_model, bits_per_dim,
                   diffusion_loss, prior_loss, recon_loss, vlb_bits_per_dim)
from ..weights import save_weights
from .pins_note import pin_note
from .train_digits import quantize

EVAL_SEED = 1234
CURVE_COLUMNS = ["step", "train_bpd", "train_diff_bpd_std", "holdout_bpd", "holdout_recon", "holdout_prior",
                 "holdout_diffusion", "gamma_0", "gamma_1", "fid_ddim", "elapsed_s"]
log = logging.getLogger("train_vdm")


def quick_fid(vdm: VDM, feat_net, ref_stats, x_T: torch.Tensor, nfe: int) -> float:
    model = as_model(vdm.net, LearnedSchedule.from_module(vdm.gamma))
    x0 = samplers.get("ddim").sample(model, x_T, nfe).float()
    with torch.no_grad():
        f = feat_net.features(quantize(x0)).double()
    out = fid_statistics_to_metric(fid_features_to_statistics(f), ref_stats, verbose=False)
    return out["frechet_inception_distance"]


def train_step(vdm: VDM, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one step (gradients accumulated in ``vdm``); returns the VLB (bpd) and the per-example diffusion
    term (bpd), both detached."""
    B = len(x0)
    # Antithetic (low-discrepancy) times: one uniform draw shifted by i / B.
    t = torch.remainder(torch.rand((), generator=g) + torch.arange(B) / B, 1.0).requires_grad_(True)
    eps, eps_0 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    s = vdm.gamma.shape(t)
    (ds,) = torch.autograd.grad(s.sum(), t, create_graph=True)
    # The VLB sees the shape through detached leaves, so the shape's gradient can be taken separately below.
    s_d, ds_d = s.detach().requires_grad_(True), ds.detach().requires_grad_(True)
    g0, g1 = vdm.gamma.gamma_0, vdm.gamma.gamma_1
    diff = bits_per_dim(diffusion_loss(vdm, x0, g0 + (g1 - g0) * s_d, (g1 - g0) * ds_d, eps))
    vlb = bits_per_dim(recon_loss(x0, g0, eps_0) + prior_loss(x0, g1)) + diff
    vlb.mean().backward()
    # Shape: d/d eta mean(L_diff^2) = sum_i 2 L_i (dL_i/ds_i ds_i/d eta + dL_i/ds'_i ds'_i/d eta) / B, and
    # s_d.grad_i = dL_i/ds_i / B (example i alone depends on s_i).
    L = diff.detach()
    torch.autograd.backward([s, ds], [2.0 * L * s_d.grad, 2.0 * L * ds_d.grad])
    return vlb.detach(), L


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "samplerbench" / "train_vdm"),
                   help="training state, log and best EMA weights (not shipped)")
    p.add_argument("--out", default=str(VDM_FOLDER))
    p.add_argument("--feature-net", default=None, metavar="FOLDER",
                   help="FID feature network trained by `pretrained.train features --out FOLDER` (its manifest is "
                        "trusted); default: the shipped one, checked against its pin")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--max-minutes", type=float, default=45.0, help="stop (and ship) after this much training time")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip of the UNet")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-samples", type=int, default=1000, help="samples of the quick FID")
    p.add_argument("--eval-nfe", type=int, default=20)
    p.add_argument("--eval-holdout", type=int, default=300, help="holdout images of the bound")
    p.add_argument("--eval-times", type=int, default=8, help="stratified times per holdout image")
    p.add_argument("--final-times", type=int, default=64, help="times per holdout image of the shipped bound")
    p.add_argument("--channels", type=int, nargs=2, default=[32, 64])
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n-features", type=int, default=1024, help="width of the schedule's monotone network")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=work / "train.log", level=logging.INFO, format="%(asctime)s %(message)s",
                        force=True)

    x_data, _ = digits_split("train")
    x_hold = digits_split("holdout")[0][:a.eval_holdout]
    feat_net, feat_manifest = (load_feature_net() if a.feature_net is None
                               else load_feature_net(a.feature_net, trust_manifest=True))
    with torch.no_grad():
        ref_stats = fid_features_to_statistics(feat_net.features(digits_split("reference")[0]).double())
    x_T = samplers.initial_noise(EVAL_SEED, range(a.eval_samples), DATA_SHAPE)

    torch.manual_seed(a.seed)
    unet_config = {"channels": a.channels, "emb_dim": a.emb_dim, "groups": a.groups}
    vdm, ema = VDM(unet_config, a.n_features), VDM(unet_config, a.n_features)
    ema.load_state_dict(vdm.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(vdm.parameters(), lr=a.lr)
    state = {"step": 0, "curve": [], "best_bpd": float("inf"), "best_step": 0, "elapsed": 0.0, "sums": [0.0, 0.0, 0]}
    state_path = work / "state.pt"
    if state_path.exists():
        ck = torch.load(state_path, weights_only=True)
        vdm.load_state_dict(ck["vdm"]), ema.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log.info("resumed at step %d (%.0f s trained)", state["step"], state["elapsed"])

    def save_state():
        state["elapsed"] = time.time() - t0
        torch.save({"vdm": vdm.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "state": state},
                   work / "state.tmp")
        (work / "state.tmp").replace(state_path)

    def evaluate(step):
        ev = vlb_bits_per_dim(ema, x_hold, a.eval_times, seed=EVAL_SEED)
        fid = quick_fid(ema, feat_net, ref_stats, x_T, a.eval_nfe)
        n = max(state["sums"][2], 1)
        train_bpd, diff_std = state["sums"][0] / n, state["sums"][1] / n
        state["sums"] = [0.0, 0.0, 0]
        state["curve"].append([step, train_bpd, diff_std, ev["bpd"], ev["recon"], ev["prior"], ev["diffusion"],
                               float(ema.gamma.gamma_0), float(ema.gamma.gamma_1), fid, round(time.time() - t0, 1)])
        if ev["bpd"] < state["best_bpd"]:
            state["best_bpd"], state["best_step"] = ev["bpd"], step
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(work / "best_ema.safetensors"))
        log.info("step %d train %.4f holdout bpd %.4f (recon %.4f prior %.4f diff %.4f) gamma [%.3f, %.3f] fid %.2f "
                 "(best bpd %.4f at %d) %.0fs", step, train_bpd, ev["bpd"], ev["recon"], ev["prior"],
                 ev["diffusion"], float(ema.gamma.gamma_0), float(ema.gamma.gamma_1), fid, state["best_bpd"],
                 state["best_step"], time.time() - t0)

    t0 = time.time() - state["elapsed"]
    if state["step"] == 0 and not state["curve"]:
        evaluate(0)
    while state["step"] < a.max_steps and time.time() - t0 < 60.0 * a.max_minutes:
        step = state["step"]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)  # the batch depends on the step only
        x0 = x_data[torch.randint(len(x_data), (a.batch,), generator=g)]
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        opt.zero_grad()
        vlb, diff = train_step(vdm, x0, g)
        torch.nn.utils.clip_grad_norm_(vdm.net.parameters(), a.clip)
        opt.step()
        # EMA with warm-up: decay min(ema, (1 + k) / (10 + k)).
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), vdm.parameters()):
                pe.lerp_(pn, 1 - decay)
        state["step"] = step = step + 1
        state["sums"] = [state["sums"][0] + vlb.mean().item(), state["sums"][1] + diff.std().item(),
                         state["sums"][2] + 1]
        if step % a.eval_every == 0:
            evaluate(step)
        if step % a.ckpt_every == 0:
            save_state()
            log.info("step %d vlb %.4f saved", step, vlb.mean().item())
    if state["curve"][-1][0] != state["step"]:
        evaluate(state["step"])
    save_state()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        w.writerows(state["curve"])
    best = state["best_step"]
    weights = load_file(str(work / "best_ema.safetensors"))
    shipped = VDM(unet_config, a.n_features)
    shipped.load_state_dict(weights)
    final = vlb_bits_per_dim(shipped.eval(), digits_split("holdout")[0], a.final_times, seed=0)
    row = dict(zip(CURVE_COLUMNS, next(c for c in state["curve"] if c[0] == best)))
    manifest = save_weights(out, weights, {
        "name": NAME, "architecture": {"class": "pretrained.vdm.VDM", "config": shipped.config,
                                       "unet_class": "pretrained.nets.UNet",
                                       "params": sum(q.numel() for q in shipped.net.parameters()),
                                       "schedule_params": sum(q.numel() for q in shipped.gamma.parameters())},
        "schedule": LearnedSchedule.from_module(shipped.gamma).config(), "prediction": "eps",
        "time_input": f"the UNet takes (gamma(t) - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN), (GAMMA_MIN, GAMMA_MAX) = "
                      f"({GAMMA_MIN:.4f}, {GAMMA_MAX}); the model boundary takes continuous t in [0, 1]",
        "data": "sklearn load_digits, (1, 8, 8), 17 levels at [-1, 1], split 'train', no dequantisation",
        "split_sha256": split_sha256(),
        "training": {"steps": best, "steps_run": state["step"], "batch": a.batch, "lr": a.lr, "warmup": a.warmup,
                     "ema": a.ema, "ema_warmup": "min(ema, (1 + k) / (10 + k))", "clip_unet": a.clip,
                     "seed": a.seed, "threads": 1, "objective": "continuous-time VLB (VDM); schedule shape on the "
                     "squared diffusion term; antithetic times", "train_bpd": row["train_bpd"],
                     "seconds": state["curve"][-1][-1], "recipe": "python -m pretrained.train vdm"},
        "vlb_holdout": {"protocol": f"bound on -log2 P(x) per dim, 300 'holdout' images x {a.final_times} "
                                    "stratified times (seed 0), EMA weights shipped", **final},
        "training_curve": {"protocol": f"EMA weights every {a.eval_every} steps: bound on {len(x_hold)} holdout "
                                       f"images x {a.eval_times} times (seed {EVAL_SEED}); quick FID: DDIM "
                                       f"{a.eval_nfe} steps, {a.eval_samples} samples (seed {EVAL_SEED}), classifier "
                                       "features vs the 300 'reference' images", "best_bpd": state["best_bpd"],
                           "best_step": best, "file": "training_curve.csv"},
        "feature_net_sha256": feat_manifest["weights_sha256"]})
    log.info("shipped EMA weights of step %d (holdout bpd %.4f; final %.4f) to %s", best, state["best_bpd"],
             final["bpd"], out)
    print(f"shipped step {best}, holdout bound {final['bpd']:.4f} bits/dim, sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note(NAME, out, manifest["weights_sha256"]))


if __name__ == "__main__":
    main()
