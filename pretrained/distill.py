"""Distilling the digits teacher into few-step students: the v-prediction start, KD, PD and CD losses, one loop.

The students' sampling rules live in ``samplers/students.py`` (the consistency function, KD's one-step map, PD's
DDIM): the losses here call them, so what is trained is what is sampled.
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

import samplers
from samplers.model import DiffusionModel
from samplers.schedules import VPLinear
from samplers.students import consistency_fn, ddim_jump, kd_map

from .digits import DATA_SHAPE
from .nets import UNet

T_MIN = 1e-3  # the teacher's training range [T_MIN, 1]
log = logging.getLogger("distill")


# -- model boundaries -------------------------------------------------------------------------
def v_model(net: UNet, name: str, *, grad: bool = False) -> DiffusionModel:
    """The boundary of a v-prediction UNet (VP linear) on its device; ``grad``: differentiable (training), else
    called under no_grad (not inference_mode: torch.compile cannot trace through it)."""
    device = next(net.parameters()).device
    if grad:
        return DiffusionModel(net, VPLinear(), "v", data_shape=DATA_SHAPE, name=name, device=device)

    def fn(x, t):
        with torch.no_grad():
            return net(x, t)

    return DiffusionModel(fn, VPLinear(), "v", data_shape=DATA_SHAPE, name=name, device=device)


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))


# -- digits-v: the teacher fine-tuned to v-prediction -----------------------------------------------
def v_loss(net: UNet, sch, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Salimans & Ho 2022 v-prediction: mean |v_theta(x_t, t) - v|^2, v = alpha eps - sigma x0, t ~ U[T_MIN, 1]."""
    t = T_MIN + (1 - T_MIN) * torch.rand(len(x0), generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g)
    a, s = _bcast(sch.alpha(t), x0), _bcast(sch.sigma(t), x0)
    return ((net(a * x0 + s * eps, t.float()) - (a * eps - s * x0)) ** 2).mean()


# -- KD (Luhman & Luhman 2021) ------------------------------------------------------------------
def kd_pairs(teacher: DiffusionModel, seed: int, n: int, solver: str, nfe: int, t_end: float,
             batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T, x_end): x_T of sample indices 0..n-1 of ``seed``, x_end the teacher's deterministic ODE solve (float64)."""
    x_T = samplers.initial_noise(seed, range(n), DATA_SHAPE)
    sampler = samplers.get(solver, t_end=t_end)
    x_end = torch.cat([sampler.sample(teacher, x_T[i:i + batch], nfe) for i in range(0, n, batch)])
    return x_T, x_end


def kd_loss(student: DiffusionModel, x_T: torch.Tensor, x_end: torch.Tensor, t_end: float) -> torch.Tensor:
    """Luhman & Luhman's loss with the squared L2 distance: mean |student(x_T) - teacher ODE solution(x_T)|^2."""
    return ((kd_map(student, x_T, t_end) - x_end) ** 2).mean()


# -- PD (Salimans & Ho 2022, Algorithm 2) ------------------------------------------------------------
def pd_target(teacher: DiffusionModel, z: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
              s: torch.Tensor) -> torch.Tensor:
    """x~ of Algorithm 2: the x0 with which ONE DDIM step t -> s lands where TWO teacher DDIM steps t -> t_mid -> s do.

    z'' = two teacher steps; x~ = (z'' - (sigma_s / sigma_t) z) / (alpha_s - (sigma_s / sigma_t) alpha_t).
    """
    sch = teacher.schedule
    (a_t, s_t), (a_m, s_m), (a_s, s_s) = [(_bcast(sch.alpha(u), z), _bcast(sch.sigma(u), z)) for u in (t, t_mid, s)]
    with torch.no_grad():
        z_mid = ddim_jump(teacher.x0(z, t), z, a_t, s_t, a_m, s_m)
        z_s = ddim_jump(teacher.x0(z_mid, t_mid), z_mid, a_m, s_m, a_s, s_s)
    ratio = s_s / s_t
    return (z_s - ratio * z) / (a_s - ratio * a_t)


