"""The digits-vdm checkpoint: weights by checksum, the learned schedule (monotone, exact inverse, every sampler runs on
it), a golden DDIM sample, the recipe's variance-minimising gradient, and a tiny training run that resumes."""
import shutil

import pytest
import torch
from safetensors.torch import load_file

import pretrained
import samplers
from toy_heads import with_every_head
from pretrained import data, vdm
from pretrained.pins import PINNED_SHA256
from pretrained.vdm import (NAME, VDM_FOLDER, GammaNet, LearnedSchedule, bits_per_dim, diffusion_loss, load_vdm,
                            prior_loss, recon_loss)
from pretrained.weights import file_sha256, read_manifest

# DDIM, 10 steps (time-uniform to t = 1e-3), from initial_noise(0, range(4)) in float64: pixels GOLDEN_PIXELS (flat
# index, the middle of the image) of each sample, measured on the shipped weights (float32 UNet: round-off ~1e-6).
GOLDEN_PIXELS = [20, 27, 28, 35, 36, 43]
GOLDEN_DDIM10 = [[1.015155, -0.901848, 0.879341, -0.956619, 0.978253, 0.050959],
                 [-0.879736, -0.832354, -0.061449, -0.024983, 0.68328, 0.014495],
                 [0.249312, -1.048254, 0.929396, -1.056044, -0.035398, -1.03538],
                 [1.001288, -0.231227, 1.010759, 0.284824, 0.604928, 0.465789]]
GOLDEN_ATOL = 1e-4
# Sample-FID gate, DDIM 20 NFE at 500 samples (manifest "evaluation"): floor (holdout vs reference) 30.5; the shipped
# model 29.3-55.1 over seeds 0-4 (39.7 on seed 0, the one tested); random weights 776. Floor + 20 fails a broken model.
FID_N, FID_MARGIN = 500, 20.0


@pytest.fixture(scope="module")
def ck():
    return pretrained.load(NAME)


