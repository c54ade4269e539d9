"""A network in Python as a samplerbench checkpoint: ``--checkpoint py:examples.my_model:build``.

``build(device)`` returns a ``samplers.DiffusionModel`` (the network, its schedule and what it predicts) and,
optionally, real data (a tensor (N, *data_shape) in the model's data space): the harness then measures FID against
that data, solver error against a dopri5 solution of the model's ODE, and everything a registered checkpoint gets.
Here the network is the shipped digits flow-matching UNet and the data the digits reference split; put your own
network, weights and data in their place. Run from the repository root (or put this folder on PYTHONPATH).
"""
import torch

import samplers
from pretrained.data import digits_split
from pretrained.digits import FLOW_FOLDER, load_unet


def build(device: torch.device):
    net, _ = load_unet(FLOW_FOLDER, name="digits-flow")  # weights checked against their pinned sha256
    net = net.to(device).eval()

    def fn(x, t):  # called as fn(x, t): x (B, 1, 8, 8), t (B,) in the schedule's continuous time
        with torch.no_grad():
            return net(x, t)

    model = samplers.DiffusionModel(fn, samplers.FlowMatching(), prediction="velocity", data_shape=(1, 8, 8),
                                    device=device)
    real = digits_split("reference")[0]  # 300 images in [-1, 1]: the FID reference
    return model, real


def build_random(device: torch.device):
    """A network with no data: an untrained MLP predicting eps on 2-d points (VP linear schedule)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2)).to(device).double()

    def fn(x, t):
        with torch.no_grad():
            return net(torch.cat([x, t[:, None]], dim=1))

    return samplers.DiffusionModel(fn, samplers.VPLinear(), prediction="eps", data_shape=(2,),
                                   net_dtype=torch.float64, device=device)
