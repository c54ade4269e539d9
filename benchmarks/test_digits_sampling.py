"""Sampling time against the network's own forward time on the digits UNet (issue 8, "Speed"; target: <= 1.1).

``pretrained.load("digits").model`` at batch 1000, float64 state (the sweep's default), one thread. The network is
wrapped so every forward call made inside ``Sampler.sample`` is timed; the ratio is the sample's time over the sum
of its forward calls (same calls, same run, so no drift between a baseline and the sample), on CPU time and on
wall time. Before timing, each sampler runs once on 2 samples, as the runner's warm-up does (it fills the cached
schedule tables). Samplers: DDIM, DPM-Solver++(2M), UniPC (bh1, order 3), DEIS tAB(3), Heun (EDM), at NFE 10; NFE
20 too with SAMPLERBENCH_BENCH_FULL=1 (a 1000-sample forward costs about 0.35 s of CPU, so NFE 20 doubles this file).
"""
import os
import time

import pytest
import torch

import pretrained
import samplers
from timers import table

BATCH = 1000
TARGET = 1.1
NFES = (10, 20) if os.environ.get("SAMPLERBENCH_BENCH_FULL") == "1" else (10,)
SOLVERS = [("DDIM", "ddim"), ("DPM-Solver++(2M)", "dpm_solver++_2m"), ("UniPC bh1-3", "unipc"),
           ("DEIS tAB(3)", "deis_tab3"), ("Heun (EDM)", "heun")]
COLUMNS = ["solver", "nfe", "sample_cpu_s", "forward_cpu_s", "ratio_cpu", "sample_wall_s", "forward_wall_s",
           "ratio_wall"]


class TimedNet:
    """The network with a stopwatch: CPU and wall seconds of its calls since the last reset."""

    def __init__(self, fn):
        self.fn, self.cpu, self.wall = fn, 0.0, 0.0

    def __call__(self, x, t):
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.fn(x, t)
        self.cpu += time.process_time() - c0
        self.wall += time.perf_counter() - w0
        return out


@pytest.fixture(scope="module")
def rows():
    """The rows of this module, printed as one table when it is done."""
    rows = []
    yield rows
    if rows:
        print("\n" + table(rows, COLUMNS, f"digits UNet, batch {BATCH}, float64 state, "
                                          f"{torch.get_num_threads()} thread(s)"))


@pytest.fixture(scope="module")
def timed():
    model = pretrained.load("digits").model
    net = TimedNet(model.fn)
    return model.replace(fn=net), net


@pytest.mark.parametrize("nfe", NFES)
@pytest.mark.parametrize("label,name", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_sampling_vs_forward(benchmark, timed, rows, label, name, nfe):
    model, net = timed
    sampler = samplers.get(name)
    x_T = samplers.initial_noise(0, range(BATCH), model.data_shape)
    sampler.sample(model, x_T[:2], nfe)  # the runner's warm-up
    clock = {}

    def run():
        net.cpu = net.wall = 0.0
        w0, c0 = time.perf_counter(), time.process_time()
        sampler.sample(model, x_T, nfe)
        clock.update(cpu=time.process_time() - c0, wall=time.perf_counter() - w0)

    benchmark.pedantic(run, rounds=1, iterations=1)
    row = {"solver": label, "nfe": nfe, "sample_cpu_s": clock["cpu"], "forward_cpu_s": net.cpu,
           "ratio_cpu": clock["cpu"] / net.cpu, "sample_wall_s": clock["wall"], "forward_wall_s": net.wall,
           "ratio_wall": clock["wall"] / net.wall}
    row["target_met"] = row["ratio_cpu"] <= TARGET
    benchmark.extra_info.update(row)
    rows.append(row)
