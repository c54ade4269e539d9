"""The "digits" checkpoint: a small eps-prediction UNet trained on scikit-learn's 8x8 digits (VP linear schedule).

"digits-lw" is the same UNet trained with likelihood weighting (recipes/train_lw.py), behind the same metrics;
"digits-cond" the UNet with a class embedding for classifier-free guidance (recipes/train_cond.py), whose FID
reference is class-balanced and whose classifier scores guided samples against their labels. "digits-edm" and
"digits-flow" are the same UNet trained on the same split in the other families (recipes/train_families.py): EDM's
preconditioned denoiser and a flow-matching velocity network."""
from __future__ import annotations

import torch

import samplers
from samplers.model import ClassLabels, DiffusionModel
from samplers.schedules import EDM, FlowMatching, NoiseSchedule, VPLinear

from .data import digits_split, split_sha256
from .nets import DigitsClassifier, UNet
from .reference import ReferenceSolver
from .registry import Checkpoint, register_checkpoint
from .weights import WEIGHTS_ROOT, load_weights, verify_weights

DATA_SHAPE = (1, 8, 8)
DATA_LEVELS = 17  # load_digits' pixel values 0..16, scaled to [-1, 1]
FID_EXTRACTOR = "digits-classifier"
ORACLE_STEPS = 500  # Heun steps of the reference solution (1000 NFE)
DEFAULT_N_SAMPLES = 500  # samples per cell of `bench run` (FID against the 300 reference images)
UNET_FOLDER = WEIGHTS_ROOT / "digits"
LW_FOLDER = WEIGHTS_ROOT / "digits-lw"  # the same UNet trained with likelihood weighting (recipes/train_lw.py)
FEATURES_FOLDER = WEIGHTS_ROOT / "digits_features"
COND_FOLDER = WEIGHTS_ROOT / "digits-cond"  # the UNet with 10 classes + the null class (recipes/train_cond.py)
BALANCED_PER_CLASS = 21  # the "reference" split's rarest class has 21 images: 210 images, 21 of each digit


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


# The families' digits checkpoints: name -> (weights folder, schedule factory, what the UNet predicts).
EDM_FOLDER = WEIGHTS_ROOT / "digits-edm"
FLOW_FOLDER = WEIGHTS_ROOT / "digits-flow"
FAMILIES = {"digits": (UNET_FOLDER, VPLinear, "eps"), "digits-edm": (EDM_FOLDER, EDM, "edm"),
            "digits-flow": (FLOW_FOLDER, FlowMatching, "velocity")}


def as_model(net: UNet, name: str = "digits", schedule: NoiseSchedule | None = None,
             prediction: str = "eps") -> DiffusionModel:
    """The model boundary around ``net`` (eval mode, called without autograd) on the net's device.

    A net with classes gives a conditional model (``ClassLabels``): ``fn(x, t)`` is its null-label output.
    ``schedule`` (default VPLinear()) and ``prediction`` say the family the net was trained in.
    """
    net.eval()

    def fn(x, t, y=None):
        with torch.no_grad():  # not inference_mode: torch.compile (--compile) cannot trace through it
            return net(x, t) if y is None else net(x, t, y)

    return DiffusionModel(fn, VPLinear() if schedule is None else schedule, prediction, data_shape=DATA_SHAPE,
                          net_dtype=torch.float32, name=name, device=_device_of(net),
                          condition=ClassLabels(net.num_classes) if net.num_classes else None)


def family_model(name: str):
    """net -> the model boundary of the digits checkpoint ``name`` ("digits", "digits-edm", "digits-flow")."""
    _, schedule, prediction = FAMILIES[name]
    return lambda net, label=name: as_model(net, label, schedule(), prediction)


def load_unet(folder=UNET_FOLDER, *, name: str = "digits", expected_sha256: str | None = None,
              trust_manifest: bool = False) -> tuple[UNet, dict]:
    """The digits UNet ``name`` (eval mode, CPU) and its manifest; weights checked as ``weights.load_weights`` does."""
    state, manifest = load_weights(folder, name, expected_sha256=expected_sha256, trust_manifest=trust_manifest)
    net = UNet(**manifest["architecture"]["config"])
    net.load_state_dict(state)
    return net.eval(), manifest


def load_feature_net(folder=FEATURES_FOLDER, *, expected_sha256: str | None = None,
                     trust_manifest: bool = False) -> tuple[DigitsClassifier, dict]:
    """The FID feature network (eval mode, CPU) and its manifest; weights checked as ``weights.load_weights`` does."""
    state, manifest = load_weights(folder, "digits_features", expected_sha256=expected_sha256,
                                   trust_manifest=trust_manifest)
    net = DigitsClassifier()
    net.load_state_dict(state)
    return net.eval(), manifest


def real_data(n: int, seed: int = 0) -> torch.Tensor:
    """n images of the "reference" split (300 in all; no replacement), in an order fixed by ``seed``; on the CPU."""
    x, _ = digits_split("reference")
    if n > len(x):
        raise ValueError(f"digits real_data: the reference split has {len(x)} images, asked for {n}")
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def balanced_real_data(n: int, seed: int = 0) -> torch.Tensor:
    """n of the 210 class-balanced "reference" images (the first BALANCED_PER_CLASS of each digit in split order),
    in an order fixed by ``seed``; on the CPU. The FID reference of class-balanced (conditional) samples."""
    x, y = digits_split("reference")
    idx = torch.cat([torch.nonzero(y == c).flatten()[:BALANCED_PER_CLASS] for c in range(10)])
    if n > len(idx):
        raise ValueError(f"digits balanced real_data: {len(idx)} class-balanced reference images, asked for {n}")
    return x[idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]]


