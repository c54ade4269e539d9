"""Train digits-v: the digits UNet fine-tuned to v-prediction (Salimans & Ho 2022), the start of every student.

Salimans & Ho recommend v (or x) prediction for few-step students: x0 = alpha x - sigma v stays bounded at t = T,
where an eps network's x0 = (x - sigma eps) / alpha divides by alpha(1) = 0.0066. Init: the shipped digits EMA
weights; loss mean |v_theta - v|^2 with t ~ U[T_MIN, 1] on the 'train' split; the EMA of the best quick FID (DDIM 20
steps with the v network) ships to pretrained/weights/digits-v.
"""
from __future__ import annotations

from pathlib import Path

from samplers.schedules import VPLinear

from ..digits import load_unet
from ..distill import fit, v_loss, write_curve
from ..nets import UNet
from ..weights import save_weights
from .pins_note import pin_note
from .train_students import V_FOLDER, base_manifest, data_sampler, fid_evaluator, fit_options, open_log, student_args

EVAL_NFE = 20


def main(argv=None):
    a = student_args(__doc__, workdir="train_digits_v", out=V_FOLDER, steps=3000, eval_every=500,
                     lr=2e-4).parse_args(argv)
    sch = VPLinear()
    teacher_net, teacher_manifest = load_unet()
    net = UNet(**teacher_net.config)
    net.load_state_dict(teacher_net.state_dict())
    batch = data_sampler(a.batch)
    evaluate = fid_evaluator({"fid_ddim20": ("ddim", EVAL_NFE)}, a.eval_samples)
    result = fit(open_log(a.workdir), net, lambda n, g, step: v_loss(n, sch, batch(g), g), steps=a.steps,
                 evaluate=evaluate, select="fid_ddim20", **fit_options(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_curve(out / "training_curve.csv", result)
    best = next(r for r in result["curve"] if r[0] == result["best_step"])
    manifest = base_manifest("digits-v", a, teacher_manifest,
                             {"from": "digits", "weights_sha256": teacher_manifest["weights_sha256"]},
                             f"DDIM {EVAL_NFE} steps")
    manifest = save_weights(out, result["state"], {
        **{k: v for k, v in manifest.items() if k != "teacher"},
        "loss": "Salimans & Ho 2022 v-prediction: mean |v_theta(x_t, t) - v|^2, v = alpha eps - sigma x0, "
                "t ~ U[t_min, 1], data: sklearn load_digits split 'train' in [-1, 1]",
        "training": {"steps": result["best_step"], "steps_run": result["steps_run"], "seconds": result["seconds"],
                     "final_loss": best[1], "best_fid_ddim20": best[3],
                     "recipe": "python -m pretrained.train digits-v", "curve": "training_curve.csv"}})
    print(f"shipped step {result['best_step']}, quick FID {best[3]:.3f}, sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note("digits-v", out, manifest["weights_sha256"]))


if __name__ == "__main__":
    main()
