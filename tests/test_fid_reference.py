"""--fid-ref: a folder of images, an .npz of uint8 images and precomputed statistics (mu, sigma) give FID in the
rows, the same value for the same content, named by content hash; bad reference sets are one line, exit 2, nothing
written; nothing is ever unpickled."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.metrics import features
from bench.metrics import fid as fidmod
from bench.metrics import reference_sets as rs
from bench.store import ResultsStore
from pretrained.data import digits_split

# a py: checkpoint of 1x8x8 without data of its own (tests/py_factories.py): FID only through --fid-ref
RUN = ["run", "--checkpoint", "py:py_factories:edm_gray", "--sampler", "euler", "--nfe", "3", "--n-samples", "16",
       "--seeds", "0", "--quiet"]
N_REF = 40


@pytest.fixture(scope="module")
def images():
    """The first 40 digits of the reference split as uint8 (N, 1, 8, 8)."""
    return features.to_uint8(digits_split("reference")[0][:N_REF]).numpy()


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, a in enumerate(images):
        Image.fromarray(a[0]).save(folder / f"{i:04d}.png")
    (folder / "dataset.json").write_text("{}")  # a sidecar file: not an image, not read
    return folder


def write_stats(path, images, **extra):
    """EDM's `fid.py ref` layout: np.savez(path, mu=mu, sigma=sigma), from our digits features of ``images``."""
    acc = fidmod.FidAccumulator(None, spec=features.spec_by_name(features.FID_EXTRACTOR))
    acc.update_images(torch.from_numpy(images), range(len(images)))
    st = fidmod._statistics(acc.state())
    np.savez(path, mu=st["mu"], sigma=st["sigma"], **extra)
    return path


@pytest.fixture(scope="module")
def refs(tmp_path_factory, images):
    t = tmp_path_factory.mktemp("refs")
    np.savez(t / "nhw.npz", images[:, 0])               # (N, H, W), under arr_0
    np.savez(t / "nchw.npz", images=images)             # (N, C, H, W)
    np.save(t / "nhwc.npy", images.transpose(0, 2, 3, 1))  # (N, H, W, C), memory-mapped when read
    return {"folder": write_folder(t / "folder", images), "npz": t / "nhw.npz", "npz-nchw": t / "nchw.npz",
            "npy-nhwc": t / "nhwc.npy",
            "statistics": write_stats(t / "stats.npz", images, n=np.int64(N_REF))}


def test_the_same_images_have_the_same_name_in_any_container(refs):
    names = {kind: rs.open_reference(refs[kind]) for kind in ("folder", "npz", "npz-nchw", "npy-nhwc")}
    assert len({r.digest for r in names.values()}) == 1
    assert all(r.n == N_REF and r.shape == (1, 8, 8) and r.extractor == features.FID_EXTRACTOR
               for r in names.values())
    stats = rs.open_reference(refs["statistics"])
    assert stats.kind == "statistics" and stats.dim == 64 and stats.n == N_REF and stats.digest != names["npz"].digest


def test_run_report_check_with_each_kind_of_reference(tmp_path, refs):
    """Folder, .npz and statistics of the same images: FID in every row, the reference named, equal values."""
    rows = {}
    for kind in ("folder", "npz", "statistics"):
        r = tmp_path / kind
        assert main([*RUN, "--fid-ref", str(refs[kind]), "--results", str(r)]) == 0
        rows[kind] = ResultsStore(r).read().iloc[0]
        assert rows[kind]["status"] == "ok" and rows[kind]["fid_extractor"] == features.FID_EXTRACTOR
        assert rows[kind]["fid_ref"] == rs.open_reference(refs[kind]).key
        assert main(["report", "--results", str(r), "--out", str(tmp_path / f"rep-{kind}")]) == 0
        assert main(["baseline", "--results", str(r), "--out", str(tmp_path / f"{kind}.csv")]) == 0
        assert main(["check", "--baseline", str(tmp_path / f"{kind}.csv"), "--results", str(r)]) == 0
    assert rows["folder"]["fid_ref"] == rows["npz"]["fid_ref"] and rows["folder"]["fid"] == rows["npz"]["fid"]
    assert rows["statistics"]["fid"] == pytest.approx(rows["npz"]["fid"], rel=1e-6)
    assert rows["npz"]["fid_ref_n"] == N_REF and np.isfinite(rows["npz"]["kid"]) and np.isnan(rows["statistics"]["kid"])
    # The reference is part of the cell: without --fid-ref it is another cell (here: no data, so no FID).
    assert main([*RUN, "--results", str(tmp_path / "npz")]) == 0
    df = ResultsStore(tmp_path / "npz").read()
    assert len(df) == 2 and df["fid"].isna().sum() == 1 and df["fid_ref"].isna().sum() == 1


