"""The harness end to end: CLI run on a tiny grid, resume after a kill, concurrent runs, report, check."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.grid import make_cells, parse_sampler_spec, resolve_samplers
from bench.store import ResultsStore

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--checkpoint", "gmm-2d", "--n-samples", "64", "--quiet", "--seeds", "0"]


def _run(tmp, *args):
    return main(["run", *TINY, "--results", str(tmp), *args])


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_run_writes_one_row_per_cell_with_schema(tmp_path):
    assert _run(tmp_path, "--nfe", "4", "5", "--sampler", "ddim", "heun", "ddpm", "--seeds", "0", "1") == 0
    df = ResultsStore(tmp_path).read()
    assert len(df) == 3 * 2 * 2 and df["cell_id"].is_unique
    ok = df[df["status"] == "ok"]
    assert (ok["nfe_counted"] == ok["nfe"].astype(float)).all()
    heun5 = df[(df["sampler"] == "heun") & (df["nfe"] == 5)]
    assert set(heun5["status"]) == {"unsupported"} and heun5["error"].str.contains("even").all()
    assert ok["solver_error_median"].notna().all() and ok["frechet"].notna().all() and ok["loglik"].notna().all()
    assert df["fid"].isna().all() and df["nll_bpd"].isna().all()  # columns exist before their metrics do
    assert json.loads(df["sampler_config"].iloc[0])["grid"] == df["grid"].iloc[0]
    assert (df["git_commit"].str.len() > 0).all() and (df["threads"] >= 1).all()


def test_same_seed_same_numbers_and_batch_size_does_not_matter(tmp_path):
    _run(tmp_path / "a", "--nfe", "6", "--sampler", "ddim", "ddpm")
    _run(tmp_path / "b", "--nfe", "6", "--sampler", "ddim", "ddpm", "--batch-size", "7")
    a, b = (ResultsStore(tmp_path / d).read().set_index("cell_id").sort_index() for d in "ab")
    for col in ("solver_error_mean", "frechet", "loglik"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-9, abs=1e-12)


def test_rerun_skips_finished_cells(tmp_path):
    _run(tmp_path, "--nfe", "3", "--sampler", "ddim")
    first = ResultsStore(tmp_path).read()
    _run(tmp_path, "--nfe", "3", "4", "--sampler", "ddim")
    second = ResultsStore(tmp_path).read()
    assert len(second) == 2
    assert second[second["cell_id"] == first["cell_id"][0]]["run_id"].item() == first["run_id"][0]


def test_killed_run_resumes_with_every_cell_exactly_once(tmp_path):
    args = ["run", *TINY, "--results", str(tmp_path), "--nfe", *map(str, range(20, 60, 2)), "--sampler", "euler"]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store, deadline = ResultsStore(tmp_path), time.time() + 120
    while time.time() < deadline and (not store.path.exists() or len(store.read()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(store.read())
    assert 3 <= partial < 20, "the kill should land mid-sweep"
    assert _cli(*args).returncode == 0
    df = store.read()
    assert len(df) == 20 and df["cell_id"].is_unique and (df["status"] == "ok").all()


def test_two_concurrent_runs_share_a_folder_safely(tmp_path):
    args = ["run", *TINY, "--results", str(tmp_path), "--nfe", *map(str, range(4, 24, 2)), "--sampler", "ddim"]
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    df = ResultsStore(tmp_path).read()
    assert len(df) == 10 and df["cell_id"].is_unique


def test_a_failing_cell_is_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import dataclasses

    from samplers.registry import _REGISTRY
    spec = _REGISTRY["ddim"]

    def exploding(model, x, nfe, **kw):
        if nfe == 4:
            raise RuntimeError("boom")
        if nfe == 5:
            return x * float("nan")
        return spec.fn(model, x, nfe, **kw)
    monkeypatch.setitem(_REGISTRY, "ddim", dataclasses.replace(spec, fn=exploding))
    assert _run(tmp_path, "--nfe", "3", "4", "5", "--sampler", "ddim") == 0
    df = ResultsStore(tmp_path).read().set_index("nfe")
    assert df.loc[3, "status"] == "ok"
    assert df.loc[4, "status"] == "error" and "boom" in df.loc[4, "error"]
    assert df.loc[5, "status"] == "diverged"
    monkeypatch.setitem(_REGISTRY, "ddim", spec)
    _run(tmp_path, "--nfe", "3", "4", "5", "--sampler", "ddim")  # error cells are retried, the rest kept
    df = ResultsStore(tmp_path).read().set_index("nfe")
    assert df.loc[4, "status"] == "ok" and df.loc[5, "status"] == "diverged" and len(df) == 3


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    assert _run(tmp_path, "--sampler", "nope") == 2
    assert "allowed" in capsys.readouterr().err
    assert main(["run", "--checkpoint", "cifar", "--results", str(tmp_path)]) == 2
    assert "allowed" in capsys.readouterr().err
    assert _run(tmp_path, "--sampler", "ddim,eta=abc") == 2
    assert not (tmp_path / "results.parquet").exists()


def test_sampler_specs_parse_options_and_globs():
    assert parse_sampler_spec("ddim,eta=0.5,grid=logSNR") == [("ddim", {"eta": 0.5, "grid": "logSNR"})]
    assert [n for n, _ in parse_sampler_spec("dd*")] == ["ddim", "ddpm"]
    assert parse_sampler_spec("heun,final_euler=true") == [("heun", {"final_euler": True})]
    with pytest.raises(ValueError, match="key=value"):
        parse_sampler_spec("ddim,eta")
    with pytest.raises(ValueError, match="no sampler matches"):
        parse_sampler_spec("zz*")
    cells = make_cells(["gmm-2d"], resolve_samplers(["ddim", "ddim,eta=0"]), [5, 5, 10], [0], 8)
    assert len(cells) == 2  # duplicate specs and budgets collapse
    names = [s.name for s in resolve_samplers(["dpm_solver", "dpm_solver_fast", "ddim", "ddpm", "ddim,eta=1.0"])]
    assert names == ["dpm_solver_fast", "ddim", "ddpm"]  # one algorithm + config runs once, under its preset name


def test_report_writes_plot_and_tables(tmp_path):
    _run(tmp_path / "r", "--nfe", "4", "8", "--sampler", "ddim", "heun", "ddim,eta=0.5", "--seeds", "0", "1")
    assert main(["report", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "gmm-2d"
    assert (folder / "metrics.png").stat().st_size > 10_000
    md = (folder / "solver_error_median.md").read_text()
    assert "| sampler | NFE 4 | NFE 8 |" in md and "ddim[eta=0.5]" in md and "±" in md and "**" in md
    tex = (folder / "solver_error_median.tex").read_text()
    assert r"\toprule" in tex and r"\textbf" in tex and r"\bottomrule" in tex
    # the best (bold) entry of each column is the smallest mean
    df = ResultsStore(tmp_path / "r").read()
    best = df[df["status"] == "ok"].groupby(["nfe", "sampler", "sampler_config"])["solver_error_median"].mean()
    for nfe in (4, 8):
        bold_row = next(line for line in md.splitlines() if "**" in line.split("|")[1 + [4, 8].index(nfe) + 1])
        assert f"{best.loc[nfe].min():.3g}" in bold_row


def test_check_passes_on_identical_and_fails_on_worse_or_missing(tmp_path, capsys):
    results, baseline = tmp_path / "r", tmp_path / "baseline.csv"
    _run(results, "--nfe", "4", "8", "--sampler", "ddim", "heun")
    assert main(["baseline", "--results", str(results), "--out", str(baseline)]) == 0
    assert main(["check", "--baseline", str(baseline), "--results", str(results)]) == 0
    assert "PASS" in capsys.readouterr().out
    # worsen one metric of one cell in the results
    store = ResultsStore(results)
    df = store.read()
    i = df.index[(df["sampler"] == "ddim") & (df["nfe"] == 8)][0]
    df.loc[i, "solver_error_median"] *= 1.5
    store.rewrite(df)
    assert main(["check", "--baseline", str(baseline), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "WORSE" in out and "ddim nfe=8" in out and "solver_error_median" in out
    # a cell present in the baseline but missing from the results fails too
    store.rewrite(df.drop(index=i))
    assert main(["check", "--baseline", str(baseline), "--results", str(results)]) == 1
    assert "MISSING" in capsys.readouterr().out


def test_list_shows_samplers_grids_checkpoints():
    out = _cli("list")
    assert out.returncode == 0
    for word in ("ddim", "heun", "karras", "logSNR", "gmm-2d", "gmm-16d", "digits-cond", "kd", "pd", "cd", "genie"):
        assert word in out.stdout
    # A checkpoint's heads are listed under it: the students and GENIE's head of digits.
    lines = out.stdout.splitlines()
    digits = lines.index("checkpoints:") + 1
    assert lines[digits].split()[0] == "digits"
    assert lines[digits + 1].split(": ")[-1].split(", ") == ["cd", "genie", "kd", "pd:1", "pd:2", "pd:4", "pd:8"]


def _one_and_two_ranks(tmp_path, args):
    args = [*args, "--threads", "1"]  # float32 networks give other bits at other thread counts
    single = _cli(*args, "--results", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bench",
                            *args, "--results", str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True,
                           env=env, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    a, b = (ResultsStore(tmp_path / d).read().set_index("cell_id").sort_index() for d in ("one", "two"))
    assert list(b["world_size"].unique()) == [2] and len(b) == len(a)
    for cell_id in a.index:  # the kept samples too
        one, two = (ResultsStore(tmp_path / d).load_samples(cell_id) for d in ("one", "two"))
        assert (one is None and two is None) or (one == two).all()
    return a, b


def test_torchrun_sharding_gives_the_single_process_numbers(tmp_path):
    """Samples, the reference solution (150 samples: 3 chunks over 2 ranks) and every metric, as one process."""
    args = ["run", *TINY[:2], "--n-samples", "150", "--quiet", "--seeds", "0", "--nfe", "4", "--sampler", "ddim",
            "ddpm", "heun", "nll:ode_heun", "--batch-size", "40", "--nll-samples", "30"]
    a, b = _one_and_two_ranks(tmp_path, args)
    assert len(b) == 4
    for col in ("solver_error_mean", "solver_error_median", "frechet", "loglik", "nfe_counted", "max_abs", "nll_bpd"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-12, nan_ok=True)
    assert (a["reference_n"] == 150).all()


def test_torchrun_sharding_gives_the_single_process_fid(tmp_path):
    """FID/KID from feature sums gathered over ranks, on digits, equal a single process's."""
    # batch size 4: every batch has 4 samples on one process and on each of 2 ranks (12 each); float32 convolutions
    # may take another kernel for another batch size (a remainder batch of 2 moved the digits samples by 1e-7)
    args = ["run", "--checkpoint", "digits", "--n-samples", "24", "--quiet", "--seeds", "0", "--nfe", "3",
            "--sampler", "ddim", "--batch-size", "4"]
    a, b = _one_and_two_ranks(tmp_path, args)
    assert (a["status"] == "ok").all()
    assert a["solver_error_mean"].to_numpy() == pytest.approx(b["solver_error_mean"].to_numpy(), rel=1e-12)
    # Feature sums differ by float64 summation order (1e-16); with 24 samples in 64-d features the covariance is
    # rank-deficient and FID's matrix square root amplifies that to about 1e-9.
    for col in ("fid", "kid"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-7)


