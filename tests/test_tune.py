"""`bench tune`: the fitted schedule's DP, explicit-times grids, presets, the search on gmm-16d against an exhaustive
search on held-out seeds, presets through `run`, and resume without repeating trials."""
import json
import math

import pytest
import torch

import samplers
from bench import tune
from bench.cli import main
from bench.store import ResultsStore
from samplers import grids, initial_noise

NFE = 10
FAMILIES = ("unipc_bh1_3", "dpm_solver++_3m")
GAIN = {"unipc_bh1_3": 3.0, "dpm_solver++_3m": 2.0}  # measured here 6.9x and 2.3x (these settings)
SETTINGS = dict(tune_samples=32, val_seeds=4, val_samples=16, seed=0)


# -- the DP and explicit grids --------------------------------------------------------------------------------------
def _brute_force(C, steps, gamma):
    import itertools
    n, best = C.shape[0], (math.inf, None)
    for mid in itertools.combinations(range(1, n - 1), steps - 1):
        path = (0, *mid, n - 1)
        v = 0.0
        for i, j in zip(path, path[1:]):
            v = C[i, j].item() + gamma * v
        if v < best[0] - 1e-15:
            best = (v, list(path))
    return best[1]


@pytest.mark.parametrize("gamma", [0.8, 1.0, 1.15])
def test_fit_schedule_is_the_exhaustive_optimum_with_exactly_k_steps(gamma):
    g = torch.Generator().manual_seed(3)
    n = 9
    C = torch.rand(n, n, generator=g, dtype=torch.float64)
    C = torch.where(torch.arange(n)[:, None] < torch.arange(n)[None], C, torch.full_like(C, math.inf))
    for k in (1, 3, 5):
        path = tune.fit_schedule(C, k, gamma)
        assert len(path) == k + 1 and path[0] == 0 and path[-1] == n - 1
        assert path == _brute_force(C, k, gamma)


@pytest.mark.parametrize("gamma", [0.9, 1.15])
def test_second_order_fit_is_the_exhaustive_optimum(gamma):
    import itertools
    g = torch.Generator().manual_seed(5)
    n = 8
    C = torch.rand(n, n, generator=g, dtype=torch.float64)
    C2 = torch.rand(n, n, n, generator=g, dtype=torch.float64)
    for k in (1, 2, 4):
        best = (math.inf, None)
        for mid in itertools.combinations(range(1, n - 1), k - 1):
            p = (0, *mid, n - 1)
            v = C[0, p[1]].item()
            for a, b, c in zip(p, p[1:], p[2:]):
                v = C2[a, b, c].item() + gamma * v
            if v < best[0] - 1e-15:
                best = (v, list(p))
        assert tune.fit_schedule2(C, C2, k, gamma) == best[1]


