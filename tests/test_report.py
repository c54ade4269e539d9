"""Report pieces on synthetic results: paired differences, sample grids, labels."""
import json

import numpy as np
import pandas as pd

from bench.report import paired_table, sample_grid, sampler_labels
from bench.schema import conform
from bench.store import ResultsStore


def _rows(sampler, offsets, nfe=10, config=None):
    config = config or {"grid": "logSNR"}
    return [{"cell_id": f"{sampler}-{nfe}-{s}-{json.dumps(config)}", "checkpoint": "x", "sampler": sampler,
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
