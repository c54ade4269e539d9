"""Train the KD student (Luhman & Luhman 2021): a one-step map x_T -> the digits teacher's ODE solution at t_end.

Data set: pairs (x_T, x_end), x_T of sample indices 0..n-1 of seed DATA_SEED (not a benchmark seed), x_end the digits
eps teacher's deterministic ODE solve to STUDENT_T_END (DPM-Solver++(3M), 50 NFE by default); its distance to the
1000-NFE reference solution (pretrained.digits.ode_solution) on the first pairs goes into the manifest. The student
has the teacher's architecture, starts from digits-v (the teacher fine-tuned to v), and maps x_T by one DDIM jump
with its x0 prediction (samplers.students.kd_map); loss: the squared L2 distance to x_end, averaged (the paper's
student loss for Gaussian output distributions of equal fixed variance). Ships to pretrained/weights/digits-kd.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from samplers.students import STUDENT_T_END

from ..digits import ode_solution
from ..distill import fit, kd_loss, kd_pairs, v_model, write_curve
from ..nets import UNet
from ..weights import WEIGHTS_ROOT, save_weights
from .pins_note import pin_note
from .train_students import base_manifest, fid_evaluator, fit_options, open_log, student_args, teacher, v_start

OUT = WEIGHTS_ROOT / "digits-kd"
DATA_SEED = 100  # the benchmark's seeds are 0..4
log = logging.getLogger("distill")


def pairs_sha256(x_T: torch.Tensor, x_end: torch.Tensor) -> str:
    """sha256 of the data set: the float64 little-endian bytes of x_T, then of x_end."""
    h = hashlib.sha256()
    for t in (x_T, x_end):
        h.update(t.to(torch.float64).contiguous().numpy().astype("<f8").tobytes())
    return h.hexdigest()


def main(argv=None):
    p = student_args(__doc__, workdir="train_kd", out=OUT, steps=4000, eval_every=500, lr=2e-4)
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--solver", default="dpm_solver++_3m")
    p.add_argument("--solver-nfe", type=int, default=50)
    p.add_argument("--check", type=int, default=16, help="pairs compared with the 1000-NFE reference solution")
    a = p.parse_args(argv)
    work = open_log(a.workdir)
    teacher_net, teacher_model, teacher_manifest = teacher()
    data_path = work / "pairs.pt"
    if data_path.exists():
        data = torch.load(data_path, weights_only=True)
    else:
        t0 = time.time()
        x_T, x_end = kd_pairs(teacher_model, DATA_SEED, a.pairs, a.solver, a.solver_nfe, STUDENT_T_END)
        seconds = time.time() - t0
        ref = ode_solution(teacher_net, x_T[:a.check], STUDENT_T_END)
        d = x_end[:a.check] - ref
        data = {"x_T": x_T, "x_end": x_end, "seconds": torch.tensor(seconds),
                "check_max": d.abs().max(), "check_rms": d.pow(2).mean().sqrt()}
        torch.save(data, data_path)
    x_T, x_end = data["x_T"].float(), data["x_end"].float()
    log.info("KD pairs: %d, %.0f s; distance to the reference on %d: max %.2e rms %.2e", len(x_T),
             float(data["seconds"]), a.check, float(data["check_max"]), float(data["check_rms"]))

    def loss_fn(net, g, step):
        idx = torch.randint(len(x_T), (a.batch,), generator=g)
        return kd_loss(v_model(net, "kd", grad=True), x_T[idx], x_end[idx], STUDENT_T_END)

    init, v_manifest = v_start()
    net = UNet(**v_manifest["architecture"]["config"])
    net.load_state_dict(init)
    result = fit(work, net, loss_fn, steps=a.steps, evaluate=fid_evaluator({"fid_nfe1": ("kd", 1)}, a.eval_samples,
                                                                          head="kd"),
                 select="fid_nfe1", **fit_options(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_curve(out / "training_curve.csv", result)
    best = next(r for r in result["curve"] if r[0] == result["best_step"])
    manifest = base_manifest("digits-kd", a, teacher_manifest,
                             {"from": "digits-v", "weights_sha256": v_manifest["weights_sha256"]}, "kd, 1 NFE")
    manifest = save_weights(out, result["state"], {
        **manifest, "student": "kd",
        "method": "knowledge distillation (Luhman & Luhman 2021): x_end ~ kd_map(x_T) = one DDIM jump T -> t_end "
                  "with the student's x0 = alpha x - sigma v",
        "loss": "mean over pairs and pixels of |kd_map(x_T) - x_end|^2 (squared L2)",
        "data_set": {"pairs": len(x_T), "x_T": f"samplers.initial_noise({DATA_SEED}, range({len(x_T)}), (1, 8, 8))",
                     "x_end": f"digits teacher, samplers.get({a.solver!r}, t_end={STUDENT_T_END}), {a.solver_nfe} NFE",
                     "sha256": pairs_sha256(data["x_T"], data["x_end"]), "seconds": round(float(data["seconds"]), 1),
                     "distance_to_reference": {"pairs": a.check, "max_abs": float(data["check_max"]),
                                               "rms": float(data["check_rms"]),
                                               "reference": "pretrained.digits.ode_solution (Heun, 1000 NFE)"}},
        "training": {"steps": result["best_step"], "steps_run": result["steps_run"], "seconds": result["seconds"],
                     "seconds_with_data_set": round(result["seconds"] + float(data["seconds"]), 1),
                     "final_loss": result["curve"][-1][1], "best_fid_nfe1": best[3],
                     "recipe": "python -m pretrained.train kd", "curve": "training_curve.csv"}})
    print(f"shipped step {result['best_step']}, quick FID {best[3]:.3f}, sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note("digits-kd", out, manifest["weights_sha256"]))


if __name__ == "__main__":
    main()
