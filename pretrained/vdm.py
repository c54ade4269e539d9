"""The "digits-vdm" checkpoint: a VDM (Kingma et al. 2021) on the 8x8 digits, with its learned noise schedule.

gamma(t) = -logSNR(t) = -2 lambda_t is VDM's monotone network (``NoiseSchedule_NNet`` of the official model_vdm.py)
rescaled, as in the paper, to learned endpoints gamma_0 < gamma_1; alpha_t^2 = sigmoid(-gamma), sigma_t^2 =
sigmoid(gamma). The eps-prediction UNet is ``nets.UNet`` fed, as VDM's ScoreUNet is, the normalised
(gamma - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN) instead of t, so it is a function of the noise level alone.
Data stay discrete: the likelihood bound ends in a per-pixel softmax over the 17 levels.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from samplers.model import DiffusionModel
from samplers.schedules import VPSchedule

from .data import MAX_LEVEL, split_sha256
from .digits import (DATA_LEVELS, DATA_SHAPE, DEFAULT_N_SAMPLES, FEATURES_FOLDER, FID_EXTRACTOR, holdout_data,
                     real_data)
from .nets import UNet
from .reference import ReferenceSolver
from .registry import Checkpoint, register_checkpoint
from .weights import WEIGHTS_ROOT, load_weights, verify_weights

NAME = "digits-vdm"
VDM_FOLDER = WEIGHTS_ROOT / NAME
# Initial endpoints, and the fixed map of gamma to the UNet's [0, 1]: VDM's CIFAR-10 config (-13.3, 5.0) with gamma_min
# raised by 2 log(255 / 16), so sigma_0 is the same fraction of the level spacing (2 / 16 here, 2 / 255 there).
GAMMA_MIN, GAMMA_MAX = -13.3 + 2.0 * math.log(255.0 / MAX_LEVEL), 5.0
N_FEATURES = 1024  # width of the gated part of the monotone network, as in VDM
BISECT_STEPS = 64  # halvings of [0, 1] (or of the analytic bracket): below float64 resolution
SCHEDULE_KEYS = ("w1", "w2", "b2", "w3", "gamma_0", "gamma_1")
_F64 = torch.float64


def gamma_tilde(t: torch.Tensor, p: dict) -> torch.Tensor:
    """VDM's monotone net: |w1| t + mean_k |w3_k| (2 sigmoid(|w2_k| (2t - 1) + b2_k) - 1), increasing in t."""
    gate = 2.0 * torch.sigmoid(p["w2"].abs() * (2.0 * t[..., None] - 1.0) + p["b2"]) - 1.0
    return p["w1"].abs() * t + (gate * p["w3"].abs()).mean(-1)


def gamma_shape(t: torch.Tensor, p: dict) -> torch.Tensor:
    """(gamma_tilde(t) - gamma_tilde(0)) / (gamma_tilde(1) - gamma_tilde(0)): 0 at t = 0, 1 at t = 1."""
    ends = gamma_tilde(torch.arange(2, dtype=t.dtype, device=t.device), p)  # made on the device: no copy
    return (gamma_tilde(t, p) - ends[0]) / (ends[1] - ends[0])


def net_time(gamma: torch.Tensor) -> torch.Tensor:
    """The UNet's time input: gamma mapped by the fixed (GAMMA_MIN, GAMMA_MAX) -> (0, 1), as VDM's ScoreUNet."""
    return (gamma - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN)