def test_fit_schedule_breaks_ties_to_the_lowest_index():
    n = 5
    C = torch.full((n, n), math.inf, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            C[i, j] = 1.0  # every 2-step path costs the same
    assert tune.fit_schedule(C, 2, 1.0) == [0, 1, 4]


def test_explicit_times_grid_names_its_content_and_refuses_other_runs(gmm16d):
    sch = gmm16d.model.schedule
    ts = grids.time_grid(sch, "karras", NFE).tolist()
    name = grids.register_times(ts)
    assert name.startswith(grids.TIMES_PREFIX) and grids.register_times(list(ts)) == name
    assert grids.register_times(ts[:-1] + [ts[-1] * 0.5]) != name
    s = samplers.get("unipc", grid=name, t_end=ts[-1])
    assert json.loads(s.config_json())["grid"] == name  # the times are in the sampler's identity
    x = initial_noise(0, range(4), gmm16d.data_shape)
    same = samplers.get("unipc", grid="karras").sample(gmm16d.model, x, NFE)
    assert torch.equal(s.sample(gmm16d.model, x, NFE), same)
    with pytest.raises(ValueError, match="has 10 steps"):
        s.sample(gmm16d.model, x, 5)
    with pytest.raises(ValueError, match="t_end"):
        samplers.get("unipc", grid=name, t_end=0.01).sample(gmm16d.model, x, NFE)
    for bad in ([1.0], [1.0, 1.0], [1.0, -0.1], [1.0, float("nan")], [0.5, 0.9]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            grids.register_times(bad)
    with pytest.raises(ValueError, match="not allowed"):
        samplers.get("unipc", grid="times:000000000000")


# -- the search on gmm-16d ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory, gmm16d):
    folder = tmp_path_factory.mktemp("tune")
    settings = tune.TuneSettings("gmm-16d", [NFE], list(FAMILIES), results=str(folder), **SETTINGS)
    methods = [samplers.get(n) for n in FAMILIES]
    rows = tune.run_tune(settings, gmm16d, methods)
    return folder, settings, {r["sampler"]: r for r in rows}


def _heldout_error(ck, sampler, seeds, n, refs):
    errs = []
    for seed in seeds:
        x = initial_noise(seed, range(n), ck.data_shape, std=ck.model.schedule.prior_std)
        out = sampler.sample(ck.model, x, NFE)
        errs.append(float(((out - refs[seed]).reshape(n, -1).norm(dim=1)).mean()))
    return sum(errs) / len(errs)


@pytest.mark.parametrize("family", FAMILIES)
def test_tuned_beats_default_and_matches_exhaustive_search_on_heldout_seeds(tuned, gmm16d, family):
    folder, settings, rows = tuned
    r = rows[family]
    _, val_seeds = settings.seeds()
    tune_seed, _ = settings.seeds()
    assert tune_seed not in val_seeds and r["heldout_seeds"] == val_seeds
    from bench.runner import ReferenceCache
    refs = ReferenceCache(folder / "cache")
    ref = {s: refs.get(gmm16d, s, settings.val_samples, 1e-3, "cpu") for s in val_seeds}
    sampler = samplers.get(family)
    # the exhaustive search over the same discrete options, scored on the held-out seeds (an oracle the search lacks)
    space = tune.search_space(sampler, NFE)
    assert {b for b, _ in space} == ({"unipc"} if family.startswith("unipc") else {"dpm_solver++", "dpm_solver"})
    exhaustive = min(_heldout_error(gmm16d, samplers.get(b, **o), val_seeds, settings.val_samples, ref)
                     for b, o in space)
    tuned_err = _heldout_error(gmm16d, samplers.get(r["preset_name"]), val_seeds, settings.val_samples, ref)
    default_err = _heldout_error(gmm16d, sampler, val_seeds, settings.val_samples, ref)
    assert tuned_err == pytest.approx(r["heldout_error"]["tuned"], rel=1e-9)  # the store's rows say the same
    assert default_err == pytest.approx(r["heldout_error"]["default"], rel=1e-9)
    assert tuned_err <= exhaustive * 1.0 + 1e-12, (tuned_err, exhaustive)
    print(f"{family} NFE {NFE}: held-out default {default_err:.4g}, tuned {tuned_err:.4g}, exhaustive best "
          f"{exhaustive:.4g}")
    assert tuned_err < default_err / GAIN[family], (tuned_err, default_err)  # measured: README's tune section
    assert r["paired"]["resolved"] and r["paired"]["ci95"][0] > 0


def test_fitted_schedule_is_compared_with_every_fixed_grid(tuned):
    _, settings, rows = tuned
    for r in rows.values():
        h = r["heldout_error"]
        assert all(math.isfinite(h[f"grid:{g}"]) for g in tune.FIXED_GRIDS)
        assert r["fitted_trials"] == tune.DEFAULT_TOP * len(tune.GAMMAS) * len(tune.FITS)
        assert "grid:fitted" in h and r["fitted_compared"]["fit"] in tune.FITS
        q = r["paired_vs_best_fixed"]  # the overfitting check of a fitted winner
        assert q["n"] == settings.val_seeds and (q["resolved"] or q["ci95"][0] <= 0 <= q["ci95"][1] or r["gamma"])
        if r["gamma"] is not None:  # the winner is a fitted schedule: its own row is the tuned one
            assert h["grid:fitted"] == h["tuned"]
    md = tune.summary_table(list(rows.values()))
    assert "time_quadratic" in md and "karras" in md and "resolved" in md


def test_presets_run_through_run_and_give_the_same_numbers(tuned, capsys):
    folder, settings, rows = tuned
    _, val_seeds = settings.seeds()
    for family in FAMILIES:
        r = rows[family]
        rec = json.loads(open(r["preset"]).read())
        assert rec["search"]["budget"] == settings.budget and rec["search"]["seed"] == settings.seed
        assert rec["checkpoint"] == "gmm-16d" and "fingerprint" in rec
        code = main(["run", "--checkpoint", "gmm-16d", "--sampler", r["preset_name"], "--nfe", str(NFE),
                     "--seeds", str(val_seeds[0]), "--n-samples", str(settings.val_samples), "--results",
                     str(folder), "--quiet"])
        assert code == 0
        df = ResultsStore(folder).read()
        row = df[(df["sampler"] == r["preset_name"]) & (df["seed"] == val_seeds[0])]
        assert len(row) == 1 and row["status"].iloc[0] == "ok"
        assert row["solver_error_mean"].iloc[0] == pytest.approx(r["heldout_per_seed"]["tuned"][0], rel=1e-12)
        if rec["times"] is not None:
            assert row["grid"].iloc[0] == rec["options"]["grid"]


@pytest.mark.parametrize("edit,match", [
    (lambda r: r.update(format="other/1"), "format"),
    (lambda r: r.update(base="no_such_sampler"), "unknown sampler"),
    (lambda r: r["options"].update(order=7), "not allowed"),
    (lambda r: r.update(name="../escape"), "name"),
    (lambda r: r.update(nfe="ten"), "nfe"),
])
def test_bad_preset_files_are_one_line_exit_2_nothing_written(tmp_path, capsys, edit, match):
    rec = {"format": tune.PRESET_FORMAT, "name": "p", "base": "unipc", "options": {"order": 2}, "times": None,
           "nfe": 10, "checkpoint": "gmm-16d", "fingerprint": "", "search": {}}
    edit(rec)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.json").write_text(json.dumps(rec))
    code = main(["run", "--checkpoint", "gmm-16d", "--sampler", "tuned:p", "--nfe", "10", "--results",
                 str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "results.parquet").exists()
    (tmp_path / "presets" / "p.json").write_bytes(b"\x80\x04pickle")
    assert main(["run", "--checkpoint", "gmm-16d", "--sampler", "tuned:p", "--results", str(tmp_path)]) == 2
    assert main(["run", "--checkpoint", "gmm-16d", "--sampler", "tuned:missing", "--results", str(tmp_path)]) == 2


def test_preset_times_must_match_their_grid_name(tmp_path):
    rec = {"format": tune.PRESET_FORMAT, "name": "q", "base": "unipc", "nfe": 2, "checkpoint": "gmm-16d",
           "fingerprint": "", "search": {}, "times": [1.0, 0.5, 0.001],
           "options": {"grid": "times:0123456789ab", "t_end": 0.001}}
    (tmp_path / "q.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="does not name its times"):
        tune.read_preset(tmp_path / "q.json")


# -- resume ---------------------------------------------------------------------------------------------------------
def test_search_resumes_after_an_interruption_without_repeating_trials(tmp_path, gmm2d, monkeypatch):
    from bench import runner

    settings = tune.TuneSettings("gmm-2d", [5], ["unipc_bh1_3"], results=str(tmp_path), budget=30, tune_samples=8,
                                 val_seeds=2, val_samples=8, top=1, gammas=(1.0, 1.15))
    method = [samplers.get("unipc_bh1_3")]
    real, calls = runner.run_cell, []

    def counted(ck, cell, *a, **k):
        calls.append(cell.cell_id)
        if len(calls) == 12 and interrupt:
            raise KeyboardInterrupt  # as a kill between two trials
        return real(ck, cell, *a, **k)

    monkeypatch.setattr(runner, "run_cell", counted)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        tune.run_tune(settings, gmm2d, method)
    stored = set(ResultsStore(tmp_path).read()["cell_id"])
    assert len(stored) == 11
    calls.clear()
    interrupt = False
    first = tune.run_tune(settings, gmm2d, method)[0]
    assert not stored & set(calls)  # no finished trial ran again
    df = ResultsStore(tmp_path).read(all_attempts=True)
    assert df["cell_id"].is_unique
    calls.clear()
    again = tune.run_tune(settings, gmm2d, method)[0]  # everything stored: nothing runs, the same answer
    assert calls == [] and again["tuned_options"] == first["tuned_options"]
    assert again["tuned_times"] == first["tuned_times"]


def test_search_resumes_after_kill_9(tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    from bench import runner

    cmd = ["tune", "--checkpoint", "gmm-2d", "--nfe", "5", "--sampler", "unipc_bh1_3", "--budget", "30", "--top", "1",
           "--val-seeds", "2", "--tune-samples", "8", "--val-samples", "8", "--results", str(tmp_path), "--quiet",
           "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store, deadline = ResultsStore(tmp_path), time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if store.path.exists() and len(store.read()) >= 6:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    stored = set(store.read()["cell_id"])
    real, calls = runner.run_cell, []
    monkeypatch.setattr(runner, "run_cell",
                        lambda ck, cell, *a, **k: calls.append(cell.cell_id) or real(ck, cell, *a, **k))
    from samplers.registry import _REGISTRY
    for name in [n for n in _REGISTRY if n.startswith(tune.TUNED_PREFIX)]:
        monkeypatch.delitem(_REGISTRY, name)  # this process's earlier searches registered the same preset name
    assert main(cmd) == 0
    assert calls and not stored & set(calls)
    assert ResultsStore(tmp_path).read(all_attempts=True)["cell_id"].is_unique


def test_kl_optimal_grid_is_the_align_your_steps_closed_form():
    """sigma_i = tan((1 - i/n) atan(sigma_max) + i/n atan(sigma_min)) (ComfyUI's kl_optimal_scheduler), on EDM."""
    import pretrained
    sch = pretrained.load("gmm-16d-edm").model.schedule
    n = 7
    want = [math.tan((1 - i / n) * math.atan(80.0) + i / n * math.atan(0.002)) for i in range(n + 1)]
    assert grids.time_grid(sch, "kl_optimal", n).tolist() == pytest.approx(want, rel=1e-12)
    assert "kl_optimal" in grids.available() and "kl_optimal" in tune.FIXED_GRIDS


def test_two_processes_share_a_search(tmp_path):
    """Two `tune` processes on one results folder split its trials (each cell computed once) and agree."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bench", "tune", "--checkpoint", "gmm-2d", "--nfe", "5", "--sampler", "unipc_bh1_3",
           "--budget", "30", "--top", "1", "--val-seeds", "2", "--tune-samples", "8", "--val-samples", "8",
           "--results", str(tmp_path), "--quiet", "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    df = ResultsStore(tmp_path).read(all_attempts=True)
    assert df["cell_id"].is_unique  # no trial computed twice
    assert outs[0][0].splitlines()[:3] == outs[1][0].splitlines()[:3]  # the same winner in both tables
