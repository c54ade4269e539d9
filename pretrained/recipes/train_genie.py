"""Train digits-genie: GENIE's head distilled from the digits UNet (Dockhorn, Vahdat & Kreis 2022, Sec. 3.3).

The target is the teacher's total derivative along the PF-ODE, d eps / d gamma = J_x eps dx/dgamma + d_t eps dt/dgamma,
one JVP (``samplers.genie.eps_derivative``) at x_t = alpha_t x_0 + sigma_t z, t ~ U[T_MIN, 1] (the paper's time
sampling); the loss is the paper's gamma_t^2 |k_psi - d eps / d gamma|^2 (per-pixel mean). The teacher is frozen, so
its targets and the head's inputs from its one pass (eps, last feature map, embedding) are computed once into a pool
(the train split, ``--pool`` draws) and the head trains on batches of it. Adam,
learning rate decayed linearly to 0 (as the paper's recipe), gradient clipping. Every ``--eval-every`` steps the
weighted loss and the relative error |k - target| / |target| are measured on a held-out pool drawn from the
"holdout" split; the step with the lowest held-out loss is shipped. Resumable: pools and training state live in
the work directory.
"""
from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import torch

from samplers.genie import eps_derivative
from samplers.schedules import VPLinear

from ..data import digits_split, split_sha256
from ..digits import load_unet
from ..genie import FOLDER, NAME, GenieHead, head_inputs
from ..distill import plateaued
from ..weights import load_weights, save_weights
from .pins_note import pin_note
from .train_digits import T_MIN
from .train_students import training_cost

POOL_BATCH = 256
TEACHER_NFE_PER_POINT = 2  # one teacher pass (eps, h, emb) and one JVP per pool point (a JVP costs ~2-3 passes)
log = logging.getLogger("train_genie")