def pd_loss(student: DiffusionModel, teacher: DiffusionModel, x0: torch.Tensor, n_steps: int, t_end: float,
            g: torch.Generator) -> torch.Tensor:
    """max(SNR, 1) |x~ - x0_student(z_t)|^2 (truncated SNR weighting), t a student grid point (time-uniform, N steps).

    The student's step i goes t_i -> t_{i+1}; the teacher's two steps go through the midpoint (its 2N-step grid).
    """
    sch = student.schedule
    ts = samplers.time_grid(sch, "time_uniform", 2 * n_steps, t_end)
    i = 2 * torch.randint(n_steps, (len(x0),), generator=g)
    t, t_mid, s = ts[i], ts[i + 1], ts[i + 2]
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x0 = x0.double()
    z = _bcast(sch.alpha(t), x0) * x0 + _bcast(sch.sigma(t), x0) * eps
    target = pd_target(teacher, z, t, t_mid, s)
    weight = _bcast((sch.alpha(t) / sch.sigma(t)) ** 2, x0).clamp(min=1.0)
    return (weight * (student.x0(z.float(), t).double() - target) ** 2).mean()


# -- CD (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 2) -----------------------------------------------
def cd_grid(sch, n_points: int, t_end: float) -> torch.Tensor:
    """The N discretisation points t_1 > ... > t_N = t_end: Karras et al.'s grid (rho = 7), as the paper uses."""
    return samplers.time_grid(sch, "karras", n_points - 1, t_end)


def cd_loss(student: DiffusionModel, target: DiffusionModel, teacher: DiffusionModel, x0: torch.Tensor,
            grid: torch.Tensor, t_end: float, g: torch.Generator) -> torch.Tensor:
    """mean |f_theta(x_{t_hi}, t_hi) - f_target(x^_{t_lo}, t_lo)|^2, x^_{t_lo} one teacher DDIM step from x_{t_hi}."""
    sch = student.schedule
    i = torch.randint(len(grid) - 1, (len(x0),), generator=g)
    t_hi, t_lo = grid[i], grid[i + 1]
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x0 = x0.double()
    (a_hi, s_hi), (a_lo, s_lo) = [(_bcast(sch.alpha(u), x0), _bcast(sch.sigma(u), x0)) for u in (t_hi, t_lo)]
    x_hi = a_hi * x0 + s_hi * eps
    with torch.no_grad():
        x_lo = ddim_jump(teacher.x0(x_hi, t_hi), x_hi, a_hi, s_hi, a_lo, s_lo)
        f_target = consistency_fn(target, x_lo, t_lo, t_end)
    return ((consistency_fn(student, x_hi.float(), t_hi, t_end).double() - f_target) ** 2).mean()


# -- one training loop for every student and round -----------------------------------------------------
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - decay)


