"""The digits checkpoint: data split, weights checksum, model boundary, reference solution and sample FID."""
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torchdiffeq import odeint

import pretrained
import samplers
from bench.metrics.fid import fid_kid
from pretrained import data
from pretrained.digits import DATA_SHAPE, as_model
from pretrained.nets import UNet
from pretrained.weights import WEIGHTS_ROOT, file_sha256, load_weights, read_manifest

FOLDER = WEIGHTS_ROOT / "digits"
# Sample-FID gate, DDIM 20 NFE at 500 samples (measured, manifest "evaluation"): floor (holdout vs reference,
# n = 300) 30.5; the shipped model 17.8-32.2 over 5 seeds (23.8 on seed 0);
# 82 for the EMA at step 600 (training curve, n = 1000); random weights 676-756. Floor + 20 leaves 18 above
# the worst seed and fails a half-trained model.
FID_N, FID_MARGIN = 500, 20.0


@pytest.fixture(scope="module")
def ck():
    return pretrained.load("digits")


def test_split_is_disjoint_and_fixed():
    idx = data.split_indices()
    all_idx = torch.cat([torch.as_tensor(idx[s]) for s in data.SPLITS])
    assert sorted(all_idx.tolist()) == list(range(1797))
    assert (len(idx["reference"]), len(idx["holdout"]), len(idx["train"])) == (300, 300, 1197)
    assert read_manifest(FOLDER)["split_sha256"] == data.split_sha256()
    assert read_manifest(WEIGHTS_ROOT / "digits_features")["split_sha256"] == data.split_sha256()
    x, y = data.digits_split("holdout")
    assert x.shape == (300, *DATA_SHAPE) and x.min() == -1 and x.max() == 1 and y.shape == (300,)


def test_checksum_rejects_modified_weights(tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(FOLDER, folder)
    expected = read_manifest(folder)["weights_sha256"]
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(raw))
    actual = file_sha256(folder / "model.safetensors")
    with pytest.raises(ValueError, match=f"model.safetensors: sha256 is {actual}.*expects {expected}"):
        load_weights(folder)


def test_model_boundary_matches_raw_net(ck):
    manifest = read_manifest(FOLDER)
    net = UNet(**manifest["architecture"]["config"])
    net.load_state_dict(load_file(str(FOLDER / "model.safetensors")))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, *DATA_SHAPE, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        raw = net.eval()(x.float(), t.float()).double()
    with ck.model.counting() as c:
        eps = ck.model.eps(x, t)
    assert c.n == 1 and eps.dtype == torch.float64
    torch.testing.assert_close(eps, raw, rtol=0, atol=1e-6)
    assert ck.model.prediction == manifest["prediction"] == "eps" and ck.data_shape == DATA_SHAPE


def test_real_data_is_the_reference_split(ck):
    ref = data.digits_split("reference")[0]
    x = ck.real_data(300, 3)
    assert sorted(map(tuple, x.flatten(1).tolist())) == sorted(map(tuple, ref.flatten(1).tolist()))
    with pytest.raises(ValueError, match="300 images"):
        ck.real_data(301, 0)


def test_reference_solution_agrees_with_adaptive_solver(ck):
    """Heun-500 reference vs torchdiffeq dopri5 (rtol = atol = 1e-6) on the PF-ODE in t.

    Against dopri8 at 1e-8 (16 samples) these are 9e-4 and 2.7e-3 off (max abs); DDIM at 50 NFE is 0.14 off."""
    x_T = samplers.initial_noise(5, range(2), DATA_SHAPE)
    ref = ck.reference_solution(x_T, samplers.VP_T_END)
    model, sch = as_model(ck.extras["net"]), ck.model.schedule

    def velocity(t, x):  # dx/dt = f x - g^2 score / 2 = f x + g^2 eps / (2 sigma)
        f, g2 = sch.drift_diffusion(t)
        return f * x + 0.5 * g2 / sch.sigma(t) * model.eps(x, t)

    ts = torch.tensor([1.0, samplers.VP_T_END], dtype=torch.float64)
    adaptive = odeint(velocity, x_T, ts, method="dopri5", rtol=1e-6, atol=1e-6, options={"step_t": ts[1:]})[-1]
    assert (ref - adaptive).abs().max() < 1e-2
    assert (samplers.get("ddim").sample(model, x_T, 10) - adaptive).abs().max() > 5e-2  # a coarse solve fails
    assert ck.reference_exact is False


def test_sample_fid_below_floor_plus_margin(ck, tmp_path):
    floor = fid_kid(data.digits_split("holdout")[0], ck, cache_root=str(tmp_path), kid_subsets=5)["fid"]
    x_T = samplers.initial_noise(0, range(FID_N), DATA_SHAPE)
    good = fid_kid(samples := samplers.get("ddim").sample(ck.model, x_T, 20), ck, cache_root=str(tmp_path),
                   kid_subsets=5)["fid"]
    assert samples.shape == (FID_N, *DATA_SHAPE)
    assert good < floor + FID_MARGIN, (good, floor)
    torch.manual_seed(0)
    broken = fid_kid(samplers.get("ddim").sample(as_model(UNet()), x_T, 20), ck, cache_root=str(tmp_path),
                     kid_subsets=5)["fid"]
    assert broken > floor + FID_MARGIN, (broken, floor)


def test_recipe_output_loads_only_when_trusted(tmp_path, capsys):
    """A retrained feature net (recipe --out) is not the pinned one: refused by default, loaded when trusted."""
    from pretrained.digits import load_feature_net
    from pretrained.train import main

    main(["features", "--out", str(tmp_path / "features"), "--epochs", "1"])
    sha = read_manifest(tmp_path / "features")["weights_sha256"]
    assert f"expected_sha256='{sha}'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="pin of 'digits_features'"):
        load_feature_net(tmp_path / "features")
    net, manifest = load_feature_net(tmp_path / "features", trust_manifest=True)
    assert manifest["epochs"] == 1 and net.fc.weight.shape == (64, 256)
    assert load_feature_net(tmp_path / "features", expected_sha256=sha)[1]["weights_sha256"] == sha