def make_pool(net, sch, x0: torch.Tensor, n: int, seed: int) -> dict:
    """n teacher targets at x_t of random images of ``x0``, t ~ U[T_MIN, 1]: d eps / d gamma by one JVP each, with
    what the head reads there (eps, feature map h, embedding; the teacher is frozen, so they are computed once)."""
    parts = []
    for i in range(0, n, POOL_BATCH):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)  # each batch from its own seed
        b = min(POOL_BATCH, n - i)
        x = x0[torch.randint(len(x0), (b,), generator=g)]
        t = T_MIN + (1 - T_MIN) * torch.rand(b, generator=g, dtype=torch.float64)
        z = torch.randn(x.shape, generator=g)
        xt = sch.alpha(t).float()[:, None, None, None] * x + sch.sigma(t).float()[:, None, None, None] * z
        with torch.no_grad():
            eps, h, emb, gamma = head_inputs(net, xt, t.float())
            _, target = eps_derivative(net, sch, xt, t.float(), eps)
        parts.append({"x": xt, "t": t.float(), "gamma": gamma, "eps": eps, "h": h, "emb": emb, "target": target})
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def weighted_error(head, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point gamma^2 |k - target|^2 (per-pixel mean) and relative error |k - target| / |target| on pool batch b."""
    k = head(b["x"], b["eps"], b["h"], b["emb"], b["gamma"])
    err = (k - b["target"]).flatten(1)
    wloss = (b["gamma"][:, None] ** 2 * err**2).mean(1)
    rel = err.norm(dim=1) / b["target"].flatten(1).norm(dim=1)
    return wloss, rel


def _batch(pool: dict, idx) -> dict:
    return {k: v[idx] for k, v in pool.items()}


def evaluate(head, pool: dict) -> dict:
    n = len(pool["x"])
    with torch.no_grad():
        parts = [weighted_error(head, _batch(pool, slice(i, i + POOL_BATCH))) for i in range(0, n, POOL_BATCH)]
    wloss, rel = (torch.cat(p) for p in zip(*parts))
    return {"heldout_wloss": wloss.mean().item(), "heldout_rel_err": rel.mean().item(),
            "heldout_rel_err_median": rel.median().item()}


def cost_stages(manifest: dict) -> list[dict]:
    """The training-cost stages of a shipped head: its manifest's ``training_cost``, or one stage of its ``training``
    (the pools included: they are rebuilt by a continued run)."""
    if "training_cost" in manifest:
        return list(manifest["training_cost"]["stages"])
    t = manifest["training"]
    return [{"stage": "genie head", "optimiser_steps": t["steps_run"],
             "teacher_nfe": TEACHER_NFE_PER_POINT * (t["pool"] + t["heldout"]),
             "seconds": round(t["seconds"] + t["pool_seconds"], 1), "threads": t["threads"],
             "shipped_step": t["steps"]}]


def _cached_pool(path: Path, make) -> dict:
    if path.exists():
        return torch.load(path, weights_only=True)
    pool = make()
    torch.save(pool, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return pool


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", default=str(Path.home() / ".cache" / "samplerbench" / "train_genie"))
    p.add_argument("--out", default=str(FOLDER))
    p.add_argument("--teacher", default=None, metavar="FOLDER",
                   help="a digits UNet folder (its manifest is trusted); default: the shipped digits, checked by pin")
    p.add_argument("--pool", type=int, default=65536, help="teacher targets from the train split")
    p.add_argument("--heldout", type=int, default=2048, help="teacher targets from the holdout split")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=["scratch", NAME], default="scratch",
                   help=f"{NAME}: continue from the shipped head (evaluated as step 0; its training cost is carried)")
    p.add_argument("--patience", type=int, default=0,
                   help="stopping rule: stop once the last k evaluations did not lower the best held-out loss by "
                        "more than --min-improvement (0: off, run --steps)")
    p.add_argument("--min-improvement", type=float, default=0.01, help="relative, for --patience")
    a = p.parse_args(argv)
    return train(a)


def train(a: argparse.Namespace) -> dict:
    """Distil the head from the teacher of ``a.teacher``; write it with its manifest and curve to ``a.out``."""
    torch.set_num_threads(1)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=work / "train.log", level=logging.INFO, format="%(asctime)s %(message)s")
    net, teacher = (load_unet() if a.teacher is None
                    else load_unet(a.teacher, name=None, trust_manifest=True))
    net.requires_grad_(False)
    sch = VPLinear()
    t0 = time.time()
    pool = _cached_pool(work / "pool.pt", lambda: make_pool(net, sch, digits_split("train")[0], a.pool, a.seed))
    held = _cached_pool(work / "heldout.pt",
                        lambda: make_pool(net, sch, digits_split("holdout")[0], a.heldout, a.seed + 1))
    pool_s = time.time() - t0
    log.info("pools: %d train, %d held-out targets (%.0fs)", len(pool["x"]), len(held["x"]), pool_s)

    torch.manual_seed(a.seed)
    head = GenieHead.for_unet(net, width=a.width)
    earlier = []
    if getattr(a, "init", "scratch") == NAME:
        shipped, shipped_manifest = load_weights(FOLDER, NAME)
        head.load_state_dict(shipped)
        earlier = cost_stages(shipped_manifest)
    opt = torch.optim.Adam(head.parameters(), lr=a.lr)
    state = {"step": 0, "curve": [], "best": float("inf"), "best_step": 0, "elapsed": 0.0, "loss_sum": 0.0,
             "loss_n": 0, "pool_s": pool_s}
    state_path, best_path = work / "state.pt", work / "best_head.pt"
    if state_path.exists():
        ck = torch.load(state_path, weights_only=True)
        head.load_state_dict(ck["head"]), opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log.info("resumed at step %d", state["step"])
    t0 = time.time() - state["elapsed"]
    patience, min_improvement = getattr(a, "patience", 0), getattr(a, "min_improvement", 0.01)

    def record(step: int) -> None:
        ev = evaluate(head, held)
        train_loss = state["loss_sum"] / state["loss_n"] if state["loss_n"] else float("nan")
        state["loss_sum"], state["loss_n"] = 0.0, 0
        state["curve"].append([step, train_loss, ev["heldout_wloss"], ev["heldout_rel_err"],
                               ev["heldout_rel_err_median"], round(time.time() - t0, 1)])
        if ev["heldout_wloss"] < state["best"]:
            state["best"], state["best_step"] = ev["heldout_wloss"], step
            torch.save(head.state_dict(), best_path)
        log.info("step %d train %.5f heldout %.5f rel_err %.4f (median %.4f) best %.5f at %d %.0fs", step,
                 train_loss, ev["heldout_wloss"], ev["heldout_rel_err"], ev["heldout_rel_err_median"],
                 state["best"], state["best_step"], time.time() - t0)

    def flat() -> bool:
        return patience > 0 and plateaued([row[2] for row in state["curve"]], patience, min_improvement)

    if earlier and not state["curve"]:
        record(0)  # the head it continues from: the baseline the stopping rule and the selection compare with
    while state["step"] < a.steps and not flat():
        step = state["step"]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)  # batch depends on the step only: resumable
        idx = torch.randint(len(pool["x"]), (a.batch,), generator=g)
        for group in opt.param_groups:
            group["lr"] = a.lr * (1.0 - step / a.steps)
        wloss, _ = weighted_error(head, _batch(pool, idx))
        loss = wloss.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), a.clip)
        opt.step()
        state["step"] = step = step + 1
        state["loss_sum"] += loss.item()
        state["loss_n"] += 1
        if step % a.eval_every == 0 or step == a.steps:
            record(step)
        if step % a.ckpt_every == 0 or step == a.steps or flat():
            state["elapsed"] = time.time() - t0
            torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "state": state}, work / "state.tmp")
            (work / "state.tmp").replace(state_path)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["step", "train_wloss", "heldout_wloss", "heldout_rel_err", "heldout_rel_err_median", "elapsed_s"]
    with open(out / "training_curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(state["curve"])
    best = next(c for c in state["curve"] if c[0] == state["best_step"])
    stopped = "plateau" if flat() else "steps"
    rule = (f"stop when the best held-out weighted loss of the last {patience} evaluations (every {a.eval_every} "
            f"steps) is not {100 * min_improvement:g} % below the best before them" if patience > 0
            else f"{a.steps} steps (learning rate decayed linearly to 0)")
    stage = {"stage": "genie head" if not earlier else f"genie head (continued {len(earlier)})",
             "optimiser_steps": state["step"], "teacher_nfe": TEACHER_NFE_PER_POINT * (a.pool + a.heldout),
             "seconds": round(state["curve"][-1][5] + state["pool_s"], 1), "threads": 1,
             "shipped_step": state["best_step"], "stopped": stopped}
    manifest = save_weights(out, torch.load(best_path, weights_only=True), {
        "name": NAME, "architecture": {"class": "pretrained.genie.GenieHead", "config": head.config,
                                       "params": sum(p.numel() for p in head.parameters())},
        "teacher": {"name": teacher.get("name"), "weights_sha256": teacher["weights_sha256"]},
        "schedule": sch.config(), "prediction": "d eps / d gamma along the PF-ODE, gamma = sigma / alpha",
        "inputs": "x_t, the teacher's eps, its last feature map h (UNet.forward_with_features) and time embedding",
        "output_mixing": "k = -k1 / gamma + k2 gamma / (1 + gamma^2) + k3 / (gamma (1 + gamma^2))",
        "target": "JVP of the teacher eps(x, t) along (dx/dgamma, dt/dgamma) = (alpha (eps - sigma x), "
                  "-alpha sigma / f), f = d log alpha / dt (samplers.genie.eps_derivative)",
        "loss": "gamma_t^2 |k - d eps / d gamma|^2, per-pixel mean (Dockhorn et al. 2022)",
        "time_sampling": f"t ~ U[{T_MIN}, 1]", "t_range": [T_MIN, 1.0],
        "data": "sklearn load_digits (1, 8, 8) in [-1, 1]; pool from split 'train', held-out pool from 'holdout'",
        "split_sha256": split_sha256(),
        "training": {"steps": state["best_step"], "steps_run": state["step"], "batch": a.batch, "lr": a.lr,
                     "lr_schedule": "linear decay to 0", "clip": a.clip, "optimizer": "Adam", "seed": a.seed,
                     "pool": a.pool, "heldout": a.heldout, "threads": 1, "pool_seconds": round(state["pool_s"], 1),
                     "seconds": state["curve"][-1][5], "recipe": "python -m pretrained.train genie",
                     "init": getattr(a, "init", "scratch"), "stopping_rule": rule, "stopped": stopped},
        "training_cost": training_cost(earlier + [stage]),
        "heldout": dict(zip(columns[1:5], best[1:5])),
    })
    log.info("shipped step %d (held-out loss %.5f, rel err %.4f) to %s", best[0], best[2], best[3], out)
    print(f"shipped step {best[0]}, held-out weighted loss {best[2]:.5f}, relative error {best[3]:.4f}, "
          f"sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note(NAME, out, manifest["weights_sha256"]))
    return manifest


if __name__ == "__main__":
    main()
