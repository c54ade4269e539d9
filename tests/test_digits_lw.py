"""digits-lw: loaded by checksum, importance-sampled t with density g^2 / sigma^2, golden DDIM, recipe end to end."""
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import pretrained
import samplers
from pretrained.digits import DATA_SHAPE, LW_FOLDER, load_unet
from pretrained.pins import PINNED_SHA256
from pretrained.recipes.train_digits import T_MIN
from pretrained.recipes.train_lw import importance_t, lw_normaliser
from pretrained.weights import file_sha256, read_manifest, write_manifest
from samplers.schedules import VPLinear

GOLDEN = Path(__file__).parent / "fixtures" / "digits_lw_ddim10.json"
GOLDEN_ATOL = 1e-4  # a float32 network on another CPU: measured differences are ~1e-6
N_HIST, N_BINS = 200_000, 40


def _density_cdf(sch, t: torch.Tensor) -> torch.Tensor:
    """(CDF at t, integral) of g^2 / sigma^2 on [T_MIN, 1]: trapezoid rule, log-spaced grid, g^2 by autograd."""
    grid = torch.logspace(torch.log10(torch.tensor(T_MIN)), 0.0, 200_001, dtype=torch.float64)
    dens = sch.drift_diffusion(grid)[1] / sch.sigma(grid) ** 2
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * grid.diff(), 0)])
    idx = torch.searchsorted(grid, t).clamp(1, len(grid) - 1)
    w = (t - grid[idx - 1]) / (grid[idx] - grid[idx - 1])
    return (cum[idx - 1] + w * (cum[idx] - cum[idx - 1])) / cum[-1], cum[-1]


def test_importance_sampler_inverts_the_cdf_of_g2_over_sigma2():
    sch = VPLinear()
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    t = importance_t(sch, u)
    cdf, z = _density_cdf(sch, t)
    assert t[0] == T_MIN and t[-1] == 1.0 and bool((t.diff() > 0).all())
    torch.testing.assert_close(cdf, u, rtol=0, atol=1e-7)
    assert abs(lw_normaliser(sch) - z) < 1e-6 * z  # the constant per-sample weight is the density's integral
    # the weight (g^2 / sigma^2) / p(t) is Z at every t: p'(t) from the sampler's own CDF by finite differences
    du = 1e-6
    p = 2 * du / (importance_t(sch, u[1:-1] + du) - importance_t(sch, u[1:-1] - du))
    g2_over_s2 = sch.drift_diffusion(t[1:-1])[1] / sch.sigma(t[1:-1]) ** 2
    torch.testing.assert_close(g2_over_s2 / p, torch.full_like(p, z), rtol=1e-5, atol=0)


def test_importance_samples_histogram_matches_the_density():
    """Sampled t binned in log t against the density's bin masses; uniform t (the digits recipe) fails this check."""
    sch = VPLinear()
    edges = torch.logspace(torch.log10(torch.tensor(T_MIN)), 0.0, N_BINS + 1, dtype=torch.float64)
    expected = _density_cdf(sch, edges)[0].diff()
    sd = (expected * (1 - expected) / N_HIST).sqrt()

    def worst_z(t):
        observed = torch.histogram(t, bins=edges)[0] / N_HIST
        return ((observed - expected) / sd).abs().max().item()

    g = torch.Generator().manual_seed(0)
    assert worst_z(importance_t(sch, torch.rand(N_HIST, generator=g, dtype=torch.float64))) < 5
    assert worst_z(T_MIN + (1 - T_MIN) * torch.rand(N_HIST, generator=g, dtype=torch.float64)) > 50


