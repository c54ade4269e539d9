"""py:module:factory: a network written in Python enters run, report and check; its code runs only when such a name
is loaded; its real data is its FID reference (Inception for RGB, here a verified stand-in of its weights); bad names
and factories are one line, exit 2, nothing written."""
import hashlib
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

import pretrained
import py_factories
from bench.cli import main
from bench.metrics import features
from bench.store import ResultsStore
from pretrained import pysource


@pytest.fixture(scope="module")
def stand_in_inception(tmp_path_factory):
    """Randomly initialised weights of torch-fidelity's Inception (the real ones cannot be fetched here)."""

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    torch.manual_seed(0)
    state = Skeleton(features.INCEPTION, [features.INCEPTION_LAYER], feature_extractor_weights_path=empty).state_dict()
    path = tmp_path_factory.mktemp("inception") / features.INCEPTION_FILE
    torch.save(state, str(path))
    return path


@pytest.fixture
def inception(stand_in_inception, monkeypatch):
    monkeypatch.setattr(features, "INCEPTION_SHA256", hashlib.sha256(stand_in_inception.read_bytes()).hexdigest())
    monkeypatch.setenv(features.INCEPTION_ENV, str(stand_in_inception))


def test_naming_a_py_checkpoint_imports_nothing_until_it_is_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "py_factories")
    e = pretrained.validate("py:py_factories:edm_gray")
    assert e.name == "py:py_factories:edm_gray" and "py_factories" not in sys.modules
    ck = pysource.load_python("py_factories:edm_gray")
    assert "py_factories" in sys.modules and ck.model.name == "py:py_factories:edm_gray"
    assert ck.model.schedule.family == "edm" and ck.extras["factory"] == "edm_gray"


def test_rgb_factory_with_data_runs_report_and_check_with_inception_fid(tmp_path, inception):
    r = tmp_path / "r"
    base = ["run", "--checkpoint", "py:py_factories:flow_rgb", "--sampler", "euler", "--nfe", "3", "--n-samples", "4",
            "--seeds", "0", "--results", str(r), "--quiet"]
    assert main(base) == 0  # FID against the factory's own data
    folder = tmp_path / "rgb"
    folder.mkdir()
    data = py_factories.flow_rgb("cpu")[1]
    for i, a in enumerate(features.to_uint8(data).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(a).save(folder / f"{i}.png")
    assert main([*base, "--fid-ref", str(folder)]) == 0  # the same images as a folder: another cell, the same FID
    df = ResultsStore(r).read()
    assert (df["status"] == "ok").all() and df["fid"].notna().all()
    assert (df["fid_extractor"] == features.INCEPTION).all()
    own, ref = df[df["fid_ref"].isna()].iloc[0], df[df["fid_ref"].notna()].iloc[0]
    assert ref["fid_ref"].startswith("fidref-") and own["fid_ref_n"] == ref["fid_ref_n"] == 8
    assert ref["fid"] == pytest.approx(own["fid"], rel=1e-4)  # reference sets in another order: same statistics
    assert np.isfinite(own["solver_error_mean"])
    assert main(["report", "--results", str(r), "--out", str(tmp_path / "rep")]) == 0
    assert main(["baseline", "--results", str(r), "--out", str(tmp_path / "b.csv")]) == 0
    assert main(["check", "--baseline", str(tmp_path / "b.csv"), "--results", str(r)]) == 0


def test_fingerprint_follows_the_weights(monkeypatch):
    a = pysource.load_python("py_factories:edm_gray").fingerprint
    assert pysource.load_python("py_factories:edm_gray").fingerprint == a
    net = py_factories._net

    def perturbed(channels):  # the same code, other weights
        module = net(channels)
        with torch.no_grad():
            module.bias.add_(1e-3)
        return module

    monkeypatch.setattr(py_factories, "_net", perturbed)
    assert pysource.load_python("py_factories:edm_gray").fingerprint != a


def test_readme_example_factory():
    ck = pysource.load_python("examples.my_model:build")
    assert ck.model.prediction == "velocity" and ck.data_shape == (1, 8, 8)
    assert ck.extras["fid"] == "auto" and ck.extras["fid_reference"][1] == 300
    assert ck.real_data(5, 0).shape == (5, 1, 8, 8)


@pytest.mark.parametrize("name, says", [
    ("py:not a module", "expected py:package.module:factory"),
    ("py:examples.my_model", "expected py:package.module:factory"),
    ("py:no_such_module_xyz:build", "no module 'no_such_module_xyz'"),
    ("py:examples.my_model:nothing", "module 'examples.my_model' has no function 'nothing'"),
    ("py:py_factories:not_a_model", "the factory returned str; expected a samplers.DiffusionModel"),
    ("py:py_factories:bad_data", "real data of shape (4, 3, 8, 8); expected (N >= 2, 1, 8, 8)"),
])
def test_bad_py_names_and_factories_are_one_line_exit_2(tmp_path, capsys, name, says):
    rc = main(["run", "--checkpoint", name, "--sampler", "euler", "--nfe", "3", "--n-samples", "4", "--seeds", "0",
               "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "r").exists()


def test_grayscale_reference_read_with_inception_when_asked(tmp_path, inception):
    """--fid-extractor inception-v3-compat on 1x8x8: samples and reference images both repeated to RGB."""
    images = (np.arange(8 * 64, dtype=np.int64).reshape(8, 8, 8) * 7 % 256).astype(np.uint8)
    np.savez(tmp_path / "ref.npz", images=images)
    assert main(["run", "--checkpoint", "py:py_factories:edm_gray", "--sampler", "euler", "--nfe", "3", "--n-samples",
                 "4", "--seeds", "0", "--fid-ref", str(tmp_path / "ref.npz"), "--fid-extractor", features.INCEPTION,
                 "--results", str(tmp_path / "r"), "--quiet"]) == 0
    row = ResultsStore(tmp_path / "r").read().iloc[0]
    assert row["status"] == "ok" and np.isfinite(row["fid"]) and row["fid_extractor"] == features.INCEPTION