def fit(work: Path, net: UNet, loss_fn: Callable[[UNet, torch.Generator, int], torch.Tensor], *, steps: int,
        lr: float, warmup: int, ema: float, clip: float, seed: int, evaluate: Callable[[UNet], dict], select: str,
        ckpt_every: int = 100, eval_every: int = 500, max_seconds: float = float("inf"),
        after_step: Callable[[UNet, int], None] | None = None, patience: int = 0,
        min_improvement: float = 0.01) -> dict:
    """Adam (linear warm-up, clipping) with EMA weights; resumable from ``work``; the best-``select`` EMA is kept.

    ``loss_fn(net, generator, step)`` draws its batch from the generator (seeded by the step: a resumed run draws the
    same batches). The EMA is evaluated at step 0 (the initialisation) and every ``eval_every`` steps and at the
    end; training stops after ``steps`` steps or ``max_seconds`` (summed over resumes). ``after_step(net, step)``
    runs after each optimiser step (CD's target network). ``patience`` k > 0 adds the stopping rule of
    ``plateaued``: stop once the last k evaluations did not lower the best ``select`` by more than
    ``min_improvement`` (relative). Returns {"state": best EMA state dict, "curve": [step, mean loss, elapsed s,
    *evaluation], "columns", "best_step", "steps_run", "seconds", "threads", "stopped" ("steps", "time" or
    "plateau"), "stopping_rule"}; a finished phase in ``work`` returns its stored result.
    """
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    done_path, state_path = work / "done.pt", work / "state.pt"
    if done_path.exists():
        out = torch.load(done_path, weights_only=True)
        return {**out, "state": load_file(str(work / "best_ema.safetensors"))}
    ema_net = UNet(**net.config)
    ema_net.load_state_dict(net.state_dict())
    ema_net.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    st = {"step": 0, "curve": [], "best": float("inf"), "best_step": 0, "elapsed": 0.0, "loss_sum": 0.0,
          "loss_n": 0, "columns": []}
    if state_path.exists():
        ck = torch.load(state_path, weights_only=True)
        net.load_state_dict(ck["net"]), ema_net.load_state_dict(ck["ema"]), opt.load_state_dict(ck["opt"])
        st = ck["state"]
        if after_step is not None and "extra" in ck:
            after_step.load_state_dict(ck["extra"])
        log.info("%s: resumed at step %d", work.name, st["step"])
    t0 = time.time() - st["elapsed"]

    def evaluation(step: int) -> None:
        ev = evaluate(ema_net)
        st["columns"] = list(ev)
        loss = st["loss_sum"] / st["loss_n"] if st["loss_n"] else float("nan")
        st["loss_sum"], st["loss_n"] = 0.0, 0
        st["curve"].append([step, loss, round(time.time() - t0, 1), *ev.values()])
        if ev[select] < st["best"]:
            st["best"], st["best_step"] = ev[select], step
            save_file({k: v.contiguous() for k, v in ema_net.state_dict().items()}, str(work / "best_ema.safetensors"))
        log.info("%s: step %d loss %.5f %s (best %.4f at %d) %.0fs", work.name, step, loss,
                 " ".join(f"{k} {v:.4f}" for k, v in ev.items()), st["best"], st["best_step"], time.time() - t0)

    def checkpoint() -> None:
        st["elapsed"] = time.time() - t0
        extra = {"extra": after_step.state_dict()} if hasattr(after_step, "state_dict") else {}
        torch.save({"net": net.state_dict(), "ema": ema_net.state_dict(), "opt": opt.state_dict(), "state": st,
                    **extra}, work / "state.tmp")
        (work / "state.tmp").replace(state_path)

    if not st["curve"]:
        evaluation(0)
    column = None

    def flat() -> bool:
        nonlocal column
        column = column or st["columns"].index(select) + 3
        return patience > 0 and plateaued([row[column] for row in st["curve"]], patience, min_improvement)

    while st["step"] < steps and time.time() - t0 < max_seconds and not flat():
        step = st["step"]
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        value = loss_fn(net, g, step)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        ema_update(ema_net, net, min(ema, (1 + step) / (10 + step)))  # EMA warm-up: the init is forgotten early
        if after_step is not None:
            after_step(net, step)
        st["step"] = step = step + 1
        st["loss_sum"] += value.item()
        st["loss_n"] += 1
        if step % eval_every == 0:
            evaluation(step)
        if step % ckpt_every == 0:
            checkpoint()
    if st["curve"][-1][0] != st["step"]:
        evaluation(st["step"])
    st["elapsed"] = time.time() - t0
    stopped = "plateau" if flat() else "steps" if st["step"] >= steps else "time"
    rule = (f"stop when the best {select} of the last {patience} evaluations (every {eval_every} steps) is not "
            f"{100 * min_improvement:g} % below the best before them" if patience > 0 else f"{steps} steps")
    out = {"curve": st["curve"], "columns": st["columns"], "best_step": st["best_step"], "steps_run": st["step"],
           "seconds": round(st["elapsed"], 1), "threads": torch.get_num_threads(), "stopped": stopped,
           "stopping_rule": rule}
    log.info("%s: stopped (%s) at step %d, best %s %.4f at step %d", work.name, stopped, st["step"], select,
             st["best"], st["best_step"])
    torch.save(out, done_path)
    return {**out, "state": load_file(str(work / "best_ema.safetensors"))}


def plateaued(values: list[float], k: int, rel: float) -> bool:
    """The stopping rule: True once the best of the last ``k`` values is not lower than (1 - ``rel``) x the best of
    the values before them (lower is better; needs more than k values)."""
    if len(values) <= k:
        return False
    return min(values[-k:]) > (1 - rel) * min(values[:-k])


def write_curve(path: Path, result: dict) -> None:
    """training_curve.csv of a ``fit`` result: step, mean train loss since the last row, elapsed s, evaluations."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "train_loss", "elapsed_s", *result["columns"]])
        w.writerows(result["curve"])
