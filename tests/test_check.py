"""The regression gate's inputs: every unusable baseline, results folder or tolerance is a one-line ValueError."""
import json

import pandas as pd
import pytest

from bench import schema
from bench.check import (baseline_columns, check_against_baseline, read_baseline, validate_tolerances,
                         write_baseline)
from bench.cli import main
from bench.store import ResultsStore


def _rows():
    """Four cells of one checkpoint: three fixed budgets and one adaptive (nfe <NA>), one unsupported."""
    config = json.dumps({"grid": "logSNR"}, sort_keys=True)
    rows = [{"cell_id": f"cell{nfe}", "checkpoint": "gmm-2d", "sampler": "ddim", "sampler_config": config,
             "nfe": nfe, "seed": 0, "n_samples": 8, "batch_size": 8, "status": "ok",
             "solver_error_median": 1.0 / nfe, "frechet": 0.5 / nfe, "loglik": -2.0 - 1.0 / nfe,
             "threads": 1, "world_size": 1} for nfe in (4, 8, 16)]
    rows.append({**rows[0], "cell_id": "celladaptive", "sampler": "dopri5", "nfe": None, "nfe_counted": 38.0})
    rows.append({**rows[0], "cell_id": "cellheun5", "sampler": "heun", "nfe": 5, "status": "unsupported",
                 "error": "heun needs an even NFE", "solver_error_median": None, "frechet": None, "loglik": None})
    return rows


@pytest.fixture
def gate(tmp_path):
    """(results folder, baseline CSV written from it)."""
    results, baseline = tmp_path / "results", tmp_path / "baseline.csv"
    ResultsStore(results).append(_rows())
    assert write_baseline(results, baseline) == len(_rows())
    return results, baseline


def _edit(baseline, edit):
    """Rewrite the baseline CSV as strings, with ``edit(frame)`` applied (cells stay text, as a hand edit would)."""
    df = pd.read_csv(baseline, dtype=str, keep_default_na=False)
    edited = edit(df)
    (df if edited is None else edited).to_csv(baseline, index=False)


def test_a_baseline_of_the_results_passes_and_a_worse_cell_fails(gate):
    results, baseline = gate
    passed, lines = check_against_baseline(baseline, results)
    assert passed and lines[-1].startswith("PASS: 5 baseline cells")
    df = ResultsStore(results).read()
    df.loc[df["nfe"] == 8, "solver_error_median"] *= 2
    ResultsStore(results / "worse").append(df.to_dict("records"))
    passed, lines = check_against_baseline(baseline, results / "worse")
    assert not passed and any(line.startswith("WORSE   gmm-2d ddim nfe=8") for line in lines)


def _refused(baseline, results, *fragments, **tolerances):
    with pytest.raises(ValueError) as info:
        check_against_baseline(baseline, results, **tolerances)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_baseline_without_cells_is_refused(gate):
    results, baseline = gate
    _edit(baseline, lambda df: df.iloc[:0])
    _refused(baseline, results, f"baseline {baseline} has no cells: it would pass anything")


def test_an_empty_file_a_folder_and_a_non_csv_are_refused(gate, tmp_path):
    results, _ = gate
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _refused(empty, results, f"baseline {empty} is an empty file")
    _refused(tmp_path, results, f"baseline {tmp_path} is a folder, not a CSV file")
    binary = tmp_path / "results.parquet"
    binary.write_bytes(b"PAR1\x15\x04\x15\xd0\x00\xff\xfe")
    _refused(binary, results, f"baseline {binary} is not a CSV file: not UTF-8 text")
    text = tmp_path / "notes.md"
    text.write_text("# notes\nnothing here\n")
    _refused(text, results, f"baseline {text} is not a baseline CSV", "'checkpoint'")


def test_unknown_status_values_are_named_with_the_allowed_ones(gate):
    results, baseline = gate
    _edit(baseline, lambda df: df.assign(status=df["status"].replace({"unsupported": "skipped"})))
    _refused(baseline, results, "unknown status values ['skipped']", str(list(schema.STATUSES)))
    _edit(baseline, lambda df: df.assign(status=""))
    _refused(baseline, results, "unknown status values ['<empty>']")


def test_unknown_and_missing_columns_are_named(gate):
    results, baseline = gate
    _edit(baseline, lambda df: df.assign(fid_typo="1.0"))
    _refused(baseline, results, "unknown columns ['fid_typo']", f"allowed: {list(baseline_columns())}")
    _edit(baseline, lambda df: df.drop(columns=["fid_typo", "frechet"]))
    _refused(baseline, results, "lacks columns ['frechet']")