def test_loads_by_checksum(ck, tmp_path):
    assert ck.fingerprint == PINNED_SHA256[NAME] == file_sha256(VDM_FOLDER / "model.safetensors")
    manifest = read_manifest(VDM_FOLDER)
    assert manifest["split_sha256"] == data.split_sha256() and manifest["name"] == NAME
    folder = tmp_path / NAME
    shutil.copytree(VDM_FOLDER, folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_vdm(folder)
    # the schedule the model boundary uses is the one in the file
    state = load_file(str(VDM_FOLDER / "model.safetensors"))
    assert ck.model.schedule.config()["gamma_0"] == float(state["gamma.gamma_0"]) == manifest["schedule"]["gamma_0"]


def test_learned_gamma_is_monotone_and_its_inverse_round_trips(ck):
    sch = ck.model.schedule
    t = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    gamma = sch.gamma(t)
    assert (gamma.diff() > 0).all()
    cfg = sch.config()
    torch.testing.assert_close(gamma[[0, -1]], torch.tensor([cfg["gamma_0"], cfg["gamma_1"]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(sch.lambda_(t), -0.5 * gamma, rtol=0, atol=0)
    torch.testing.assert_close(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-14)
    t = t[::100]  # the inverse costs BISECT_STEPS evaluations per point (201 points, both ends included)
    assert (sch.inverse_lambda(sch.lambda_(t)) - t).abs().max() < 1e-10
    # beyond [gamma_0, gamma_1] the inverse follows the network's monotone extension
    lam = torch.tensor([-0.5 * cfg["gamma_1"] - 3.0, -0.5 * cfg["gamma_0"] + 3.0], dtype=torch.float64)
    t_out = sch.inverse_lambda(lam)
    assert t_out[0] > 1 and t_out[1] < 0
    assert (sch.lambda_(t_out) - lam).abs().max() < 1e-9
    # scalars, and the device of the input (meta: shapes only)
    assert sch.inverse_lambda(float(sch.lambda_(0.25))).shape == () and sch.inverse_lambda(
        torch.zeros(3, device="meta")).device == torch.device("meta")


def test_inverse_of_an_untrained_wiggly_schedule():
    """A schedule far from linear (large gated part): still monotone, round trip to 1e-10."""
    torch.manual_seed(0)
    g = GammaNet(64)
    with torch.no_grad():
        g.w2.mul_(3000.0), g.b2.normal_(), g.w3.mul_(3000.0)
    sch = LearnedSchedule.from_module(g)
    t = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    assert (sch.gamma(t).diff() > 0).all()
    assert (sch.inverse_lambda(sch.lambda_(t)) - t).abs().max() < 1e-10
    with pytest.raises(ValueError, match="gamma_0 < gamma_1"):
        LearnedSchedule({**g.params(), "gamma_0": torch.tensor(1.0), "gamma_1": torch.tensor(0.0)})


# Defaults a schedule cannot take: EDM's published S_tmax = 50 churns above this schedule's start (rho(T) = 11.9).
OPTIONS = {"edm_stochastic": {"S_tmax": 5.0}}


@pytest.mark.parametrize("name", samplers.available())
def test_every_sampler_runs_on_the_learned_schedule(ck, name):
    sampler = samplers.get(name, **OPTIONS.get(name, {}))
    model = with_every_head(samplers.DiffusionModel(lambda x, t: 0.3 * x + 0.1 * t[:, None], ck.model.schedule,
                                                    "eps", data_shape=(2,), net_dtype=torch.float64))
    nfe = None if sampler.adaptive else next(n for n in [*range(6, 40), *range(1, 6)] if _supported(sampler, n))
    noise = samplers.SampleNoise(1, range(3), (2,)) if sampler.stochastic else None
    with model.counting() as c:
        out = sampler.sample(model, samplers.initial_noise(0, range(3), (2,)), nfe, noise=noise)
    assert out.shape == (3, 2) and torch.isfinite(out).all() and c.n == (nfe or c.n) > 0


def _supported(sampler, nfe) -> bool:
    try:
        sampler.check_nfe(nfe)
        return True
    except samplers.UnsupportedNFE:
        return False


def test_ddim10_from_fixed_noise_matches_golden(ck):
    x_T = samplers.initial_noise(0, range(4), vdm.DATA_SHAPE)
    out = samplers.get("ddim").sample(ck.model, x_T, 10)
    torch.testing.assert_close(out.flatten(1)[:, GOLDEN_PIXELS], torch.tensor(GOLDEN_DDIM10, dtype=torch.float64),
                               rtol=0, atol=GOLDEN_ATOL)


def test_sample_fid_below_floor_plus_margin(ck, tmp_path):
    from bench.metrics.fid import fid_kid

    floor = fid_kid(data.digits_split("holdout")[0], ck, cache_dir=str(tmp_path), kid_subsets=5)["fid"]
    x_T = samplers.initial_noise(0, range(FID_N), vdm.DATA_SHAPE)
    good = fid_kid(samplers.get("ddim").sample(ck.model, x_T, 20), ck, cache_dir=str(tmp_path), kid_subsets=5)["fid"]
    assert good < floor + FID_MARGIN, (good, floor)
    torch.manual_seed(0)
    broken = vdm.as_model(pretrained.nets.UNet(), ck.model.schedule, "random")
    bad = fid_kid(samplers.get("ddim").sample(broken, x_T, 20), ck, cache_dir=str(tmp_path), kid_subsets=5)["fid"]
    assert bad > floor + FID_MARGIN, (bad, floor)


def test_reference_solution_agrees_with_adaptive_solver_in_t(ck):
    """Heun-500 in (x / alpha, sigma / alpha) vs dopri5 (rtol = atol = 1e-6) on dx/dt = f x + g^2 eps / (2 sigma), with
    f = d log alpha / dt of the learned schedule by autograd. Against dopri5 at 1e-7 (8 samples) the reference is
    4e-5 off (max abs), DDIM at 10 NFE 0.41."""
    from torchdiffeq import odeint

    x_T = samplers.initial_noise(5, range(2), vdm.DATA_SHAPE)
    ref = ck.reference_solution(x_T, samplers.VP_T_END)
    model, sch = vdm.as_model(ck.extras["net"], ck.model.schedule, "check"), ck.model.schedule

    def velocity(t, x):
        f, g2 = sch.drift_diffusion(t)
        return f * x + 0.5 * g2 / sch.sigma(t) * model.eps(x, t)

    ts = torch.tensor([1.0, samplers.VP_T_END], dtype=torch.float64)
    adaptive = odeint(velocity, x_T, ts, method="dopri5", rtol=1e-6, atol=1e-6)[-1]
    assert (ref - adaptive).abs().max() < 1e-3
    assert (samplers.get("ddim").sample(model, x_T, 10) - adaptive).abs().max() > 5e-2  # a coarse solve fails
    assert ck.reference_exact is False


def test_bound_matches_the_likelihood_module(ck):
    """pretrained.vdm's bound (the recipe's, float32) vs samplers.likelihood.vdm_bound (float64, its own draws) on
    the 300 holdout images, 16 times each: measured 1.858 vs 1.870 (seed 0), 1.863 vs 1.864 (seed 1) bits/dim."""
    from samplers.likelihood import vdm_bound

    x = data.digits_split("holdout")[0]
    ours = vdm.vlb_bits_per_dim(load_vdm()[0], x, 16, seed=0)
    theirs = vdm_bound(ck.model, x.double(), 16, seed=0, indices=range(len(x)), levels=17, data_range=(-1.0, 1.0),
                       kind="continuous", t_eps=0.0, time_sampling="t")
    assert abs(ours["prior"] - float(theirs["vlb_prior_bpd"].mean())) < 1e-6
    assert abs(ours["recon"] - float(theirs["vlb_recon_bpd"].mean())) < 0.02
    assert abs(ours["bpd"] - float(theirs["nll_bpd"].mean())) < 0.05
    assert ours["bpd"] == pytest.approx(read_manifest(VDM_FOLDER)["vlb_holdout"]["bpd"], abs=0.05)


def test_schedule_gets_the_gradient_of_the_squared_diffusion_term():
    """train_step's two backward passes vs autograd of the plain objectives on the same draws."""
    from pretrained.recipes.train_vdm import train_step

    torch.manual_seed(0)
    model = vdm.VDM({"channels": [8, 16], "emb_dim": 16, "groups": 4}, n_features=16)
    with torch.no_grad():
        model.gamma.w2.normal_(), model.gamma.w3.normal_()  # a shape with curvature
    x0 = data.digits_split("train")[0][:6]
    train_step(model, x0, torch.Generator().manual_seed(3))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    g = torch.Generator().manual_seed(3)  # the same draws as train_step
    t = torch.remainder(torch.rand((), generator=g) + torch.arange(6) / 6, 1.0).requires_grad_(True)
    eps, eps_0 = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    gamma_t = model.gamma(t)
    (dgamma_t,) = torch.autograd.grad(gamma_t.sum(), t, create_graph=True)
    diff = bits_per_dim(diffusion_loss(model, x0, gamma_t, dgamma_t, eps))
    vlb = (bits_per_dim(recon_loss(x0, model.gamma.gamma_0, eps_0) + prior_loss(x0, model.gamma.gamma_1))
           + diff).mean()
    shape = ["gamma.w1", "gamma.w2", "gamma.b2", "gamma.w3"]
    params = dict(model.named_parameters())
    want = dict(zip(shape, torch.autograd.grad(diff.square().mean(), [params[n] for n in shape], retain_graph=True)))
    rest = [n for n in params if n not in shape]
    want.update(zip(rest, torch.autograd.grad(vlb, [params[n] for n in rest])))
    for n in params:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    assert got["gamma.w2"].abs().max() > 0 and got["gamma.gamma_0"].abs() > 0


TINY = ["--channels", "8", "16", "--emb-dim", "16", "--groups", "4", "--n-features", "16", "--batch", "8",
        "--eval-every", "2", "--ckpt-every", "2", "--eval-samples", "100", "--eval-nfe", "4", "--eval-holdout", "10",
        "--eval-times", "2", "--final-times", "2", "--warmup", "2"]


def test_tiny_training_run_resumes_bit_identically(tmp_path, capsys):
    from pretrained.train import main

    main(["vdm", "--workdir", str(tmp_path / "a"), "--out", str(tmp_path / "out_a"), "--max-steps", "4", *TINY])
    main(["vdm", "--workdir", str(tmp_path / "a"), "--out", str(tmp_path / "out_a"), "--max-steps", "6", *TINY])
    main(["vdm", "--workdir", str(tmp_path / "b"), "--out", str(tmp_path / "out_b"), "--max-steps", "6", *TINY])
    assert "resumed at step 4" in (tmp_path / "a" / "train.log").read_text()
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert a["state"]["step"] == b["state"]["step"] == 6
    for part in ("vdm", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sha = read_manifest(tmp_path / "out_a")["weights_sha256"]
    assert f"expected_sha256='{sha}'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no pinned sha256|pin of 'digits-vdm'"):
        load_vdm(tmp_path / "out_a")
    model, manifest = load_vdm(tmp_path / "out_a", expected_sha256=sha)
    assert manifest["training"]["steps_run"] == 6 and model.net.config["channels"] == [8, 16]
    assert [r[0] for r in a["state"]["curve"]] == [0, 2, 4, 6]
    sch = LearnedSchedule.from_module(model.gamma)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert (sch.gamma(t).diff() > 0).all()
