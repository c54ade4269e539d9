"""`bench run --config FILE.toml`: the same cells as the equivalent flags; bad files refused in one line with nothing
written; the committed reports' configs are valid and named by their READMEs."""
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.config import apply_config, read_toml, save_config_copy, saved_configs
from bench.preflight import apply_run_config, plan_run, resolve_methods

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """description = "a small table"
checkpoint = "gmm-2d"
nfe = [5, 10]
seeds = [0, 1]
n_samples = 64
nll_samples = 16
sampler = ["ddim", {name = "ddim", eta = 0.5}, "dpm_solver++_2m,grid=karras", "nll:ode_heun"]
"""
FLAGS = ["--checkpoint", "gmm-2d", "--nfe", "5", "10", "--seeds", "0", "1", "--n-samples", "64", "--nll-samples", "16",
         "--sampler", "ddim", "ddim,eta=0.5", "dpm_solver++_2m,grid=karras", "nll:ode_heun"]


def _plan(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        apply_run_config(args, parser.run_parser, argv)
    return plan_run(args)


def test_a_config_runs_the_same_cells_as_its_flags(tmp_path):
    (tmp_path / "t.toml").write_text(CONFIG)
    by_file = _plan(["run", "--config", str(tmp_path / "t.toml"), "--results", str(tmp_path / "a")])
    by_flags = _plan(["run", *FLAGS, "--results", str(tmp_path / "b")])
    assert [c.cell_id for c in by_file.cells] == [c.cell_id for c in by_flags.cells]
    assert len(by_file.cells) == 2 * (3 * 2 + 1 * 2)  # seeds x (3 samplers x 2 NFE + heun at 5 and 10)


@pytest.mark.parametrize("text, says", [
    ("nfes = [5]", "unknown key 'nfes'; allowed: ["),
    ("results = 'x'", "unknown key 'results' (set it on the command line)"),
    ("nfe = '5'", "nfe = '5' must be an integer or a list of them (as --nfe)"),
    ("seeds = [0.5]", "seeds = 0.5 must be an integer"),
    ("n_samples = [1, 2]", "n_samples takes one value (as --n-samples), got a list"),
    ("state_dtype = 'float16'", "state_dtype = 'float16'; allowed: ['float64', 'float32']"),
    ("allow_large = 1", "allow_large = 1 must be true or false"),
    ("sampler = [{eta = 0.5}]", "must be a spec string"),
    ("nfe = [5", "not valid TOML"),
    ("nfe = [5]\nnfe = [6]", "not valid TOML"),
])
def test_a_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys, text, says):
    (tmp_path / "bad.toml").write_text(text)
    out = tmp_path / "r"
    assert main(["run", "--config", str(tmp_path / "bad.toml"), "--results", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {tmp_path / 'bad.toml'}: ") and says in err and err.count("\n") == 1
    assert not out.exists()


def test_an_option_in_the_config_and_on_the_command_line_is_refused(tmp_path, capsys):
    (tmp_path / "t.toml").write_text(CONFIG)
    assert main(["run", "--config", str(tmp_path / "t.toml"), "--seeds", "3", "--results", str(tmp_path / "r")]) == 2
    assert "--seeds is given on the command line and as 'seeds' in the config" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "none.toml"), "--results", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_run_keeps_its_config_and_the_report_names_it(tmp_path):
    (tmp_path / "t.toml").write_text(CONFIG)
    copy = save_config_copy(tmp_path / "r", tmp_path / "t.toml")
    assert save_config_copy(tmp_path / "r", tmp_path / "t.toml") == copy  # same content, one copy
    assert saved_configs(tmp_path / "r") == [(str(tmp_path / "t.toml"), copy.name)]
    assert read_toml(copy)["nfe"] == [5, 10]  # the copy is the config (the first line is a comment)


# reports/NAME/config.toml, or reports/NAME/configs/*.toml where a report's cells are several sweeps
COMMITTED = sorted([*ROOT.glob("reports/*/config.toml"), *ROOT.glob("reports/*/configs/*.toml")])


def test_the_committed_reports_have_valid_configs_named_by_their_readmes():
    assert len(COMMITTED) >= 3
    parser = build_parser()
    for path in COMMITTED:
        args = parser.parse_args(["run"])
        apply_config(args, read_toml(path), parser.run_parser, set(), str(path))
        assert resolve_methods(args.sampler, args.allow_large)  # every sampler spec resolves
        rel = path.relative_to(ROOT).as_posix()
        readme = path.parent / "README.md" if path.parent.name != "configs" else path.parent.parent / "README.md"
        assert f"--config {rel}" in readme.read_text(), rel
