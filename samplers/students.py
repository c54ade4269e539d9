"""Distilled students as samplers: KD (Luhman & Luhman 2021), PD (Salimans & Ho 2022), CD (Song et al. 2023).

A student is a network of the checkpoint (a head, ``model.head(name)``: every evaluation counts on the checkpoint's
NFE) plus a sampling rule, defined here and used by the training losses too (``pretrained/distill.py``). The
students were trained to end at ``STUDENT_T_END``; they have no t_end option. A checkpoint without the student, or
an NFE a PD student was not trained for, raises ``Unsupported`` (an ``unsupported`` row), never a substitute.
"""
from __future__ import annotations

import torch

from .ddim import ddim
from .grids import time_grid
from .schedules import VP_T_END
from .registry import Unsupported, UnsupportedNFE, register
from .state import grid_tables, on_state

STUDENT_T_END = VP_T_END  # where every student's samples end (the teacher's ODE solution is compared there)
SIGMA_DATA = 0.5  # the consistency models' sigma_data (Song et al. 2023, as in EDM)
KD_HEAD, CD_HEAD, PD_PREFIX = "kd", "cd", "pd:"


def _coefs(schedule, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) in float64 as scalars or (B, 1, ...) columns, on x's device in x's dtype."""
    t = torch.as_tensor(t, dtype=torch.float64).to(x.device)
    a, s = schedule.alpha(t), schedule.sigma(t)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return [(c.reshape(shape) if c.dim() else c).to(x.dtype) for c in (a, s)]


def ddim_jump(x0: torch.Tensor, x: torch.Tensor, a_t, s_t, a_s, s_s) -> torch.Tensor:
    """DDIM (eta = 0) from t to s given the x0 prediction at (x, t): alpha_s x0 + (sigma_s / sigma_t)(x - alpha_t x0)."""
    return a_s * x0 + (s_s / s_t) * (x - a_t * x0)


def kd_map(student, x_T: torch.Tensor, t_end: float = STUDENT_T_END) -> torch.Tensor:
    """KD's one-step student: x at t_end = one DDIM jump from T with the student's x0 prediction (1 NFE)."""
    sch = student.schedule
    a_T, s_T = _coefs(sch, sch.T, x_T)
    a_e, s_e = _coefs(sch, t_end, x_T)
    return ddim_jump(student.x0(x_T, sch.T), x_T, a_T, s_T, a_e, s_e)


def consistency_fn(student, x: torch.Tensor, t, t_end: float = STUDENT_T_END, coefs=None) -> torch.Tensor:
    """f(x, t) = c_skip(t) (alpha_end / alpha_t) x + c_out(t) F(x, t): the consistency function (Song et al. 2023).

    In the scaled variable x / alpha with noise level sigma^ = sigma / alpha: c_skip = sigma_d^2 / ((sigma^_t -
    sigma^_end)^2 + sigma_d^2) (their eq. for EDM models, shifted so c_skip(t_end) = 1 exactly), c_out = 1 - c_skip,
    since F is already at data scale: the DDIM jump to t_end with the student's x0 prediction. So f(x, t_end) = x
    bit for bit, and at t = T, f = F, the one-step DDIM of the v-network it starts from. One NFE.
    ``coefs``: (alpha_t, sigma_t, alpha_end, sigma_end) already on x's device (a sampler's tables), else computed.
    """
    a_t, s_t, a_e, s_e = coefs if coefs is not None else (*_coefs(student.schedule, t, x),
                                                           *_coefs(student.schedule, t_end, x))
    d = s_t / a_t - s_e / a_e
    c_skip = SIGMA_DATA**2 / (d * d + SIGMA_DATA**2)
    f = ddim_jump(student.x0(x, t, alpha_sigma=(a_t, s_t)), x, a_t, s_t, a_e, s_e)
    return (c_skip * (a_e / a_t)) * x + (1 - c_skip) * f


class NoStudent(Unsupported):
    """The checkpoint has no distilled ``student`` (kd, pd, cd): an ``unsupported`` row. Which checkpoints do have
    one is the checkpoint registry's to say (``pretrained.students.unsupported_reason``), not the sampler's."""

    def __init__(self, student: str, checkpoint: str):
        super().__init__(f"{student} on checkpoint {checkpoint!r}: no distilled student")
        self.student, self.checkpoint = student, checkpoint


def pd_steps(model) -> list[int]:
    """The step counts of the checkpoint's PD students (heads "pd:N")."""
    return sorted(int(h[len(PD_PREFIX):]) for h in model.head_names() if h.startswith(PD_PREFIX))


def _requires_kd(model, nfe, **_):
    if not model.has_head(KD_HEAD):
        raise NoStudent("kd", model.name)


def _requires_pd(model, nfe, **_):
    steps = pd_steps(model)
    if not steps:
        raise NoStudent("pd", model.name)
    if nfe not in steps:
        raise UnsupportedNFE(f"pd was trained for NFE {steps}; asked {nfe}")


def _requires_cd(model, nfe, **_):
    if not model.has_head(CD_HEAD):
        raise NoStudent("cd", model.name)


def _one_step(nfe: int, **_):
    if nfe != 1:
        raise UnsupportedNFE(f"kd is a one-step student: NFE 1 only; asked {nfe}")


@register("kd", defaults={}, check_nfe=_one_step, requires=_requires_kd,
          description="knowledge distillation (Luhman & Luhman 2021): one-step student of the teacher's ODE")
def kd(model, x, nfe, *, noise):
    """Luhman & Luhman 2021: x_end = the student's map of x_T (one evaluation)."""
    return kd_map(model.head(KD_HEAD), x)


@register("pd", defaults={}, requires=_requires_pd,
          description="progressive distillation (Salimans & Ho 2022): the N-step student, DDIM, time-uniform grid")
def pd(model, x, nfe, *, noise):
    """Salimans & Ho 2022: DDIM with the student distilled for ``nfe`` steps, on the grid it was trained on."""
    return ddim(model.head(f"{PD_PREFIX}{nfe}"), x, nfe, noise=None, eta=0.0, grid="time_uniform",
                t_end=STUDENT_T_END)


@register("cd", defaults={"grid": "logSNR"}, requires=_requires_cd, stochastic=True,
          description="consistency distillation (Song et al. 2023): multistep consistency sampling")
def cd(model, x, nfe, *, noise, grid):
    """Song et al. 2023, Algorithm 1: f at T, then nfe - 1 times re-noise to the grid's next time and apply f.

    Default grid logSNR: 2 NFE re-noise at sigma/alpha = 1.26, near the paper's two-step sigma = 0.821 on CIFAR-10.
    """
    f = model.head(CD_HEAD)
    ts, a, s = on_state(x, *_cd_tables(f.schedule, nfe, grid))  # the grid and its alpha, sigma, once per call
    x = consistency_fn(f, x, ts[0], coefs=(a[0], s[0], a[-1], s[-1]))
    for i in range(1, nfe):
        # Re-noise in the scaled variable: x/alpha_t = x_end/alpha_end + sqrt(sigma^_t^2 - sigma^_end^2) z.
        x = a[i] * (x / a[-1] + ((s[i] / a[i]) ** 2 - (s[-1] / a[-1]) ** 2).sqrt() * noise.randn())
        x = consistency_fn(f, x, ts[i], coefs=(a[i], s[i], a[-1], s[-1]))
    return x


@grid_tables
def _cd_tables(sch, nfe, grid):
    ts = time_grid(sch, grid, nfe, STUDENT_T_END)
    return ts, sch.alpha(ts), sch.sigma(ts)
