"""Does ``--compile`` help on CPU? torch.compile of the digits UNet, batch 1000, DDIM at NFE 10, one thread.

Opt-in (SAMPLERBENCH_BENCH_COMPILE=1 or SAMPLERBENCH_BENCH_FULL=1): a first compile of this UNet took about two
minutes of Inductor C++ builds on the 2-core reference machine (later runs hit Inductor's on-disk cache).

Two ways to compile, each timed from its first call (the compile) on the full batch:
  - ``module``: ``torch.compile`` of the UNet module, called under ``torch.inference_mode`` as the digits fn does;
    after one untimed full-batch sample each (the runner's warm-up with --compile), eager and compiled DDIM samples
    alternate for ROUNDS rounds: medians of CPU and wall seconds, compiled / eager, and the largest difference
    between their samples;
  - ``runner``: what ``bench run --compile`` does, ``model.replace(fn=torch.compile(model.fn))``, in a process of its
    own (a failed compile leaves dynamo unusable in the process that tried): its first call's time or its error.
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import pretrained
import samplers
from timers import interleaved, table

BATCH, NFE, ROUNDS = 1000, 10, 3
pytestmark = pytest.mark.skipif(
    os.environ.get("SAMPLERBENCH_BENCH_COMPILE") != "1" and os.environ.get("SAMPLERBENCH_BENCH_FULL") != "1",
    reason="opt-in: SAMPLERBENCH_BENCH_COMPILE=1 (compiling takes minutes on a CPU)")
RUNNER_PATH = f"""
import json, time, torch, pretrained, samplers
torch.set_num_threads(1)
model = pretrained.load("digits").model
model = model.replace(fn=torch.compile(model.fn))
x = samplers.initial_noise(0, range({BATCH}), model.data_shape)
start, error = time.perf_counter(), None
try:
    model.eps(x, 0.5)
except Exception as exc:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    error = type(exc).__name__ + ": " + " / ".join(lines[:2])[:300]
print(json.dumps([time.perf_counter() - start, error]))
"""


def test_compile_digits(benchmark):
    ck = pretrained.load("digits")
    eager, net = ck.model, ck.extras["net"]
    x_T = samplers.initial_noise(0, range(BATCH), eager.data_shape)
    ddim = samplers.get("ddim")
    compiled_net = torch.compile(net)

    def fn(x, t):
        with torch.inference_mode():
            return compiled_net(x, t)

    compiled = eager.replace(fn=fn)
    start = time.perf_counter()
    compiled.eps(x_T, 0.5)
    module_s = time.perf_counter() - start
    out = {"eager": ddim.sample(eager, x_T, NFE), "compiled": ddim.sample(compiled, x_T, NFE)}  # warm-up
    med = interleaved({"eager": lambda: ddim.sample(eager, x_T, NFE),
                       "compiled": lambda: ddim.sample(compiled, x_T, NFE)}, ROUNDS, warmup=0)
    benchmark.pedantic(ddim.sample, args=(compiled, x_T, NFE), rounds=1, iterations=1)
    runner = subprocess.run([sys.executable, "-c", RUNNER_PATH], capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    runner_s, runner_error = json.loads(runner.stdout.strip().splitlines()[-1])
    info = {"runner_path_error": runner_error, "runner_path_first_call_s": runner_s,
            "module_first_call_s": module_s, "eager_cpu_s": med["eager"]["cpu"],
            "compiled_cpu_s": med["compiled"]["cpu"], "eager_wall_s": med["eager"]["wall"],
            "compiled_wall_s": med["compiled"]["wall"],
            "compiled_over_eager_cpu": med["compiled"]["cpu"] / med["eager"]["cpu"],
            "compiled_over_eager_wall": med["compiled"]["wall"] / med["eager"]["wall"],
            "max_abs_diff": float((out["eager"] - out["compiled"]).abs().max())}
    benchmark.extra_info.update(info)
    rows = [{"what": k, "value": v} for k, v in info.items()]
    print("\n" + table(rows, ["what", "value"], f"torch.compile, digits UNet, DDIM NFE {NFE}, batch {BATCH}, "
                                                f"{torch.get_num_threads()} thread(s), median of {ROUNDS}"))
