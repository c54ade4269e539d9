"""Factories for ``--checkpoint py:py_factories:<name>`` in the tests (tests/ is on sys.path under pytest)."""
import torch

import samplers

CALLS = []  # every factory call, so tests can see that the user's code ran (and when)


def _net(channels: int):
    torch.manual_seed(0)
    return torch.nn.Conv2d(channels + 1, channels, 3, padding=1).double()


def flow_rgb(device):
    """A tiny convolutional velocity network on 3x8x8 (flow schedule, shift 2) and 8 real images in [-1, 1]."""
    CALLS.append("flow_rgb")
    net = _net(3).to(device)

    def fn(x, t):
        with torch.no_grad():
            return 0.1 * net(torch.cat([x, t[:, None, None, None].expand(-1, 1, *x.shape[2:])], 1))

    model = samplers.DiffusionModel(fn, samplers.FlowMatching(shift=2.0), "velocity", data_shape=(3, 8, 8),
                                    net_dtype=torch.float64, device=device)
    data = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model, data


def edm_gray(device):
    """EDM's preconditioned F of a tiny network on 1x8x8, without data."""
    CALLS.append("edm_gray")
    net = _net(1).to(device)

    def fn(x, t):
        with torch.no_grad():
            return 0.1 * net(torch.cat([x, t[:, None, None, None].expand(-1, 1, *x.shape[2:])], 1))

    return samplers.DiffusionModel(fn, samplers.EDM(), "edm", data_shape=(1, 8, 8), net_dtype=torch.float64,
                                   device=device)


def not_a_model(device):
    return "a string"


def bad_data(device):
    model = edm_gray(device)
    return model, torch.zeros(4, 3, 8, 8)
