"""Likelihood estimators in the sweep: nll:* rows, exact agreement on the mixtures, invariances, report and gate."""
import dataclasses

import pytest

from bench.cli import main
from bench.store import ResultsStore

RUN = ["run", "--checkpoint", "gmm-2d", "--seeds", "0", "--quiet", "--nll-samples", "48"]
EXACT = "nll:ode_dopri5,divergence=exact,t_eps=1e-5,rtol=1e-7,atol=1e-7"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("nll")
    assert main([*RUN, "--nfe", "6", "12", "--sampler", EXACT, "nll:ode_heun", "nll:vlb_continuous", "ddim",
                 "--results", str(out)]) == 0
    return out, ResultsStore(out).read()


def test_rows_carry_the_estimate_its_terms_and_the_exact_value(sweep):
    _, df = sweep
    nll = df[df["sampler"].str.startswith("nll:")]
    assert (nll["status"] == "ok").all() and len(nll) == 1 + 2 + 2
    assert (nll["n_samples"] == 48).all() and (nll["nll_n"] == 48).all()
    fixed = nll[nll["nfe"].notna()]
    assert (fixed["nfe_counted"] == fixed["nfe"].astype(float)).all()  # NFE counted at the model boundary
    ode = nll[nll["sampler"] == "nll:ode_heun"]
    total = ode["ode_prior_bpd"] + ode["ode_flow_bpd"] + ode["ode_truncation_bpd"]
    assert total.to_numpy() == pytest.approx(ode["nll_bpd"].to_numpy(), abs=1e-9)  # continuous data: no offset
    vlb = nll[nll["sampler"] == "nll:vlb_continuous"]
    assert vlb["vlb_diffusion_bpd"].notna().all() and vlb["ode_flow_bpd"].isna().all()
    assert df.loc[df["sampler"] == "ddim", "nll_bpd"].isna().all()


def test_adaptive_ode_with_exact_divergence_matches_the_exact_nll(sweep):
    _, df = sweep
    row = df[df["sampler"] == "nll:ode_dopri5"].iloc[0]
    # bits/dim of the mixture's exact -log p_0 on the same 48 points; 0.01 nats/dim = 0.0144 bits/dim
    assert abs(row["nll_bpd"] - row["nll_exact_bpd"]) < 0.01 / 0.6931
    assert row["nfe_counted"] > 20


def test_batch_size_does_not_change_fixed_step_estimates(sweep, tmp_path):
    out, df = sweep
    assert main([*RUN, "--nfe", "6", "12", "--sampler", "nll:ode_heun", "nll:vlb_continuous", "--batch-size", "7",
                 "--results", str(tmp_path)]) == 0
    a = df[df["sampler"].isin(["nll:ode_heun", "nll:vlb_continuous"])].set_index("cell_id").sort_index()
    b = ResultsStore(tmp_path).read().set_index("cell_id").sort_index()
    assert list(a.index) == list(b.index)
    assert a["nll_bpd"].to_numpy() == pytest.approx(b["nll_bpd"].to_numpy(), rel=1e-10)


def test_report_writes_the_likelihood_table_and_plot(sweep, tmp_path):
    out, _ = sweep
    assert main(["report", "--results", str(out), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "likelihood.md").read_text()
    assert "| gmm-2d | ode_dopri5 |" in table and "(adaptive)" in table and "| gmm-2d | ode_heun | 12 |" in table
    assert (tmp_path / "gmm-2d" / "nll.png").stat().st_size > 5_000
    assert "nll:ode_heun" in (tmp_path / "gmm-2d" / "nll_bpd.md").read_text()
    assert "nll:" not in (tmp_path / "gmm-2d" / "solver_error_median.md").read_text()


def test_check_gates_nll(sweep, tmp_path, capsys):
    out, df = sweep
    baseline = tmp_path / "b.csv"
    assert main(["baseline", "--results", str(out), "--out", str(baseline)]) == 0
    store = ResultsStore(tmp_path / "r")
    worse = df.copy()
    worse.loc[worse["sampler"] == "nll:ode_heun", "nll_bpd"] += 0.5
    store.rewrite(worse)
    assert main(["check", "--baseline", str(baseline), "--results", str(tmp_path / "r")]) == 1
    assert "nll_bpd" in capsys.readouterr().out


def test_a_checkpoint_without_data_gives_an_unsupported_row():
    import pretrained
    import samplers
    from bench.grid import Cell, get_method
    from bench.runner import ReferenceCache, RunOptions, run_cell

    ck = dataclasses.replace(pretrained.load("gmm-2d"), likelihood_data=None)
    row = run_cell(ck, Cell("gmm-2d", get_method("nll:ode_heun"), 4, 0, 8), ReferenceCache(None), RunOptions())
    assert row["status"] == "unsupported" and "no held-out data" in row["error"]
    assert samplers.available()  # the sampler registry is untouched by estimators
