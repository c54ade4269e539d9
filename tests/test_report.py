"""Report pieces on synthetic results: paired differences, sample grids, labels; where a report may write."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import (DEFAULT_REPORT_DIR, checkpoint_folder, default_out, paired_table, sample_grid,
                          sampler_labels, write_report)
from bench.schema import conform
from bench.store import ResultsStore


def _rows(sampler, offsets, nfe=10, config=None):
    config = config or {"grid": "logSNR"}
    tag = hashlib.sha1(json.dumps(config).encode()).hexdigest()[:8]  # cell ids are file-name tokens
    return [{"cell_id": f"{sampler}-{nfe}-{s}-{tag}", "checkpoint": "x", "sampler": sampler,
             "sampler_config": json.dumps(config), "nfe": nfe, "seed": s, "n_samples": 8, "batch_size": 8,
             "status": "ok", "fid": 20.0 + 5.0 * s + off, "threads": 1, "world_size": 1}
            for s, off in enumerate(offsets)]


def test_paired_difference_resolves_a_consistent_gap_but_not_noise():
    # seed effects (5 * seed) are large; "better" is 1.0 lower on every seed, "noisy" flips sign.
    df = conform(pd.DataFrame(_rows("ddim", [0, 0, 0, 0]) + _rows("better", [-1.0, -1.1, -0.9, -1.0])
                              + _rows("noisy", [2.0, -2.0, 1.5, -1.5])))
    df["label"] = sampler_labels(df)
    labels, nfes, cells, bold = paired_table(df, "fid")
    table = dict(zip(labels, (row[0] for row in cells)))
    assert table["better"].startswith("-1") and table["better"].endswith("✓")
    assert not table["noisy"].endswith("✓")
    assert labels[bold[0]] == "better"


def test_paired_table_needs_the_baseline_and_two_seeds():
    df = conform(pd.DataFrame(_rows("other", [0, 1])))
    df["label"] = sampler_labels(df)
    assert paired_table(df, "fid") is None
    df = conform(pd.DataFrame(_rows("ddim", [0]) + _rows("other", [1])))
    df["label"] = sampler_labels(df)
    assert paired_table(df, "fid") is None


def test_labels_tell_configs_of_one_sampler_apart():
    df = conform(pd.DataFrame(_rows("ddim", [0], config={"eta": 0.0, "grid": "a"})
                              + _rows("ddim", [0], config={"eta": 0.5, "grid": "a"}) + _rows("heun", [0])))
    assert sorted(sampler_labels(df)) == ["ddim[eta=0.0]", "ddim[eta=0.5]", "heun"]


def test_sample_grid_draws_kept_image_samples(tmp_path):
    store = ResultsStore(tmp_path)
    rows = _rows("ddim", [0], nfe=5) + _rows("ddim", [0], nfe=10)
    for r in rows:
        store.save_samples(r["cell_id"], np.random.default_rng(0).uniform(-1, 1, (16, 1, 8, 8)))
    df = conform(pd.DataFrame(rows))
    df["label"] = sampler_labels(df)
    assert sample_grid(df, store, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 2000
    flat = conform(pd.DataFrame(_rows("heun", [0])))
    flat["label"] = sampler_labels(flat)
    store.save_samples(flat["cell_id"][0], np.zeros((16, 2)))  # not images: no grid
    assert not sample_grid(flat, store, tmp_path / "none.png")


def _stored(results, checkpoints, samples=False):
    """Two samplers x two NFE x two seeds per checkpoint, stored through ResultsStore.append."""
    store, rows = ResultsStore(results), []
    for k, ck in enumerate(checkpoints):
        for sampler in ("ddim", "euler"):
            for nfe in (4, 8):
                for seed in (0, 1):
                    rows.append({"cell_id": f"c{k}{sampler}{nfe}s{seed}", "checkpoint": ck, "sampler": sampler,
                                 "sampler_config": "{}", "nfe": nfe, "seed": seed, "n_samples": 16,
                                 "batch_size": 16, "status": "ok", "solver_error_median": 1.0 / nfe + 0.01 * seed,
                                 "threads": 1, "world_size": 1})
                    if samples:
                        store.save_samples(rows[-1]["cell_id"], np.zeros((16, 1, 4, 4)))
    store.append(rows)
    return rows


def _files(root):
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_hostile_checkpoint_names_write_nothing_outside_out(tmp_path):
    results, out = tmp_path / "results", tmp_path / "a" / "b" / "out"
    hostile = ["..", "../../escaped", str(tmp_path / "absolute"), "hub:../../x", "hub:/etc/passwd", "a/b", "x\x00y",
               "", ".hidden", "gmm-2d"]
    _stored(results, hostile, samples=True)
    before = _files(tmp_path) - _files(results)
    written = write_report(results, out)
    assert _files(tmp_path) - _files(results) - before == _files(out) == set(written)
    assert all(p.resolve().is_relative_to(out.resolve()) for p in written)
    folders = sorted(p for p in out.iterdir())
    assert len(folders) == len(hostile) and all(p.is_dir() and p.parent == out for p in folders)
    assert all(not p.name.startswith(".") and len(p.name) <= 100 for p in folders)
    assert (out / "gmm-2d" / "README.md").exists()  # a plain name keeps its folder (reports/digits)
    for folder in folders:
        assert {p.name for p in folder.iterdir()} >= {"README.md", "metrics.png", "solver_error_median.md",
                                                       "solver_error_median_paired.md", "samples.png"}
    titles = {(f / "README.md").read_text().splitlines()[0] for f in folders}
    assert titles == {f"# {ck}" for ck in hostile}


def test_checkpoint_folder_is_the_name_when_plain_and_a_safe_token_otherwise():
    plain = ["digits", "gmm-16d", "cifar10_v2.1"]
    assert [checkpoint_folder(n) for n in plain] == plain
    for name in ("..", ".", "", "a/b", "/etc/x", "hub:../../x", "x\x00y", "C:\\x", "é", "-rf", "a" * 300):
        folder = checkpoint_folder(name)
        assert folder and folder not in (".", "..") and not folder.startswith((".", "-"))
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in folder) and len(folder) <= 60
    assert checkpoint_folder("a/b") != checkpoint_folder("a_b") != checkpoint_folder("a:b")


def test_a_symlink_out_of_the_report_folder_is_refused(tmp_path):
    results, out, elsewhere = tmp_path / "results", tmp_path / "out", tmp_path / "elsewhere"
    _stored(results, ["gmm-2d"])
    out.mkdir()
    elsewhere.mkdir()
    (out / "gmm-2d").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match=r"resolves to .*elsewhere.*, outside the report folder"):
        write_report(results, out)
    assert not any(elsewhere.iterdir())
    _stored(results / "two", ["a-first", "gmm-2d"])  # checked before the first checkpoint's files are written
    with pytest.raises(ValueError, match="outside the report folder"):
        write_report(results / "two", out)
    assert sorted(p.name for p in out.iterdir()) == ["gmm-2d"] and not any(elsewhere.iterdir())


def test_checkpoints_that_would_share_a_folder_are_refused(tmp_path):
    _stored(tmp_path / "results", ["gmm-2d", "GMM-2D"])
    with pytest.raises(ValueError, match="would share the report folder"):
        write_report(tmp_path / "results", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_default_report_folder_is_inside_the_results_not_the_committed_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stored(tmp_path / "results", ["gmm-2d"])
    assert default_out("results") == Path("results") / DEFAULT_REPORT_DIR
    written = write_report("results")
    assert written and all(p.is_relative_to(Path("results") / "reports" / "gmm-2d") for p in written)
    assert not (tmp_path / "reports").exists()


def test_no_results_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for results in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(ValueError, match=f"^no results in {results}; run `python -m bench run --results "
                                             f"{results}` first$"):
            write_report(results, tmp_path / "out")
    with pytest.raises(ValueError, match="is a file, not a results folder"):
        write_report(tmp_path / "file", tmp_path / "out")
    _stored(tmp_path / "results", ["gmm-2d"])
    with pytest.raises(ValueError, match="report --out .* is a file"):
        write_report(tmp_path / "results", tmp_path / "file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "missing").exists()
