"""Why CD's multistep FID does not fall with NFE: the FID after each stage of multistep consistency sampling, and
what one re-noise + f does to real images at the same times.

PYTHONPATH=. python reports/students/cd_stages.py > reports/students/cd_stages.md

Stage k of the NFE-N chain is the sampler's own loop (samplers.students.cd, Algorithm 1 of Song et al. 2023) stopped
after k evaluations, with the benchmark's x_T and noise (seed s, sample indices 0..499), so stage N is the
benchmark's cell. "real" rows start from 500 images of the 'train' split instead of a stage output: re-noised to the
same time and mapped by f once; "real, as is" is the FID of those images themselves (the protocol's floor). FID:
the harness's digits protocol (classifier features vs the 300 'reference' images); mean ± t half-width over 5 seeds.
"""
from __future__ import annotations

import numpy as np
import scipy.stats
import torch

import pretrained
import samplers
from bench.metrics.fid import fid_kid
from pretrained.data import digits_split
from samplers.students import CD_HEAD, STUDENT_T_END, consistency_fn

SEEDS, N, NFES = range(5), 500, (2, 4, 8)


def renoise(x, t, sch, z):
    """x at t_end re-noised to t in the scaled variable, as the sampler does."""
    a, s = sch.alpha(torch.tensor(t, dtype=torch.float64)), sch.sigma(torch.tensor(t, dtype=torch.float64))
    ae, se = sch.alpha(torch.tensor(STUDENT_T_END, dtype=torch.float64)), sch.sigma(
        torch.tensor(STUDENT_T_END, dtype=torch.float64))
    return a * (x / ae + ((s / a) ** 2 - (se / ae) ** 2).sqrt() * z)


def stages(f, seed: int, nfe: int) -> list[torch.Tensor]:
    sch = f.schedule
    ts = samplers.time_grid(sch, "logSNR", nfe, STUDENT_T_END)
    x = samplers.initial_noise(seed, range(N), (1, 8, 8))
    noise = samplers.SampleNoise(seed, range(N), (1, 8, 8))
    out = [consistency_fn(f, x, ts[0])]
    for t in ts[1:nfe]:
        out.append(consistency_fn(f, renoise(out[-1], float(t), sch, noise.randn()), t))
    return out


def ci(v) -> str:
    v = np.asarray(v)
    h = scipy.stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.1f} ± {h:.1f}"


def main() -> None:
    torch.set_num_threads(1)
    ck = pretrained.load("digits")
    f = ck.model.head(CD_HEAD)
    fid = lambda x: fid_kid(x.float(), ck)["fid"]  # noqa: E731
    print("| NFE | re-noise times t (sigma/alpha) | FID after stage 1, 2, ... (the last is the cell) |")
    print("|---|---|---|")
    for nfe in NFES:
        ts = samplers.time_grid(f.schedule, "logSNR", nfe, STUDENT_T_END)[1:nfe]
        per = np.array([[fid(x) for x in stages(f, s, nfe)] for s in SEEDS])
        gam = ", ".join(f"{float(t):.3f} ({float(f.schedule.sigma(t) / f.schedule.alpha(t)):.2f})" for t in ts)
        print(f"| {nfe} | {gam} | {' -> '.join(ci(per[:, k]) for k in range(nfe))} |")
    x_real = digits_split("train")[0]
    times = sorted({round(float(t), 6) for nfe in NFES
                    for t in samplers.time_grid(f.schedule, "logSNR", nfe, STUDENT_T_END)[1:nfe]}, reverse=True)
    print("\n| real images (500 of 'train', seed s) | FID |")
    print("|---|---|")
    picks = [x_real[torch.randperm(len(x_real), generator=torch.Generator().manual_seed(s))[:N]] for s in SEEDS]
    print(f"| as is | {ci([fid(x) for x in picks])} |")
    for t in times:
        vals = []
        for s, x in zip(SEEDS, picks):
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
            vals.append(fid(consistency_fn(f, renoise(x.double(), t, f.schedule, z), torch.tensor(t))))
        print(f"| re-noised to t = {t:.3f}, then f | {ci(vals)} |")


if __name__ == "__main__":
    main()
