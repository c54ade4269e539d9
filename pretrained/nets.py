"""The networks of the digits checkpoint: a small eps-prediction UNet (Ho et al. 2020) and a CNN classifier for FID."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

TIME_SCALE = 1000.0  # the embedding sees 1000 t, as DDPM's integer timesteps


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of TIME_SCALE * t, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = TIME_SCALE * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding added in between, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """A two-resolution UNet (8x8 with channels[0], 4x4 with channels[1]) predicting eps(x_t, t[, y]).

    With ``num_classes`` > 0 a class embedding is added to the time embedding; label ``num_classes`` is the null
    (unconditional) class of classifier-free guidance, and ``y=None`` means the null class for every sample.
    """

    def __init__(self, in_channels: int = 1, channels: tuple = (32, 64), emb_dim: int = 128, groups: int = 8,
                 num_classes: int = 0):
        super().__init__()
        c0, c1 = channels
        self.config = {"in_channels": in_channels, "channels": list(channels), "emb_dim": emb_dim, "groups": groups}
        if num_classes:  # only where used: the manifests of unconditional checkpoints stay as they were
            self.config["num_classes"] = num_classes
        self.emb_dim, self.num_classes = emb_dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, emb_dim, groups)                       # 8x8
        self.downsample = nn.Conv2d(c0, c1, 3, stride=2, padding=1)          # 8x8 -> 4x4
        self.down1 = ResBlock(c1, c1, emb_dim, groups)                       # 4x4
        self.mid = nn.ModuleList([ResBlock(c1, c1, emb_dim, groups) for _ in range(2)])
        self.up1 = ResBlock(2 * c1, c1, emb_dim, groups)                     # 4x4, skip from down1
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c1, c0, 3, padding=1))
        self.up0 = ResBlock(2 * c0, c0, emb_dim, groups)                     # 8x8, skip from down0
        self.norm_out = nn.GroupNorm(groups, c0)
        self.conv_out = nn.Conv2d(c0, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_features(x, t, y)[0]

    def forward_with_features(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        """(output, h, emb): the output of ``forward`` (same operations, same values), the last feature map h
        (channels[0] x 8 x 8, before the output norm) and the time(+class) embedding (B, emb_dim)."""
        emb = self.time_mlp(timestep_embedding(t, self.emb_dim))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes = 0): call it without labels")
        h0 = self.down0(self.conv_in(x), emb)
        h1 = self.down1(self.downsample(h0), emb)
        h = h1
        for block in self.mid:
            h = block(h, emb)
        h = self.up1(torch.cat([h, h1], 1), emb)
        h = self.up0(torch.cat([self.upsample(h), h0], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h))), h, emb


class DigitsClassifier(nn.Module):
    """A 3-conv CNN for 1x8x8 digits; ``features`` is the 64-d penultimate layer before its ReLU."""

    FEATURE_DIM = 64

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 8x8 -> 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 4x4 -> 2x2
        )
        self.fc = nn.Linear(64 * 2 * 2, self.FEATURE_DIM)
        self.head = nn.Linear(self.FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation penultimate features (post-ReLU units can be dead, making the covariance singular)."""
        return self.fc(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))
