"""Solver overhead = wall(sample at NFE n) / (n * wall(one model call)), ours vs the diffusers loop, batch 1000."""
import time

import pytest
import torch

import samplers

BATCH, DIM, HIDDEN, NFE = 1000, 64, 256, 10
# (our sampler, its options, the diffusers scheduler running the same algorithm, its options, NFE)
PAIRS = [
    ("ddim", {}, "diffusers:DDIMScheduler", {"clip_sample": False}, NFE),
    ("euler", {"space": "rho"}, "diffusers:EulerDiscreteScheduler", {}, NFE),
    ("heun", {"final_euler": True}, "diffusers:HeunDiscreteScheduler", {}, NFE + 1),
    ("dpm_solver++_2m", {}, "diffusers:DPMSolverMultistepScheduler", {}, NFE),
    ("unipc", {}, "diffusers:UniPCMultistepScheduler", {}, NFE),
]


@pytest.fixture(scope="module")
def model():
    """A random MLP eps-model on 64 dims: a realistic per-call cost for a cheap network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(DIM + 1, HIDDEN), torch.nn.SiLU(), torch.nn.Linear(HIDDEN, HIDDEN),
                              torch.nn.SiLU(), torch.nn.Linear(HIDDEN, DIM)).eval()

    def fn(x, t):
        with torch.inference_mode():
            return net(torch.cat([x, t[:, None]], 1))

    return samplers.DiffusionModel(fn, samplers.VPLinear(), "eps", data_shape=(DIM,), name="mlp64")


def eval_seconds(model, x, reps: int = 20) -> float:
    """Median wall time of one model call through the boundary (float64 state in, float64 out)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.eps(x, 0.5)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("side", ["ours", "diffusers"])
@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_overhead(benchmark, model, pair, side):
    ours, ours_opts, theirs, theirs_opts, nfe = pair
    name, options = (ours, ours_opts) if side == "ours" else (theirs, theirs_opts)
    if name not in samplers.available():
        pytest.skip(f"{name} is not registered")
    sampler = samplers.get(name, **options)
    x_T = samplers.initial_noise(0, range(BATCH), (DIM,))
    sampler.sample(model, x_T, nfe)  # warm-up (and diffusers' import)
    before = eval_seconds(model, x_T)
    benchmark.pedantic(sampler.sample, args=(model, x_T, nfe), rounds=10, iterations=1)
    wall = benchmark.stats.stats.median
    eval_s = 0.5 * (before + eval_seconds(model, x_T))  # timed around the samples: the machine's load drifts
    overhead, extra_ms = wall / (nfe * eval_s), 1e3 * (wall / nfe - eval_s)
    benchmark.extra_info.update({"nfe": nfe, "eval_ms": 1e3 * eval_s, "overhead": overhead,
                                 "solver_ms_per_call": extra_ms})
    print(f"\n{name}: overhead {overhead:.2f}, solver {extra_ms:.2f} ms per call (eval {1e3 * eval_s:.2f} ms)")
