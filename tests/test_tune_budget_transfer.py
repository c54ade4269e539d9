"""`bench tune`: --budget in cells or time, the paired interval on hand-computed values, and presets transferred to
another checkpoint (fitted times mapped by log-SNR fraction)."""
import json
import math

import pytest
import torch

import pretrained
import samplers
from bench import tune
from bench.cli import main
from bench.preflight import parse_budget
from bench.store import ResultsStore

SMALL = dict(tune_samples=8, val_seeds=3, val_samples=8, top=1, gammas=(1.0,))


# -- --budget ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("200", (200, None)), ("2", (2, None)), ("30m", (None, 1800.0)),
                                       ("90s", (None, 90.0)), ("1.5h", (None, 5400.0)), (" 10m ", (None, 600.0))])
def test_budget_is_cells_or_a_time(text, want):
    assert parse_budget(text) == want


@pytest.mark.parametrize("text", ["1", "0", "2.5", "-5", "abc", "10min", "0m", "1e3", "", "m"])
def test_bad_budget_is_one_line_exit_2_naming_what_is_allowed(tmp_path, capsys, text):
    with pytest.raises(ValueError, match="allowed: a number of trial cells"):
        parse_budget(text)
    code = main(["tune", "--checkpoint", "gmm-2d", "--budget", text, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--budget" in err and "30m" in err, err
    assert not (tmp_path / "r").exists()


def test_time_budget_stops_the_screen_and_reruns_as_a_cell_budget(tmp_path, gmm2d):
    """A time budget too small for more than one chunk screens one chunk; its preset records the cell budget that
    reruns the same search, and that rerun on the same folder computes no new cell and picks the same winner."""
    method = [samplers.get("unipc_bh1_3")]
    timed = tune.TuneSettings("gmm-2d", [5], ["unipc_bh1_3"], results=str(tmp_path), budget=None,
                              budget_s=1e-6, **SMALL)
    first = tune.run_tune(timed, gmm2d, method)[0]
    assert first["screen_trials"] == tune.SCREEN_CHUNK < len(tune.search_space(method[0], 5))
    rec = json.loads(open(first["preset"]).read())
    assert rec["search"]["budget_s"] == 1e-6 and rec["search"]["screen_trials"] == tune.SCREEN_CHUNK
    n = rec["search"]["cells_budget_equivalent"]
    stored = len(ResultsStore(tmp_path).read())
    counted = tune.TuneSettings("gmm-2d", [5], ["unipc_bh1_3"], results=str(tmp_path), budget=n, **SMALL)
    search = tune.Search(counted, gmm2d, method)
    again = search.tune(method[0], 5)
    assert search.cells_run == 0 and len(ResultsStore(tmp_path).read()) == stored
    assert again["tuned_options"] == first["tuned_options"] and again["tuned_times"] == first["tuned_times"]


# -- the paired interval ------------------------------------------------------------------------------------------
def test_paired_interval_on_hand_computed_values():
    # d = default - tuned = [2, 3, 2]: mean 7/3, sd sqrt(1/3), half width t(0.975, 2 dof) 4.303 * sd / sqrt(3)
    p = tune.paired([3.0, 5.0, 4.0], [1.0, 2.0, 2.0])
    half = 4.303 * math.sqrt(1 / 3) / math.sqrt(3)
    assert p["n"] == 3 and p["diff_mean"] == pytest.approx(7 / 3, rel=1e-12)
    assert p["ci95"] == pytest.approx([7 / 3 - half, 7 / 3 + half], rel=1e-12)
    assert p["ci95"][0] == pytest.approx(0.89900, abs=1e-5) and p["resolved"]
    assert p["ratio"] == pytest.approx(4.0 / (5 / 3), rel=1e-12)
    # d = [1, -1, 2, 0]: mean 0.5, sd sqrt(5/3), 3 dof (3.182): the interval holds 0
    q = tune.paired([2.0, 1.0, 4.0, 3.0], [1.0, 2.0, 2.0, 3.0])
    h = 3.182 * math.sqrt(5 / 3) / 2
    assert q["ci95"] == pytest.approx([0.5 - h, 0.5 + h], rel=1e-12) and not q["resolved"]
    one = tune.paired([2.0], [1.0])
    assert one["n"] == 1 and not one["resolved"] and all(math.isnan(x) for x in one["ci95"])
    # 17 dof is not in the table: the next smaller key's larger t (16 -> 15: 2.131), never too narrow
    r = tune.paired([float(i % 3) for i in range(18)], [0.0] * 18)
    sd = torch.tensor([float(i % 3) for i in range(18)], dtype=torch.float64).std().item()
    assert r["ci95"][1] - r["diff_mean"] == pytest.approx(2.131 * sd / math.sqrt(18), rel=1e-9)


# -- transfer -------------------------------------------------------------------------------------------------------
def test_map_times_keeps_a_schedule_and_maps_log_snr_fractions_onto_another():
    vp = pretrained.load("gmm-2d").model.schedule
    edm = pretrained.load("gmm-2d-edm").model.schedule
    flow = pretrained.load("gmm-2d-flow").model.schedule
    ts = [vp.T, 0.6, 0.3, 0.05, vp.t_end]
    assert tune.map_times(ts, vp, vp) == ts  # the same schedule: unchanged
    lam = vp.lambda_(torch.tensor(ts, dtype=torch.float64))
    u = (lam - lam[0]) / (lam[-1] - lam[0])
    for target in (edm, flow):
        out = tune.map_times(ts, vp, target)
        assert out[0] == target.T and out[-1] == target.t_end
        assert all(a > b for a, b in zip(out, out[1:]))
        lt = target.lambda_(torch.tensor(out, dtype=torch.float64))
        assert ((lt - lt[0]) / (lt[-1] - lt[0])).tolist() == pytest.approx(u.tolist(), abs=1e-9)


def test_transfer_runs_default_and_tuned_on_another_checkpoint(tmp_path, capsys):
    """A fitted preset of gmm-2d through `tune --transfer` on gmm-2d-edm: both configurations run on the same held-out
    seeds, the per-seed errors are the store's rows, and a rerun computes nothing."""
    vp = pretrained.load("gmm-2d").model.schedule
    ts = [float(t) for t in samplers.grids.time_grid(vp, "logSNR", 5)]
    ts[2] = 0.5 * (ts[1] + ts[3])  # not a grid the target has
    rec = {"format": tune.PRESET_FORMAT, "name": "fitted-x", "base": "unipc", "nfe": 5, "checkpoint": "gmm-2d",
           "fingerprint": "", "times": ts, "search": {"started_from": "unipc_bh1_3"},
           "options": {**samplers.get("unipc_bh1_3").options, "grid": samplers.grids.register_times(ts),
                       "t_end": ts[-1]}}
    path = tmp_path / "fitted-x.json"
    path.write_text(json.dumps(rec))
    folder = tmp_path / "r"
    cmd = ["tune", "--checkpoint", "gmm-2d-edm", "--transfer", str(path), "--val-seeds", "3", "--val-samples", "8",
           "--results", str(folder), "--quiet"]
    assert main(cmd) == 0
    out = json.loads((folder / "transfer-gmm-2d-edm.json").read_text())
    r = out["results"][0]
    assert r["checkpoint"] == "gmm-2d-edm" and r["tuned_on"] == "gmm-2d" and r["times_mapped"]
    _, seeds = tune.TuneSettings("x", [5], [], val_seeds=3).seeds()
    assert r["heldout_seeds"] == seeds and r["paired"]["n"] == 3
    df = ResultsStore(folder).read()
    assert set(df["checkpoint"]) == {"gmm-2d-edm"} and len(df) == 6 and (df["status"] == "ok").all()
    mapped = df[df["grid"] == r["options"]["grid"]].set_index("seed")["solver_error_mean"]
    assert [mapped[s] for s in seeds] == r["heldout_per_seed"]["tuned"]
    d = [a - b for a, b in zip(r["heldout_per_seed"]["default"], r["heldout_per_seed"]["tuned"])]
    assert r["paired"]["diff_mean"] == pytest.approx(sum(d) / 3, rel=1e-12)
    assert "fitted-x (gmm-2d) | gmm-2d-edm | 5" in capsys.readouterr().out
    assert main(cmd) == 0
    assert json.loads((folder / "transfer-gmm-2d-edm.json").read_text())["transfer"]["cells_run"] == 0
    assert main(["tune", "--checkpoint", "gmm-2d-edm", "--transfer", "nothing-*", "--results", str(folder)]) == 2
