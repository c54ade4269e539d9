"""Peak memory of an RGB cell streaming through FID: `bench run` on N samples of 3x32x32 (CIFAR's shape), CPU.

A tiny local stand-in replaces what cannot run here at 50,000 samples: the network is a near-free function of x and
t, and the feature extractor a fixed random projection to Inception's 2048 pool features (its weights cannot be
downloaded, and the real network costs ~6 GFLOPs per image). Everything else is the harness's own path: the runner's
batches, the per-sample noise, the float64 feature sums and outer products, KID's features of the first 10,000
samples, the reference solution of the first samples, statistics read from an --fid-ref .npz (mu, sigma).

    /usr/bin/time -v python benchmarks/fid_memory.py 50000     # "Maximum resident set size"
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import samplers
from bench.metrics import features


class StandInInception(torch.nn.Module):
    """uint8 (B, 3, H, W) -> 2048 features: 4x4 average pooling, then a fixed random projection (float32)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, features.INCEPTION_DIM)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
        return (self.proj(x),)


def build(device):
    """The stand-in network: a flow velocity that is a fixed function of x and t (no weights)."""
    def fn(x, t):
        return 0.5 * x - t[:, None, None, None]

    return samplers.DiffusionModel(fn, samplers.FlowMatching(), "velocity", data_shape=(3, 32, 32), device=device)


def main(n: int) -> None:
    torch.set_num_threads(1)
    features.create_extractor = lambda spec, device, path=None: StandInInception().eval().to(device)
    from bench import runner
    from bench.metrics import fid
    fid.create_extractor = features.create_extractor
    sys.modules["fid_memory_factory"] = sys.modules[__name__]
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "stats.npz"
        rng = np.random.default_rng(0)
        a = rng.standard_normal((features.INCEPTION_DIM, features.INCEPTION_DIM)) / 64
        np.savez(ref, mu=np.zeros(features.INCEPTION_DIM), sigma=a @ a.T)
        start = time.time()
        from bench.cli import main as cli
        rc = cli(["run", "--checkpoint", "py:fid_memory_factory:build", "--sampler", "euler", "--nfe", "2",
                  "--n-samples", str(n), "--seeds", "0", "--batch-size", "1000", "--fid-ref", str(ref),
                  "--fid-extractor", features.INCEPTION, "--results", f"{tmp}/r", "--quiet", "--allow-large"])
        from bench.store import ResultsStore
        row = ResultsStore(f"{tmp}/r").read().iloc[0]
        print(f"rc={rc} n={n} status={row['status']} fid={row['fid']:.4f} fid_extractor={row['fid_extractor']} "
              f"reference_n={row['reference_n']} wall={time.time() - start:.1f}s")
    del runner


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