class GammaNet(nn.Module):
    """The trainable schedule: gamma(t) = gamma_0 + (gamma_1 - gamma_0) gamma_shape(t), VDM's initialisation."""

    def __init__(self, n_features: int = N_FEATURES):
        super().__init__()
        self.n_features = n_features
        self.w1 = nn.Parameter(torch.tensor(GAMMA_MAX - GAMMA_MIN))
        self.w2 = nn.Parameter(0.01 * torch.randn(n_features))  # flax's normal() initialiser: std 1e-2
        self.b2 = nn.Parameter(torch.zeros(n_features))
        self.w3 = nn.Parameter(0.01 * torch.randn(n_features))
        self.gamma_0 = nn.Parameter(torch.tensor(GAMMA_MIN))
        self.gamma_1 = nn.Parameter(torch.tensor(GAMMA_MAX))

    def params(self) -> dict:
        return {k: getattr(self, k) for k in SCHEDULE_KEYS}

    def shape(self, t: torch.Tensor) -> torch.Tensor:
        """gamma_shape(t): what the variance objective trains (the endpoints are trained on the VLB)."""
        return gamma_shape(t, self.params())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * self.shape(t)


class VDM(nn.Module):
    """VDM's two learned parts: the eps-prediction UNet (conditioned on gamma) and the schedule gamma(t)."""

    def __init__(self, unet: dict | None = None, n_features: int = N_FEATURES):
        super().__init__()
        self.net = UNet(**(unet or {}))
        self.gamma = GammaNet(n_features)
        self.config = {"unet": self.net.config, "n_features": n_features}

    def eps(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return self.net(z, net_time(gamma))


class LearnedSchedule(VPSchedule):
    """A VDM learned schedule as a VP schedule: log alpha = -softplus(gamma) / 2, lambda = -gamma / 2 (float64).

    Args:
        params: the GammaNet tensors by name (SCHEDULE_KEYS); kept as float64 CPU copies, copied once per device.
    """

    name = "vdm_learned"

    def __init__(self, params: dict):
        missing = sorted(set(SCHEDULE_KEYS) - set(params))
        if missing:
            raise ValueError(f"LearnedSchedule needs the tensors {list(SCHEDULE_KEYS)}; missing {missing}")
        cpu = {k: torch.as_tensor(params[k]).detach().to("cpu", _F64).clone() for k in SCHEDULE_KEYS}
        if not float(cpu["gamma_0"]) < float(cpu["gamma_1"]):
            raise ValueError(f"LearnedSchedule: need gamma_0 < gamma_1, got {float(cpu['gamma_0'])}, "
                             f"{float(cpu['gamma_1'])}")
        self.T = 1.0
        self._on_device = {torch.device("cpu"): cpu}

    @classmethod
    def from_module(cls, gamma_net: GammaNet) -> "LearnedSchedule":
        return cls(gamma_net.params())

    def _p(self, device: torch.device) -> dict:
        """The parameters on ``device``, copied there once."""
        if device not in self._on_device:
            self._on_device[device] = {k: v.to(device) for k, v in self._on_device[torch.device("cpu")].items()}
        return self._on_device[device]

    def gamma(self, t) -> torch.Tensor:
        """gamma(t) = -logSNR(t), float64 on t's device."""
        t = torch.as_tensor(t, dtype=_F64)
        p = self._p(t.device)
        return p["gamma_0"] + (p["gamma_1"] - p["gamma_0"]) * gamma_shape(t, p)

    def log_alpha(self, t) -> torch.Tensor:
        # alpha^2 = sigmoid(-gamma): log alpha = -log(1 + e^gamma) / 2 (logaddexp: exact in float64 at any gamma).
        g = self.gamma(t)
        return -0.5 * torch.logaddexp(g, torch.zeros_like(g))

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(torch.sigmoid(self.gamma(t)))

    def lambda_(self, t) -> torch.Tensor:
        return -0.5 * self.gamma(t)

    def net_time(self, t) -> torch.Tensor:
        """The UNet's time input at t (float64 on t's device)."""
        return net_time(self.gamma(t))

    def inverse_lambda(self, lam) -> torch.Tensor:
        """t with gamma(t) = -2 lam, by BISECT_STEPS bisections on gamma_tilde (no host sync; beyond [0, 1] the
        network's own extension, still monotone)."""
        lam = torch.as_tensor(lam, dtype=_F64)
        p = self._p(lam.device)
        ends = gamma_tilde(torch.arange(2, dtype=_F64, device=lam.device), p)
        y = ends[0] + (-2.0 * lam - p["gamma_0"]) / (p["gamma_1"] - p["gamma_0"]) * (ends[1] - ends[0])
        # |gated part| <= mean |w3| = m, so gamma_tilde(t) = y puts t in [(y - m) / |w1|, (y + m) / |w1|].
        w1, m = p["w1"].abs(), p["w3"].abs().mean()
        lo, hi = (y - m) / w1, (y + m) / w1
        lo = torch.where(y >= ends[0], lo.clamp(min=0.0), lo)
        hi = torch.where(y <= ends[1], hi.clamp(max=1.0), hi)
        for _ in range(BISECT_STEPS):
            mid = 0.5 * (lo + hi)
            below = gamma_tilde(mid, p) < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def config(self) -> dict:
        p = self._on_device[torch.device("cpu")]
        return {"name": self.name, "gamma_0": float(p["gamma_0"]), "gamma_1": float(p["gamma_1"]),
                "n_features": int(p["w2"].numel())}


# -- the variational bound (VDM eq. 11 / model_vdm.py), per example, in nats -------------------------------------

def levels(x: torch.Tensor) -> torch.Tensor:
    """Pixel levels 0 .. DATA_LEVELS - 1 of images in [-1, 1]."""
    return torch.round((x + 1.0) * (0.5 * (DATA_LEVELS - 1))).long()


def recon_loss(x: torch.Tensor, gamma_0: torch.Tensor, eps_0: torch.Tensor) -> torch.Tensor:
    """-log p(x | z_0): z_0 / alpha_0 = x + e^(gamma_0 / 2) eps_0, a softmax over the DATA_LEVELS values per pixel."""
    scale = torch.exp(0.5 * gamma_0)
    values = torch.linspace(-1.0, 1.0, DATA_LEVELS, dtype=x.dtype, device=x.device)
    logits = -0.5 * ((x + scale * eps_0)[..., None] - values).square() / scale.square()
    logp = torch.log_softmax(logits, -1).gather(-1, levels(x)[..., None])[..., 0]
    return -logp.flatten(1).sum(1)


def prior_loss(x: torch.Tensor, gamma_1: torch.Tensor) -> torch.Tensor:
    """KL(q(z_1 | x) || N(0, I)) = sum 0.5 (alpha_1^2 x^2 + sigma_1^2 - log sigma_1^2 - 1)."""
    var_1 = torch.sigmoid(gamma_1)
    kl = 0.5 * (torch.sigmoid(-gamma_1) * x.square() + var_1 + F.softplus(-gamma_1) - 1.0)
    return kl.flatten(1).sum(1)


def diffusion_loss(vdm: VDM, x: torch.Tensor, gamma_t: torch.Tensor, dgamma_t: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """The continuous-time diffusion term 0.5 gamma'(t) ||eps - eps_hat(z_t, gamma_t)||^2 per example."""
    g = gamma_t[:, None, None, None]
    z_t = torch.sqrt(torch.sigmoid(-g)) * x + torch.sqrt(torch.sigmoid(g)) * eps
    return 0.5 * dgamma_t * (eps - vdm.eps(z_t, gamma_t)).square().flatten(1).sum(1)


def bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    return nats / (math.prod(DATA_SHAPE) * math.log(2.0))


@torch.no_grad()
def vlb_bits_per_dim(vdm: VDM, x: torch.Tensor, n_times: int = 16, seed: int = 0, batch: int = 1000) -> dict:
    """The bound on -log2 P(x) per dimension averaged over images x, and its three terms (dict of floats).

    Each image gets n_times stratified times mod(u + k / n_times, 1) and fresh noise, from ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    xs = x.repeat_interleave(n_times, 0)
    u = torch.rand(len(x), 1, generator=g).expand(-1, n_times)
    t = torch.remainder(u + torch.arange(n_times) / n_times, 1.0).reshape(-1)
    eps, eps_0 = torch.randn(xs.shape, generator=g), torch.randn(x.shape, generator=g)
    diff = []
    for i in range(0, len(xs), batch):
        ti = t[i:i + batch].requires_grad_(True)
        with torch.enable_grad():
            gamma_t = vdm.gamma(ti)
            (dgamma_t,) = torch.autograd.grad(gamma_t.sum(), ti)
        diff.append(diffusion_loss(vdm, xs[i:i + batch], gamma_t.detach(), dgamma_t, eps[i:i + batch]))
    terms = {"recon": recon_loss(x, vdm.gamma.gamma_0, eps_0).mean(), "prior": prior_loss(x, vdm.gamma.gamma_1).mean(),
             "diffusion": torch.cat(diff).mean()}
    out = {k: float(bits_per_dim(v)) for k, v in terms.items()}
    out["bpd"] = out["recon"] + out["prior"] + out["diffusion"]
    return out


# -- the checkpoint ----------------------------------------------------------------------------------------------

def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def as_model(net: UNet, schedule: LearnedSchedule, name: str = NAME) -> DiffusionModel:
    """The model boundary: continuous t -> the normalised gamma(t) the UNet takes (eval, no autograd)."""
    net.eval()

    def fn(x, t):
        with torch.no_grad():  # not inference_mode: torch.compile (--compile) cannot trace through it
            return net(x, schedule.net_time(t).to(x.dtype))

    return DiffusionModel(fn, schedule, "eps", data_shape=DATA_SHAPE, net_dtype=torch.float32, name=name,
                          device=_device_of(net))


def grad_model(net: UNet, schedule: LearnedSchedule, name: str = NAME) -> DiffusionModel:
    """The boundary with autograd: differentiable in x, for the ODE likelihood."""
    return as_model(net, schedule, name).replace(fn=lambda x, t: net(x, schedule.net_time(t).to(x.dtype)))


def load_vdm(folder=VDM_FOLDER, *, expected_sha256: str | None = None,
             trust_manifest: bool = False) -> tuple[VDM, dict]:
    """The VDM (UNet + schedule, eval mode, CPU) and its manifest; weights checked as ``weights.load_weights`` does."""
    state, manifest = load_weights(folder, NAME, expected_sha256=expected_sha256, trust_manifest=trust_manifest)
    vdm = VDM(**manifest["architecture"]["config"])
    vdm.load_state_dict(state)
    return vdm.eval(), manifest


def check_weights() -> None:
    """ValueError unless the VDM's and the FID feature network's files match their pins (nothing parsed)."""
    verify_weights(VDM_FOLDER, NAME)
    verify_weights(FEATURES_FOLDER, "digits_features")


@register_checkpoint(NAME, data_shape=DATA_SHAPE, schedule=LearnedSchedule.name, prediction="eps",
                     description="VDM on 8x8 digits: learned monotone schedule, trained on the VLB (FID with a digits "
                                 "classifier)",
                     default_n_samples=DEFAULT_N_SAMPLES, check=check_weights)
def digits_vdm(device: torch.device) -> Checkpoint:
    vdm, manifest = load_vdm()
    schedule = LearnedSchedule.from_module(vdm.gamma)
    net = vdm.net.to(device)
    model = as_model(net, schedule)
    solver = ReferenceSolver.around(model)
    return Checkpoint(name=NAME, model=model,
                      description="VDM UNet (0.5M params) + learned gamma(t) on 8x8 digits",
                      likelihood_data=holdout_data, data_levels=DATA_LEVELS, grad_model=grad_model(net, schedule),
                      reference_solution=solver, reference_solver=solver, real_data=real_data, reference_exact=False,
                      fingerprint=manifest["weights_sha256"],
                      extras={"fid": FID_EXTRACTOR, "fid_reference": (f"digits-reference-{split_sha256()[:16]}", 300),
                              "net": net, "schedule": schedule, "manifest": manifest}, device=device)