def test_solver_error_on_a_reference_subset(tmp_path):
    import dataclasses

    import pretrained
    import samplers
    from bench.grid import Cell
    from bench.runner import ReferenceCache, RunOptions, run_cell

    ck = dataclasses.replace(pretrained.load("gmm-2d"), reference_samples=5)
    cell = Cell("gmm-2d", samplers.get("ddim"), 6, 0, 12)
    x_T = samplers.initial_noise(0, range(12), (2,))
    row = run_cell(ck, cell, ReferenceCache(None), RunOptions(batch_size=12), store=ResultsStore(tmp_path))
    assert row["status"] == "ok" and row["reference_n"] == 5
    out = samplers.get("ddim").sample(ck.model, x_T, 6)
    err = (out[:5] - ck.reference_solution(x_T[:5], samplers.VP_T_END)).norm(dim=1)
    assert row["solver_error_mean"] == pytest.approx(float(err.mean()), rel=1e-9)
    assert ResultsStore(tmp_path).load_samples(cell.cell_id).shape == (12, 2)


def test_reads_never_see_a_half_replaced_file(tmp_path):
    """A reader racing a writer sees whole files (reading by path once mixed an old footer with new data)."""
    import threading

    store, stop, errors = ResultsStore(tmp_path), threading.Event(), []

    def writer():
        i = 0
        while not stop.is_set():
            store.append([{"cell_id": f"c{i}", "status": "ok", "seed": 0, "n_samples": 1, "batch_size": 1,
                           "threads": 1, "world_size": 1}])
            i += 1
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen, deadline = 0, time.time() + 6
        while time.time() < deadline:
            n = len(store.read())
            assert n >= seen  # rows only ever accumulate
            seen = n
    finally:
        stop.set()
        thread.join()
    assert seen > 20


def test_a_failing_reference_solution_is_an_error_row(tmp_path):
    import dataclasses

    import pretrained
    import samplers
    from bench.grid import Cell
    from bench.runner import ReferenceCache, RunOptions, run_cell

    def broken(x_T, t_end):
        raise FloatingPointError("stalled")
    ck = dataclasses.replace(pretrained.load("gmm-2d"), reference_solution=broken)
    row = run_cell(ck, Cell("gmm-2d", samplers.get("ddim"), 6, 0, 12), ReferenceCache(None), RunOptions())
    assert row["status"] == "error" and "reference solution: FloatingPointError: stalled" in row["error"]
