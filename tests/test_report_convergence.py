"""Likelihood rows as convergence to the converged value (never ranked), and "student or solver?", on synthetic rows
with hand-computed answers."""
import json

import pandas as pd
import pytest

from bench.report import sampler_labels, write_report
from bench.report_nll import convergence_table, references, with_distance
from bench.report_pareto import pareto_front, student_or_solver
from bench.schema import conform
from bench.store import ResultsStore

DOPRI = json.dumps({"rtol": 1e-5, "atol": 1e-5})


def _nll(sampler, nfe, seed, value, se=0.03, config="{}", exact=None, counted=None):
    return {"cell_id": f"{sampler}-{nfe}-{seed}-{config}".replace(" ", "").replace('"', "").replace(":", "")
            .replace("{", "").replace("}", "").replace(",", "_"), "checkpoint": "c", "sampler": sampler,
            "sampler_config": config, "nfe": nfe, "nfe_counted": counted or nfe, "seed": seed, "n_samples": 50,
            "nll_n": 50, "batch_size": 50, "status": "ok", "nll_bpd": value, "nll_bpd_se": se,
            "nll_exact_bpd": exact, "wall_clock_s": 1.0, "threads": 1, "world_size": 1}


def _frame(rows):
    df = conform(pd.DataFrame(rows))
    return df.assign(label=sampler_labels(df))


def test_distance_to_the_tightest_adaptive_estimate_of_the_same_seed():
    rows = []
    for seed, (ref, loose, h10, h20) in enumerate([(2.0, 2.1, 1.2, 1.7), (2.02, 2.2, 1.24, 1.74)]):
        rows += [_nll("nll:ode_dopri5", None, seed, ref, config=DOPRI, counted=290),
                 _nll("nll:ode_dopri5", None, seed, loose, config=json.dumps({"rtol": 1e-3, "atol": 1e-3}), counted=80),
                 _nll("nll:ode_heun", 10, seed, h10), _nll("nll:ode_heun", 20, seed, h20),
                 _nll("nll:vlb_continuous", 10, seed, ref + 0.6)]
    df = _frame(rows)
    refs = references(df).set_index("seed")
    assert refs["ref_bpd"].tolist() == [2.0, 2.02] and set(refs["ref"]) == {"ode_dopri5, rtol 1e-05"}
    d = with_distance(df)
    heun10 = d[(d["sampler"] == "nll:ode_heun") & (d["nfe"] == 10)].sort_values("seed")
    assert heun10["delta_bpd"].to_numpy() == pytest.approx([-0.8, -0.78])
    assert set(d.loc[d["sampler"] == "nll:vlb_continuous", "kind"]) == {"vlb"}
    labels, cols, cells, note = convergence_table(df)
    table = dict(zip(labels, cells))
    # Heun at 10 NFE: mean -0.79, SE over the two seeds |(-0.8) - (-0.78)| / 2 = 0.01
    assert table["nll:ode_heun"][cols.index(10)] == "1.22 ± 0.03 (Δ -0.79 ± 0.01)"
    assert "not a bound" in note and "upper bound" in note


def test_the_exact_value_is_the_reference_where_rows_carry_it():
    df = _frame([_nll("nll:ode_dopri5", None, 0, 0.03, config=DOPRI, exact=-0.004, counted=100),
                 _nll("nll:ode_heun", 10, 0, -0.29, exact=-0.004)])
    d = with_distance(df).set_index("sampler")
    assert d.loc["nll:ode_heun", "ref"] == "exact" and d.loc["nll:ode_heun", "delta_bpd"] == pytest.approx(-0.286)
    assert d.loc["nll:ode_dopri5", "delta_bpd"] == pytest.approx(0.034)
    # one seed: the SE is sqrt(se^2 + 0^2) = se, marked as unpaired
    labels, cols, cells, _ = convergence_table(df)
    assert dict(zip(labels, cells))["nll:ode_heun"][cols.index(10)].endswith("(Δ -0.286 ± 0.03†)")


def test_no_likelihood_table_bolds_an_estimate(tmp_path):
    rows = [_nll("nll:ode_dopri5", None, 0, 2.0, config=DOPRI, counted=290), _nll("nll:ode_heun", 10, 0, 1.2),
            _nll("nll:ode_heun", 20, 0, 1.7)]
    ResultsStore(tmp_path / "r").append(rows)
    write_report(tmp_path / "r", tmp_path / "out")
    for name in ("c/nll_bpd.md", "c/nll_bpd.tex", "likelihood.md", "likelihood.tex"):
        text = (tmp_path / "out" / name).read_text()
        assert "**" not in text and "textbf" not in text, name
    assert "0 (the converged value)" in (tmp_path / "out" / "likelihood.md").read_text()
    assert (tmp_path / "out" / "c" / "nll.png").stat().st_size > 5_000


def _fid(sampler, nfe, values):
    return [{"cell_id": f"{sampler}-{nfe}-{s}", "checkpoint": "digits", "sampler": sampler, "sampler_config": "{}",
             "nfe": nfe, "seed": s, "n_samples": 8, "batch_size": 8, "status": "ok", "fid": v, "wall_clock_s": 0.1 * nfe,
             "threads": 1, "world_size": 1} for s, v in enumerate(values)]


def test_student_or_solver_picks_the_best_of_each_within_every_budget():
    rows = (_fid("kd", 1, [30.0, 31.0, 29.0, 30.0]) + _fid("pd", 4, [35.0, 36.0, 34.0, 35.0])
            + _fid("ddim", 5, [40.0, 42.0, 41.0, 39.0]) + _fid("dpm_solver++_2m", 10, [20.0, 22.0, 19.0, 21.0]))
    head, table = student_or_solver(_frame(rows), "fid")
    by_n = {r[0]: r for r in table}
    assert list(by_n) == ["5", "10"]  # budgets with both a student and a solver at or below them
    assert by_n["5"][1:5] == ["kd (1)", "30", "ddim (5)", "40.5"]
    # kd - ddim per seed: -10, -11, -12, -9 -> mean -10.5; kd - dpm++: 10, 9, 10, 9 -> +9.5; both clear after Holm
    assert by_n["5"][5].startswith("-10.5 [") and by_n["5"][6] == "student"
    assert by_n["10"][3] == "dpm_solver++_2m (10)" and by_n["10"][5].startswith("+9.5 [") and by_n["10"][6] == "solver"
    assert student_or_solver(_frame(_fid("ddim", 5, [1.0, 2.0])), "fid") is None  # no students: no table


def test_pareto_front_by_hand():
    x = [1.0, 2.0, 2.0, 5.0, 10.0]
    y = [30.0, 35.0, 25.0, 28.0, 20.0]
    # (1, 30) then (2, 25) beats (2, 35); (5, 28) is beaten by (2, 25); (10, 20) is on the front
    assert pareto_front(pd.Series(x).to_numpy(), pd.Series(y).to_numpy()).tolist() == [0, 2, 4]
    # higher is better: (1, 30), then (2, 35); nothing later is higher
    assert pareto_front(pd.Series(x).to_numpy(), pd.Series(y).to_numpy(), lower=False).tolist() == [0, 1]