def ode_solution(net: UNet, x_T: torch.Tensor, t_end: float, family: str = "digits") -> torch.Tensor:
    """The PF-ODE solved from x_T by Heun (Karras et al. 2022, Alg. 1) with ORACLE_STEPS steps on the Karras grid.

    Fixed steps keep each sample independent of its batch (an adaptive solver's steps are not);
    500 steps are within 9e-4 max abs (7e-5 rms) of dopri8 at tolerance 1e-8 on this model (DDIM 50 NFE: 0.14).
    Runs on the net's device; x_T must be there.
    """
    model = family_model(family)(net, f"{family}-oracle")  # its own NFE counter: the benchmarked model's stays untouched
    return samplers.get("heun", grid="karras", t_end=t_end).sample(model, x_T, 2 * ORACLE_STEPS)


def check_weights(folder=UNET_FOLDER, name: str = "digits") -> None:
    """ValueError unless the UNet's and the FID feature network's files match their pins (nothing parsed)."""
    verify_weights(folder, name)
    verify_weights(FEATURES_FOLDER, "digits_features")


@register_checkpoint("digits", data_shape=DATA_SHAPE, schedule="vp_linear", prediction="eps",
                     description="small UNet trained on scikit-learn 8x8 digits (FID with a digits classifier)",
                     default_n_samples=DEFAULT_N_SAMPLES, check=check_weights)
def digits(device: torch.device) -> Checkpoint:
    return _unet_checkpoint(device, "digits", UNET_FOLDER, "UNet (0.5M params) on 8x8 digits")


@register_checkpoint("digits-lw", data_shape=DATA_SHAPE, schedule="vp_linear", prediction="eps",
                     description="the digits UNet with likelihood weighting g^2 and importance-sampled t (ScoreFlow)",
                     default_n_samples=DEFAULT_N_SAMPLES, check=lambda: check_weights(LW_FOLDER, "digits-lw"))
def digits_lw(device: torch.device) -> Checkpoint:
    return _unet_checkpoint(device, "digits-lw", LW_FOLDER,
                            "UNet (0.5M params) on 8x8 digits, likelihood-weighted training")


@register_checkpoint("digits-cond", data_shape=DATA_SHAPE, schedule="vp_linear", prediction="eps",
                     description="the digits UNet with 10 classes + a null class, for classifier-free guidance "
                                 "(--guidance)",
                     default_n_samples=DEFAULT_N_SAMPLES, check=lambda: check_weights(COND_FOLDER, "digits-cond"))
def digits_cond(device: torch.device) -> Checkpoint:
    ck = _unet_checkpoint(device, "digits-cond", COND_FOLDER,
                          "class-conditional UNet (0.5M params) on 8x8 digits, label dropout for guidance")
    n_ref = 10 * BALANCED_PER_CLASS
    ck.real_data = balanced_real_data
    ck.extras["fid_reference"] = (f"digits-reference-balanced{BALANCED_PER_CLASS}-{split_sha256()[:16]}", n_ref)
    ck.extras["classifier"] = load_feature_net()[0].to(device)  # logits of the digit, for guided accuracy
    ck.extras["data_range"] = (-1.0, 1.0)
    ck.extras["range_tolerance"] = 2.0 / (DATA_LEVELS - 1)  # out of range: beyond [-1, 1] by more than one level
    return ck


def holdout_data(n: int) -> torch.Tensor:
    """The first n images of the "holdout" split (300; seen by neither the UNet nor the FID classifier), on the CPU."""
    x, _ = digits_split("holdout")
    if not 1 <= n <= len(x):
        raise ValueError(f"digits holdout data: the holdout split has {len(x)} images, asked for {n}")
    return x[:n]


def grad_model(model: DiffusionModel, net: UNet) -> DiffusionModel:
    """``model``'s boundary around ``net`` with autograd: differentiable in x, for the ODE likelihood."""
    return model.replace(fn=lambda x, t: net(x, t))


def _unet_checkpoint(device: torch.device, name: str, folder, description: str, family: str = "digits") -> Checkpoint:
    """A digits UNet checkpoint: the same reference solution, real data and FID extras for every weights folder."""
    net, manifest = load_unet(folder, name=name)
    net = net.to(device)
    model = family_model(family)(net, name)
    solver = ReferenceSolver.around(model)
    return Checkpoint(name=name, model=model, description=description,
                      likelihood_data=holdout_data, data_levels=DATA_LEVELS, grad_model=grad_model(model, net),
                      reference_solution=solver, reference_solver=solver, real_data=real_data, reference_exact=False,
                      fingerprint=manifest["weights_sha256"],
                      extras={"fid": FID_EXTRACTOR, "fid_reference": (f"digits-reference-{split_sha256()[:16]}", 300),
                              "net": net, "manifest": manifest}, device=device)


def _register_family(name: str, description: str) -> None:
    folder, schedule, prediction = FAMILIES[name]

    @register_checkpoint(name, data_shape=DATA_SHAPE, schedule=schedule.name, prediction=prediction,
                         description=description, default_n_samples=DEFAULT_N_SAMPLES,
                         check=lambda: check_weights(folder, name))
    def _load(device: torch.device) -> Checkpoint:
        return _unet_checkpoint(device, name, folder, description, family=name)


_register_family("digits-edm", "the digits UNet as EDM's preconditioned denoiser (sigma 0.002..80, log-normal "
                               "sigma, EDM loss weighting)")
_register_family("digits-flow", "the digits UNet as a flow-matching velocity network (conditional OT path)")
