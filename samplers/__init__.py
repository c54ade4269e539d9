"""samplerbench's mathematics: schedules, the model boundary, time grids and the sampler registry.

Usage::

    import samplers
    model = samplers.DiffusionModel(my_net, samplers.VPLinear(), "eps", data_shape=(3, 32, 32))
    x0 = samplers.get("ddim").sample(model, x_T, nfe=10)   # x_T's dtype (float64 / float32) and device
"""
from .grids import T_END, time_grid
from .model import PREDICTIONS, DiffusionModel
from .noise import SampleNoise, initial_noise
from .registry import (MAX_NFE, Interval, Sampler, Unsupported, UnsupportedNFE, available, describe, get, register, register_preset,
                       validate_nfe)
from .schedules import EDM, FAMILIES, VP_T_END, FlowMatching, NoiseSchedule, VPCosine, VPDiscrete, VPLinear, VPSchedule, make_schedule
from .state import STATE_DTYPES

# Each module below registers its samplers on import; a new sampler family adds one line here.
import importlib as _importlib  # noqa: E402

for _module in (
    "ddim",
    "euler_heun",
    "dpm_solver",
    "deis",
    "diffusers_adapter",
    "unipc",
    "students",
    "genie",
    "ancestral",
    "sde",
    "edm",
    "lms",
    "ipndm",
    "rk",
):
    _importlib.import_module(f".{_module}", __name__)

__all__ = ["DiffusionModel", "PREDICTIONS", "NoiseSchedule", "VPSchedule", "VPLinear", "VPCosine", "VPDiscrete", "EDM",
           "FlowMatching", "FAMILIES", "VP_T_END",
           "make_schedule", "SampleNoise", "initial_noise", "Sampler", "Unsupported", "UnsupportedNFE", "available",
           "describe", "get", "register", "register_preset", "time_grid", "T_END", "MAX_NFE", "validate_nfe",
           "Interval", "STATE_DTYPES"]
