"""Train the PD students (Salimans & Ho 2022, Algorithm 2): rounds from N steps halving to 1.

Round 1: teacher = the digits eps teacher with DDIM at 2N steps (time-uniform grid to STUDENT_T_END), student =
digits-v (the teacher fine-tuned to v). Each later round: teacher = the previous round's student (its EMA), student
initialised from it, N halved. The student matches two teacher DDIM steps t -> t' -> t'' with one: target x~ in
closed form (pretrained.distill.pd_target), loss max(SNR(t), 1) |x~ - x0_student(z_t)|^2 (truncated SNR weighting),
v-parameterisation, t one of the student's N grid points. The best-FID EMA of each round (DDIM with the student at
N steps) is the next teacher; the students at ``--ship`` steps go into one safetensors file of
pretrained/weights/digits-pd with keys prefixed "n8.", "n4.", ... in float16 (4 x 1 MB instead of 4 x 2 MB).
"""
from __future__ import annotations

from pathlib import Path

import torch

from samplers.students import STUDENT_T_END

from ..distill import fit, pd_loss, v_model, write_curve
from ..nets import UNet
from ..weights import WEIGHTS_ROOT, save_weights
from .pins_note import pin_note
from .train_students import (base_manifest, data_sampler, fid_evaluator, fit_options, open_log, student_args, teacher,
                             v_start)

OUT = WEIGHTS_ROOT / "digits-pd"
SHIP_DTYPE = torch.float16


def main(argv=None):
    p = student_args(__doc__, workdir="train_pd", out=OUT, steps=500, eval_every=500, lr=2e-4)
    p.add_argument("--start", type=int, default=32, help="student steps of round 1 (teacher: DDIM at twice that)")
    p.add_argument("--ship", type=int, nargs="+", default=[8, 4, 2, 1])
    p.add_argument("--round-minutes", type=float, nargs="+", default=[float("inf")],
                   help="wall-time cap of each round, in round order (the last value repeats)")
    a = p.parse_args(argv)
    work = open_log(a.workdir)
    _, teacher_model, teacher_manifest = teacher()
    init, v_manifest = v_start()
    config = v_manifest["architecture"]["config"]
    batch = data_sampler(a.batch)
    options = fit_options(a)

    rounds, shipped, t_model, state = [], {}, teacher_model, init
    n = a.start
    while n >= 1:
        net = UNet(**config)
        net.load_state_dict(state)

        def loss_fn(student, g, step, n=n, t_model=t_model):
            return pd_loss(v_model(student, f"pd:{n}", grad=True), t_model, batch(g), n, STUDENT_T_END, g)

        minutes = a.round_minutes[min(len(rounds), len(a.round_minutes) - 1)]
        result = fit(work / f"round_n{n}", net, loss_fn, steps=a.steps,
                     evaluate=fid_evaluator({"fid": ("pd", n)}, a.eval_samples, head=f"pd:{n}"), select="fid",
                     **{**options, "max_seconds": minutes * 60})
        write_curve(work / f"round_n{n}" / "training_curve.csv", result)
        best = next(r for r in result["curve"] if r[0] == result["best_step"])
        rounds.append({"student_steps": n, "teacher": ("digits (eps), DDIM" if n == a.start else "previous student, DDIM")
                       + f" at {2 * n} steps", "steps": result["best_step"], "steps_run": result["steps_run"],
                       "minutes_cap": minutes, "seconds": result["seconds"], "final_loss": result["curve"][-1][1],
                       "fid_at_start": result["curve"][0][3],
                       "best_fid": best[3], "curve": [[r[0], r[1], r[3]] for r in result["curve"]]})
        state = result["state"]
        if n in a.ship:
            shipped[n] = state
        t_model = v_model(net_from(config, state), f"pd-teacher:{n}")
        n //= 2

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training_curve.csv", "w") as f:
        f.write("student_steps,step,train_loss,fid\n")
        for r in rounds:
            f.writelines(f"{r['student_steps']},{s},{loss},{fid}\n" for s, loss, fid in r["curve"])
    weights = {f"n{k}.{name}": v.to(SHIP_DTYPE) for k, st in sorted(shipped.items(), reverse=True)
               for name, v in st.items()}
    manifest = base_manifest("digits-pd", a, teacher_manifest,
                             {"from": "digits-v", "weights_sha256": v_manifest["weights_sha256"]},
                             "DDIM with the N-step student, N NFE")
    seconds = round(sum(r["seconds"] for r in rounds), 1)
    manifest = save_weights(out, weights, {
        **manifest, "student": "pd", "students": {str(k): f"n{k}." for k in sorted(shipped, reverse=True)},
        "stored_dtype": str(SHIP_DTYPE).replace("torch.", ""),
        "method": "progressive distillation (Salimans & Ho 2022, Algorithm 2); sampling: DDIM with the N-step student "
                  f"on the time-uniform grid from T to t_end = {STUDENT_T_END}, N NFE",
        "loss": "max(SNR(t), 1) |x~ - x0_student(z_t)|^2, x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - "
                "(sigma_t''/sigma_t) alpha_t), z_t'' two teacher DDIM steps; t a student grid point",
        "rounds": [{k: v for k, v in r.items() if k != "curve"} for r in rounds],
        "training": {"rounds": len(rounds), "steps_per_round": a.steps, "round_minutes_cap": a.round_minutes,
                     "seconds": seconds, "recipe": "python -m pretrained.train pd",
                     "curve": "training_curve.csv"}})
    print(f"shipped students {sorted(shipped)} ({seconds} s), sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note("digits-pd", out, manifest["weights_sha256"]))


def net_from(config: dict, state: dict) -> UNet:
    net = UNet(**config)
    net.load_state_dict(state)
    return net.eval()


if __name__ == "__main__":
    main()
