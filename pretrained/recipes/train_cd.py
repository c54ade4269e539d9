"""Train the CD student (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 2): consistency distillation.

Consistency function f(x, t) = c_skip(t) (alpha_end / alpha_t) x + c_out(t) F(x, t) (samplers.students.consistency_fn:
boundary condition f(x, t_end) = x exact; F the DDIM jump to t_end with the v-network's x0 prediction), network
initialised from digits-v. N discretisation points on Karras et al.'s grid (rho = 7) from T to t_end; for a random
adjacent pair t_hi > t_lo, x_hi = alpha x0 + sigma z from the 'train' split, x^_lo = ONE DDIM step of the digits eps
teacher from x_hi; loss = mean |f_theta(x_hi, t_hi) - f_target(x^_lo, t_lo)|^2 (squared L2, the paper's l2 metric;
LPIPS has no meaning on 8x8 digits), f_target the EMA target network (decay ``--target-ema``). The best-FID (1-step)
EMA of the online network ships to pretrained/weights/digits-cd; multistep sampling (Algorithm 1) in samplers/students.
"""
from __future__ import annotations

from pathlib import Path

import torch

from samplers.schedules import VPLinear
from samplers.students import STUDENT_T_END

from ..distill import cd_grid, cd_loss, ema_update, fit, v_model, write_curve
from ..digits import load_unet
from ..nets import UNet
from ..weights import WEIGHTS_ROOT, save_weights
from .pins_note import pin_note
from .train_students import (base_manifest, cost_stages, data_sampler, fid_evaluator, fit_options, open_log,
                             student_args, teacher, training_cost, v_stage, v_start)

OUT = WEIGHTS_ROOT / "digits-cd"


class TargetNetwork:
    """The target network theta^- <- stopgrad(mu theta^- + (1 - mu) theta) after each optimiser step."""

    def __init__(self, net: UNet, mu: float):
        self.net, self.mu = UNet(**net.config), mu
        self.net.load_state_dict(net.state_dict())
        self.net.requires_grad_(False)

    def __call__(self, net: UNet, step: int) -> None:
        ema_update(self.net, net, self.mu)

    def state_dict(self) -> dict:
        return self.net.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state)


def main(argv=None):
    p = student_args(__doc__, workdir="train_cd", out=OUT, steps=3000, eval_every=500, lr=1e-4)
    p.add_argument("--points", type=int, default=18, help="N discretisation points (the paper: 18 on CIFAR-10)")
    p.add_argument("--target-ema", type=float, default=0.95, help="mu of the target network (the paper's CD: 0.95)")
    p.add_argument("--init", choices=["digits-v", "digits-cd"], default="digits-v",
                   help="digits-cd: continue training from the shipped digits-cd weights (online and target networks "
                        "start from them; its training cost is carried into the new manifest)")
    a = p.parse_args(argv)
    work = open_log(a.workdir)
    _, teacher_model, teacher_manifest = teacher()
    init, v_manifest = v_start()
    earlier = []
    if a.init == "digits-cd":
        cd_net, cd_manifest = load_unet(OUT, name="digits-cd")
        init, earlier = cd_net.state_dict(), cost_stages(cd_manifest, v_manifest)
    net = UNet(**v_manifest["architecture"]["config"])
    net.load_state_dict(init)
    target = TargetNetwork(net, a.target_ema)
    grid = cd_grid(VPLinear(), a.points, STUDENT_T_END)
    batch = data_sampler(a.batch)

    def loss_fn(student, g, step):
        return cd_loss(v_model(student, "cd", grad=True), v_model(target.net, "cd-target"), teacher_model, batch(g),
                       grid, STUDENT_T_END, g)

    evaluate = fid_evaluator({"fid_nfe1": ("cd", 1), "fid_nfe2": ("cd", 2), "fid_nfe4": ("cd", 4)}, a.eval_samples,
                             head="cd")
    result = fit(work, net, loss_fn, steps=a.steps, evaluate=evaluate, select="fid_nfe1", after_step=target,
                 **fit_options(a))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_curve(out / "training_curve.csv", result)
    best = dict(zip(["step", "train_loss", "elapsed_s", *result["columns"]],
                    next(r for r in result["curve"] if r[0] == result["best_step"])))
    init_entry = {"from": "digits-v", "weights_sha256": v_manifest["weights_sha256"]}
    if a.init == "digits-cd":
        init_entry = {**cd_manifest["init"], "continued_from": {"name": "digits-cd",
                                                                "weights_sha256": cd_manifest["weights_sha256"]}}
    stage = {"stage": "cd" if not earlier else f"cd (continued {len(earlier)})", "optimiser_steps": result["steps_run"],
             "teacher_nfe": result["steps_run"] * a.batch, "seconds": result["seconds"], "threads": result["threads"],
             "shipped_step": result["best_step"], "stopped": result["stopped"]}
    stages = (earlier or v_stage(v_manifest)) + [stage]
    manifest = base_manifest("digits-cd", a, teacher_manifest, init_entry,
                             "cd (multistep consistency sampling, logSNR-grid re-noising times), 1, 2 and 4 NFE")
    manifest = save_weights(out, result["state"], {
        **manifest, "student": "cd",
        "method": "consistency distillation (Song et al. 2023, Algorithm 2); f = samplers.students.consistency_fn",
        "consistency_function": "f(x, t) = c_skip (alpha_end/alpha_t) x + (1 - c_skip) F, c_skip = sigma_d^2 / "
                                "((sigma/alpha - sigma_end/alpha_end)^2 + sigma_d^2), sigma_d = 0.5, F = DDIM jump "
                                "to t_end with x0 = alpha x - sigma v",
        "loss": "mean |f_theta(x_hi, t_hi) - f_target(x^_lo, t_lo)|^2 (squared L2), x^_lo one DDIM step of the "
                "digits eps teacher",
        "discretisation": {"points": a.points, "grid": "karras (rho 7) from T to t_end",
                           "times": [round(float(t), 6) for t in grid]},
        "target_ema": a.target_ema,
        "training_cost": training_cost(stages),
        "training": {"steps": result["best_step"], "steps_run": result["steps_run"], "seconds": result["seconds"],
                     "stopping_rule": result["stopping_rule"], "stopped": result["stopped"],
                     "final_loss": result["curve"][-1][1],
                     "best": {k: v for k, v in best.items() if k.startswith("fid")},
                     "recipe": "python -m pretrained.train cd", "curve": "training_curve.csv"}})
    print(f"shipped step {result['best_step']}, quick FID {best['fid_nfe1']:.3f}, "
          f"sha256 {manifest['weights_sha256'][:12]}")
    print(pin_note("digits-cd", out, manifest["weights_sha256"]))


if __name__ == "__main__":
    main()
