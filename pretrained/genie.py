"""GENIE's derivative head (Dockhorn et al. 2022) on the digits UNet, registered as the "genie" head of digits.

The head k_psi(x_t, t) predicts d eps / d gamma along the PF-ODE (gamma = sigma / alpha) from what one UNet pass
gives: x_t, the UNet's eps, its last feature map h and its time embedding. As in the paper's head, its three output
maps k1, k2, k3 are mixed by gamma, k = -k1 / gamma + k2 gamma / (1 + gamma^2) + k3 / (gamma (1 + gamma^2)), which
carries the derivative's scale over gamma in (0.01, 150). Training: recipes/train_genie.py.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from samplers.model import DiffusionModel
from samplers.schedules import VPLinear

from .digits import DATA_SHAPE, UNET_FOLDER
from .nets import ResBlock, UNet
from .registry import register_head
from .weights import WEIGHTS_ROOT, load_weights, read_manifest, verify_weights

NAME = "digits-genie"
FOLDER = WEIGHTS_ROOT / NAME


class GenieHead(nn.Module):
    """conv(x, eps, h) -> one ResBlock with the UNet's embedding -> GroupNorm-SiLU-conv to 3 maps mixed by gamma."""

    def __init__(self, in_channels: int = 1, feature_channels: int = 32, width: int = 32, emb_dim: int = 128,
                 groups: int = 8):
        super().__init__()
        self.config = {"in_channels": in_channels, "feature_channels": feature_channels, "width": width,
                       "emb_dim": emb_dim, "groups": groups}
        self.conv_in = nn.Conv2d(2 * in_channels + feature_channels, width, 3, padding=1)
        self.block = ResBlock(width, width, emb_dim, groups)
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, 3 * in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts at k = 0 (the paper's head: init_scale 0)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def for_unet(cls, net: UNet, **kw) -> "GenieHead":
        c = net.config
        return cls(c["in_channels"], c["channels"][0], emb_dim=c["emb_dim"], groups=c["groups"], **kw)

    def forward(self, x, eps, h, emb, gamma):
        """d eps / d gamma at x_t; gamma of shape (B,)."""
        out = self.conv_out(F.silu(self.norm_out(self.block(self.conv_in(torch.cat([x, eps, h], 1)), emb))))
        k1, k2, k3 = out.chunk(3, dim=1)
        g = gamma.to(out.dtype).reshape(-1, 1, 1, 1)
        g2 = 1.0 + g**2
        return -k1 / g + k2 * (g / g2) + k3 / (g * g2)


def head_inputs(net: UNet, x: torch.Tensor, t: torch.Tensor):
    """(eps, h, emb, gamma): one UNet pass at (x, t) and gamma = sigma / alpha, what the head reads."""
    eps, h, emb = net.forward_with_features(x, t)
    return eps, h, emb, VPLinear().rho(t.to(torch.float64)).to(x.dtype)


def as_model(net: UNet, head: GenieHead, name: str = "digits/genie") -> DiffusionModel:
    """The boundary of the UNet whose ``derivative_fn`` gives (eps, d eps / d gamma) from one pass plus the head."""
    net.eval(), head.eval()
    device = next(net.parameters()).device

    def fn(x, t):
        with torch.no_grad():
            return net(x, t)

    def derivative_fn(x, t):
        with torch.no_grad():
            eps, h, emb, gamma = head_inputs(net, x, t)
            return eps, head(x, eps, h, emb, gamma)

    return DiffusionModel(fn, VPLinear(), "eps", data_shape=DATA_SHAPE, net_dtype=torch.float32, name=name,
                          device=device, derivative_fn=derivative_fn)


def load_head(folder=FOLDER, *, expected_sha256: str | None = None,
              trust_manifest: bool = False) -> tuple[GenieHead, dict]:
    """The head (eval mode, CPU) and its manifest; weights checked as ``weights.load_weights`` does."""
    state, manifest = load_weights(folder, NAME, expected_sha256=expected_sha256, trust_manifest=trust_manifest)
    head = GenieHead(**manifest["architecture"]["config"])
    head.load_state_dict(state)
    return head.eval(), manifest


def check() -> None:
    """ValueError unless the head's file matches its pin and it was distilled from the shipped digits UNet."""
    manifest = verify_weights(FOLDER, NAME)
    teacher = read_manifest(UNET_FOLDER)["weights_sha256"]
    if manifest.get("teacher", {}).get("weights_sha256") != teacher:
        raise ValueError(f"{FOLDER}: the head was distilled from a teacher with sha256 "
                         f"{manifest.get('teacher', {}).get('weights_sha256')!r}, the digits UNet is {teacher}")


def _load(ck) -> DiffusionModel:
    """The head over the checkpoint's own UNet (already loaded and checked), on its device."""
    check()
    head, _ = load_head()
    return as_model(ck.extras["net"], head.to(ck.device))


register_head("digits", "genie", _load, check)
