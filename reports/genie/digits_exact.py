"""GENIE on digits with the distilled head against GENIE with the teacher's exact derivative (a JVP per step).

The exact run is an oracle, not a sampler (its JVP costs about four network passes): the gap between the two rows is
the head's error, the gap between the exact row and the reference solution the Taylor method's own.
Solver error: median L2 distance to the checkpoint's reference ODE solution (Heun, 1000 NFE), first N samples of
seed 0 as `bench run` draws them.

Usage: PYTHONPATH=. python reports/genie/digits_exact.py > reports/genie/digits_exact.md
"""
import torch

import pretrained
import samplers
from pretrained.digits import as_model
from samplers.genie import eps_derivative

N = 100
NFES = (5, 10, 20)


def exact_head(net, name="digits/genie-exact-jvp"):
    """The digits UNet whose derivative_fn is the exact JVP along the ODE (no head)."""
    model = as_model(net, name)

    def derivative_fn(x, t):
        with torch.no_grad():
            return eps_derivative(net, model.schedule, x, t)

    return model.replace(derivative_fn=derivative_fn)


def main():
    torch.set_num_threads(1)
    ck = pretrained.load("digits")
    net = ck.extras["net"]
    x_T = samplers.initial_noise(0, range(N), ck.data_shape)
    ref = ck.reference_solution(x_T, samplers.T_END)
    exact = ck.model.replace(heads={"genie": exact_head(net)})
    rows = [("ddim, time_quadratic", ck.model, "ddim", {"grid": "time_quadratic"}),
            ("genie, head", ck.model, "genie", {}), ("genie, exact JVP", exact, "genie", {}),
            ("genie afs, head", ck.model, "genie", {"afs": True}),
            ("genie afs, exact JVP", exact, "genie", {"afs": True})]
    print(f"Median solver error on digits (first {N} samples of seed 0, time_quadratic grid).\n")
    print("| run | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for label, model, name, options in rows:
        errs = [(samplers.get(name, **options).sample(model, x_T, n) - ref).flatten(1).norm(dim=1).median().item()
                for n in NFES]
        print(f"| {label} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")


if __name__ == "__main__":
    main()
