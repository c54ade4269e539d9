"""FD on DINOv2 features: the local loading path (a torch.hub repository folder and a weights file, both local,
sha256-pinned, read with weights_only=True) with a small stand-in network the test builds, torch-fidelity's
preprocessing kept, and a clear error for each thing that is missing."""
import hashlib
import re
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

import pretrained
from bench.metrics import features
from bench.metrics import fid as fidmod
from bench.metrics import reference_sets as rs

NAME = "dinov2-vit-s-14"
HUBCONF = textwrap.dedent('''
    import torch

    class Tiny(torch.nn.Module):  # stands in for ViT-S/14: (B, 3, 224, 224) -> (B, 384)
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 14, stride=14)
            self.head = torch.nn.Linear(8, 384)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))

    def dinov2_vits14(*, pretrained=True, **kwargs):
        if pretrained:
            raise RuntimeError("the test's stand-in must be built with pretrained=False (nothing downloaded)")
        return Tiny()
''')


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A local 'repository' with hubconf.py and a weights file; the environment points at them, the pin matches."""
    repo = tmp_path / "dinov2"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    ns = {}
    exec(HUBCONF, ns)
    torch.manual_seed(0)
    net = ns["dinov2_vits14"](pretrained=False)
    weights = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(net.state_dict(), str(weights))
    monkeypatch.setenv(features.DINOV2_REPO_ENV, str(repo))
    monkeypatch.setenv(features.DINOV2_WEIGHTS_ENV, str(weights))
    monkeypatch.setitem(features.DINOV2_SHA256, NAME, hashlib.sha256(weights.read_bytes()).hexdigest())
    return net.eval(), weights


def _images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_features_are_torch_fidelity_preprocessing_then_the_network(stand_in):
    net, _ = stand_in
    spec = features.spec_by_name(NAME)
    assert (spec.dim, spec.layer, spec.rgb) == (384, "dinov2", True)
    ext = features.create_extractor(spec, "cpu")
    x = _images(5)
    got = ext(x)[0]
    # torch-fidelity's FeatureExtractorDinoV2.forward, written out: resize to 224 as TF1 did, ImageNet normalisation.
    y = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(224, 224), align_corners=False)
    y = torchvision.transforms.functional.normalize(y, (255 * 0.485, 255 * 0.456, 255 * 0.406),
                                                    (255 * 0.229, 255 * 0.224, 255 * 0.225))
    with torch.no_grad():
        assert torch.allclose(got, net(y), atol=1e-6) and got.shape == (5, 384)


def test_fd_against_a_reference_read_with_dinov2(stand_in, tmp_path):
    images = _images(40, seed=1).numpy()
    np.savez(tmp_path / "ref.npz", images=images)
    ref = rs.open_reference(tmp_path / "ref.npz", NAME)
    assert ref.extractor == NAME and ref.key.endswith(f"-{NAME}")  # not the key of the same images read by Inception
    ck = pretrained.load("digits")
    acc = fidmod.FidAccumulator(ck, spec=fidmod.reference_spec(ck, ref))
    acc.update_images(torch.from_numpy(images), range(40))
    same = fidmod.fid_kid_from_state(acc.state(), ck, cache_dir=tmp_path / "cache", reference=ref)
    assert abs(same["fid"]) < 1e-3 and same["precision"] == same["recall"] == 1.0
    other = fidmod.FidAccumulator(ck, spec=fidmod.reference_spec(ck, ref))
    other.update_images(torch.from_numpy(images // 2), range(40))
    assert fidmod.fid_kid_from_state(other.state(), ck, cache_dir=tmp_path / "cache", reference=ref)["fid"] > 1e-2


def test_unpinned_model_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setitem(features.DINOV2_SHA256, NAME, None)
    with pytest.raises(features.DinoV2WeightsError, match="no sha256 is pinned"):
        features.create_extractor(features.spec_by_name(NAME), "cpu")


def test_shipped_pins_are_none_or_sha256():
    assert set(features.DINOV2_SHA256) == set(features.DINOV2_DIMS)
    assert all(v is None or re.fullmatch("[0-9a-f]{64}", v) for v in features.DINOV2_SHA256.values())


def test_missing_repository_or_weights_say_how_to_get_them(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv(features.DINOV2_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(FileNotFoundError, match="weights not found.*dl.fbaipublicfiles.com/dinov2/dinov2_vits14"):
        features.dinov2_sources(NAME)
    monkeypatch.setenv(features.DINOV2_REPO_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no DINOv2 repository"):
        features.dinov2_sources(NAME)


def test_other_weights_and_pickles_are_refused(stand_in, tmp_path, monkeypatch):
    _, weights = stand_in
    weights.write_bytes(weights.read_bytes() + b"\0")  # not the pinned file
    with pytest.raises(features.DinoV2WeightsError, match="sha256"):
        features.create_extractor(features.spec_by_name(NAME), "cpu")
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return open, (str(marker), "w")
    torch.save({"w": Planted()}, str(weights))
    monkeypatch.setitem(features.DINOV2_SHA256, NAME, hashlib.sha256(weights.read_bytes()).hexdigest())
    with pytest.raises(features.DinoV2WeightsError, match="weights_only"):
        features.create_extractor(features.spec_by_name(NAME), "cpu")
    assert not marker.exists()


def test_cli_offers_every_extractor():
    from bench.cli import build_parser
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
                  if a.dest == "fid_extractor")
    assert set(action.choices) == {"auto", *features.EXTRACTORS}


@pytest.mark.parametrize("pinned, says", [(False, "no sha256 is pinned"), (True, "DINOv2 weights not found")])
def test_run_stops_before_the_first_cell(stand_in, tmp_path, monkeypatch, capsys, pinned, says):
    from bench.cli import main
    if not pinned:
        monkeypatch.setitem(features.DINOV2_SHA256, NAME, None)
    monkeypatch.setenv(features.DINOV2_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    np.savez(tmp_path / "ref.npz", images=_images(8)[:, 0].numpy())
    rc = main(["run", "--checkpoint", "digits", "--sampler", "ddim", "--nfe", "3", "--n-samples", "8", "--seeds", "0",
               "--quiet", "--fid-ref", str(tmp_path / "ref.npz"), "--fid-extractor", NAME,
               "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err and not (tmp_path / "r").exists(), err