def test_reference_statistics_are_cached_by_content(tmp_path, refs, monkeypatch):
    ck = __import__("pretrained").load("digits")
    ref = rs.open_reference(refs["npz"])
    x = digits_split("holdout")[0][:32]
    first = fidmod.fid_kid(x, ck, cache_dir=tmp_path)  # the checkpoint's own reference
    acc = fidmod.FidAccumulator(ck, spec=fidmod.reference_spec(ck, ref))
    acc.update(x, range(len(x)))
    a = fidmod.fid_kid_from_state(acc.state(), ck, cache_dir=tmp_path, reference=ref)
    assert fidmod.reference_cache_path(ck, tmp_path, ref).is_file() and a["fid"] != first["fid"]
    monkeypatch.setattr(rs, "image_batches", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    again = fidmod.fid_kid_from_state(acc.state(), ck, cache_dir=tmp_path, reference=ref)
    assert again == pytest.approx(a, rel=0, abs=0, nan_ok=True)


def test_a_reference_changed_after_validation_is_refused(tmp_path, images):
    np.savez(tmp_path / "ref.npz", images=images)
    ref = rs.open_reference(tmp_path / "ref.npz")
    np.savez(tmp_path / "ref.npz", images=255 - images)
    with pytest.raises(ValueError, match="changed since it was validated"):
        list(rs.image_batches(ref))


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _bad(t, case, images):
    """A reference path broken in one way; returns (path, extra argv)."""
    if case == "pickle file":
        (t / "ref.pkl").write_bytes(pickle.dumps({"mu": Planted(t / "pwned")}))
        return t / "ref.pkl", []
    if case == "pickle named npz":
        (t / "ref.npz").write_bytes(pickle.dumps({"mu": Planted(t / "pwned")}))
        return t / "ref.npz", []
    if case == "object array":
        np.savez(t / "ref.npz", mu=np.array([Planted(t / "pwned")], dtype=object), sigma=np.eye(1))
        return t / "ref.npz", []
    if case == "float images":
        np.savez(t / "ref.npz", images=images.astype(np.float32) / 127.5 - 1)
        return t / "ref.npz", []
    if case == "too few images":
        np.savez(t / "ref.npz", images=images[:3])
        return t / "ref.npz", []
    if case == "images of another shape":
        np.savez(t / "ref.npz", images=np.zeros((8, 16, 16, 3), np.uint8))
        return t / "ref.npz", ["--fid-extractor", "inception-v3-compat"]
    if case == "mixed shapes":
        folder = write_folder(t / "imgs", images[:6])
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "9999.png")
        return folder, []
    if case == "non-finite statistics":
        np.savez(t / "ref.npz", mu=np.full(64, np.nan), sigma=np.eye(64))
        return t / "ref.npz", []
    if case == "statistics of unknown dimension":
        np.savez(t / "ref.npz", mu=np.zeros(10), sigma=np.eye(10))
        return t / "ref.npz", []
    if case == "statistics for another extractor":
        np.savez(t / "ref.npz", mu=np.zeros(64), sigma=np.eye(64))
        return t / "ref.npz", ["--fid-extractor", "inception-v3-compat"]
    if case == "asymmetric sigma":
        np.savez(t / "ref.npz", mu=np.zeros(64), sigma=np.triu(np.ones((64, 64))))
        return t / "ref.npz", []
    if case == "missing":
        return t / "nowhere.npz", []
    if case == "no images in the npz":
        np.savez(t / "ref.npz", labels=np.arange(4))
        return t / "ref.npz", []
    raise AssertionError(case)


BAD_REFS = {
    "pickle file": "a .pkl file is a pickle, which is never loaded",
    "pickle named npz": "holds pickled data, which is never loaded",
    "object array": "holds Python objects (pickle), which are never loaded",
    "float images": "images are float32; expected uint8",
    "too few images": "3 images; FID needs at least 4",
    "images of another shape": "images of shape (3, 16, 16), but checkpoint 'py:py_factories:edm_gray' samples "
                               "(1, 8, 8)",
    "mixed shapes": "images differ in shape",
    "non-finite statistics": "mu or sigma has non-finite values",
    "statistics of unknown dimension": "statistics of dimension 10 match no feature extractor; allowed:",
    "statistics for another extractor": "statistics of dimension 64, but inception-v3-compat gives 2048-d",
    "asymmetric sigma": "sigma is not symmetric",
    "missing": "no such file or folder",
    "no images in the npz": "holds ['labels']; expected images under one of",
}


@pytest.mark.parametrize("case", sorted(BAD_REFS))
def test_bad_reference_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, images, case):
    path, extra = _bad(tmp_path, case, images)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    rc = main([*RUN, "--fid-ref", str(path), *extra, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and BAD_REFS[case] in err, err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("argv, says", [
    (["--checkpoint", "gmm-2d", "--fid-ref", "REF"], "checkpoint 'gmm-2d' has data of shape (2,), not images"),
    (["--fid-extractor", "inception-v3-compat"], "--fid-extractor inception-v3-compat: needs --fid-ref"),
])
def test_reference_against_the_run(tmp_path, capsys, images, argv, says):
    np.savez(tmp_path / "ref.npz", images=images)
    argv = [str(tmp_path / "ref.npz") if a == "REF" else a for a in argv]
    rc = main([*RUN, *argv, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says in err and not (tmp_path / "r").exists(), err