def test_a_baseline_from_before_a_key_column_existed_names_it(gate, monkeypatch):
    results, baseline = gate  # written with today's key columns
    monkeypatch.setattr(schema, "COLUMNS", {**schema.COLUMNS, "solver_dtype": "string"})
    monkeypatch.setattr(schema, "KEY_COLUMNS", (*schema.KEY_COLUMNS, "solver_dtype"))
    _refused(baseline, results, "lacks columns ['solver_dtype'] (key columns added after it was written? "
                                f"rewrite it with `python -m bench baseline --results DIR --out {baseline}`)")
    write_baseline(results, baseline)  # a rewritten baseline has the new column and passes
    assert "solver_dtype" in read_baseline(baseline) and check_against_baseline(baseline, results)[0]


@pytest.mark.parametrize("column, value, fragment", [
    ("nfe", "abc", "column nfe has values that are not numbers: ['abc'] (first on line 2)"),
    ("nfe", "4.5", "column nfe has values that are not integers: ['4.5']"),
    ("nfe", "inf", "column nfe has values that are not integers: ['inf']"),
    ("nfe", "0", "column nfe has values out of range ['0']"),
    ("seed", str(2**64), f"column seed has values out of range ['{2**64}']"),
    ("seed", "-1", "column seed has values out of range ['-1']"),
    ("seed", "", "column seed has empty values (line 2)"),
    ("n_samples", "eight", "column n_samples has values that are not numbers: ['eight']"),
    ("sampler_config", "grid=logSNR", "column sampler_config has values that are not JSON objects: ['grid=logSNR']"),
    ("solver_error_median", "0.1x", "column solver_error_median has values that are not numbers: ['0.1x']"),
    ("solver_error_median", "inf", "column solver_error_median has non-finite values ['inf']"),
])
def test_unparseable_values_are_named_with_their_column_and_line(gate, column, value, fragment):
    results, baseline = gate

    def edit(df):
        df.loc[0, column] = value
    _edit(baseline, edit)
    _refused(baseline, results, f"baseline {baseline}: {fragment}")


def test_nan_spelled_out_in_a_metric_is_refused(gate):
    """Only an empty cell is a missing metric: a spelled "nan" would turn the gate off for it (issue 18)."""
    results, baseline = gate

    def edit(df):
        df.loc[df["status"] == "ok", "fid"] = "nan"
    _edit(baseline, edit)
    _refused(baseline, results, "column fid has non-finite values ['nan']")


def test_duplicate_baseline_keys_are_refused(gate):
    results, baseline = gate
    _edit(baseline, lambda df: pd.concat([df, df.iloc[[1]].assign(solver_error_median="9")]))
    _refused(baseline, results, "has 2 rows that share a key, e.g. gmm-2d ddim nfe=8 seed=0 on line 3",
             "may appear once")


def test_results_that_are_missing_empty_or_a_file_are_an_error_not_every_cell_missing(gate, tmp_path):
    _, baseline = gate
    for results in (tmp_path / "nowhere", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        _refused(baseline, results, f"no results in {results}; run `python -m bench run --results {results}` first")
    _refused(baseline, baseline, f"results {baseline} is a file, not a results folder")
    with pytest.raises(ValueError, match="no results in"):
        write_baseline(tmp_path / "empty", tmp_path / "b.csv")
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        write_baseline(gate[0], tmp_path)


@pytest.mark.parametrize("rtol, atol, message", [
    (float("nan"), 0.0, "--rtol must be a finite number >= 0, got nan"),
    (float("inf"), 0.0, "--rtol must be a finite number >= 0, got inf"),
    (-0.01, 0.0, "--rtol must be a finite number >= 0, got -0.01"),
    (0.02, -1e-8, "--atol must be a finite number >= 0, got -1e-08"),
    (0.02, float("-inf"), "--atol must be a finite number >= 0, got -inf"),
    (0.02, "1e-8", "--atol must be a finite number >= 0, got '1e-8'"),
])
def test_tolerances_must_be_finite_and_non_negative(gate, rtol, atol, message):
    with pytest.raises(ValueError, match="^" + message.replace("+", r"\+") + "$"):
        validate_tolerances(rtol, atol)
    results, baseline = gate
    _refused(baseline, results, message, rtol=rtol, atol=atol)
    validate_tolerances(0.0, 0.0)


@pytest.mark.parametrize("args, message", [
    (["--rtol", "nan"], "error: --rtol must be a finite number >= 0, got nan"),
    (["--atol", "-1"], "error: --atol must be a finite number >= 0, got -1.0"),
    (["--baseline", "{empty}"], "error: baseline {empty} is an empty file"),
    (["--results", "{nowhere}"], "error: no results in {nowhere}; run `python -m bench run --results {nowhere}` first"),
])
def test_the_cli_turns_bad_input_into_exit_2_and_one_line(gate, tmp_path, capsys, args, message):
    results, baseline = gate
    names = {"empty": tmp_path / "empty.csv", "nowhere": tmp_path / "nowhere"}
    names["empty"].write_text("")
    argv = ["check", "--baseline", str(baseline), "--results", str(results), *(a.format(**names) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(**names)) and err.count("\n") == 1