def test_loads_by_checksum_and_manifest_says_how_it_was_made(tmp_path):
    ck = pretrained.load("digits-lw")
    m = read_manifest(LW_FOLDER)
    digits = read_manifest(LW_FOLDER.parent / "digits")
    assert ck.fingerprint == m["weights_sha256"] == PINNED_SHA256["digits-lw"]
    assert file_sha256(LW_FOLDER / m["weights_file"]) == m["weights_sha256"]
    assert m["name"] == "digits-lw" and ck.model.prediction == "eps" and ck.data_shape == DATA_SHAPE
    for key in ("architecture", "schedule", "prediction", "time_input", "t_range", "split_sha256"):
        assert m[key] == digits[key], key
    assert m["init"] == {"from": "digits", "weights_sha256": PINNED_SHA256["digits"]}
    assert m["weighting"]["Z"] == pytest.approx(lw_normaliser(VPLinear()), rel=1e-12)
    assert m["training"]["steps"] > 0 and m["training"]["seconds"] > 0 and "importance_sampling" in m
    assert ck.extras["fid"] == pretrained.load("digits").extras["fid"] and ck.real_data(3, 0).shape == (3, *DATA_SHAPE)
    # weights edited together with their manifest fail against the pin
    folder = tmp_path / "digits-lw"
    shutil.copytree(LW_FOLDER, folder)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    write_manifest(folder, {**m, "weights_sha256": file_sha256(folder / "model.safetensors")})
    with pytest.raises(ValueError, match="the pin of 'digits-lw' in pretrained/pins.py"):
        load_unet(folder, name="digits-lw")
    pretrained.validate("digits-lw")


def test_ddim10_from_fixed_noise_reproduces_the_committed_samples():
    ref = json.loads(GOLDEN.read_text())
    ck = pretrained.load("digits-lw")
    assert ref["weights_sha256"] == ck.fingerprint
    x_T = samplers.initial_noise(ref["seed"], range(ref["n"]), DATA_SHAPE)
    with ck.model.counting() as c:
        x = samplers.get("ddim").sample(ck.model, x_T, ref["nfe"])
    assert c.n == ref["nfe"]
    torch.testing.assert_close(x, torch.tensor(ref["x0"], dtype=torch.float64), rtol=0, atol=GOLDEN_ATOL)
    digits = samplers.get("ddim").sample(pretrained.load("digits").model, x_T, ref["nfe"])
    assert (x - digits).abs().max() > 100 * GOLDEN_ATOL  # the check tells the two checkpoints apart


def test_recipe_end_to_end_and_resume_is_bit_identical(tmp_path, caplog, capsys):
    """A tiny run straight to step 4 equals one stopped at step 2 and resumed from its work directory."""
    from pretrained.train import main

    tiny = ["--batch", "8", "--eval-every", "2", "--ckpt-every", "2", "--eval-samples", "100", "--eval-nfe", "2",
            "--holdout-t", "1"]
    main(["lw", "--workdir", str(tmp_path / "w1"), "--out", str(tmp_path / "o1"), "--max-steps", "4", *tiny])
    main(["lw", "--workdir", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--max-steps", "2", *tiny])
    with caplog.at_level(logging.INFO):
        main(["lw", "--workdir", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--max-steps", "4", *tiny])
    assert "resumed at step 2" in caplog.text
    m1, m2 = read_manifest(tmp_path / "o1"), read_manifest(tmp_path / "o2")
    assert m1["weights_sha256"] == m2["weights_sha256"]
    assert m1["eval_curves"] == m2["eval_curves"] and m1["fid_curve"] == m2["fid_curve"]
    steps = [c[0] for c in m1["eval_curves"]["holdout_bpd"]]
    assert steps == [0, 2, 4] and m1["training"]["steps_run"] == 4 and m1["training"]["steps"] in (2, 4)
    assert f"expected_sha256='{m1['weights_sha256']}'" in capsys.readouterr().out
    net, _ = load_unet(tmp_path / "o1", name="digits-lw", trust_manifest=True)
    header = (tmp_path / "o1" / "training_curve.csv").read_text().splitlines()[0]
    assert header == "step,train_loss,fid_ddim20_1000,elapsed_s,holdout_bpd"
    assert torch.isfinite(net(torch.zeros(2, *DATA_SHAPE), torch.full((2,), 0.5))).all()
