"""Hostile inputs on the newer surfaces (issue 18): each case exits 2 with exactly one line on stderr and leaves every
file under its folder byte-identical (a results folder that did not exist is not created). The nine classes are the
README's error-table rows below "hostile inputs"; all go through ``bench/preflight.py``."""
import json
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import bench.dist
import bench.preflight
from bench.check import baseline_columns
from bench.cli import main
from bench.grid import Cell, resolve_samplers
from bench.store import ResultsStore
from test_errors import assert_one_line_exit_2

ROOT = Path(__file__).resolve().parent.parent
RUN = ["run", "--checkpoint", "gmm-2d", "--sampler", "ddim", "--nfe", "3", "--n-samples", "8", "--seeds", "0",
       "--quiet", "--threads", "1"]
NLL = ["run", "--checkpoint", "gmm-2d", "--nfe", "2", "--seeds", "0", "--nll-samples", "4", "--quiet",
       "--threads", "1", "--sampler"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A results folder with one stored cell (a part, its marker, kept samples, the reference cache)."""
    folder = tmp_path_factory.mktemp("stored") / "r"
    assert main([*RUN, "--results", str(folder)]) == 0
    return folder


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its kind and bytes (links: their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir() else ("file", p.read_bytes())
    return out


# -- builders: each takes (tmp folder, stored results folder, monkeypatch) and returns argv ---------------------------
def _copy(t: Path, stored: Path) -> Path:
    dest = t / "r"
    shutil.copytree(stored, dest, symlinks=True)
    return dest


def _part(folder: Path) -> Path:
    return sorted((folder / "results.parquet").glob("part-*.parquet"))[0]


def _damaged(t, stored, how="truncate") -> Path:
    r = _copy(t, stored)
    part = _part(r)
    if how == "truncate":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    else:  # a folder where a part belongs
        part.unlink()
        part.mkdir()
    return r


def _entry(t, stored, name, kind) -> Path:
    r = _copy(t, stored)
    path = r / name
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if kind == "file":
        path.write_text("x")
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(t / "nowhere")
    return r


def _read_only(mp):
    """Every folder answers as on a read-only file system (the tests run as root, where chmod does not bite)."""
    mp.setattr(bench.preflight, "probe_writable", lambda folder: "Read-only file system")


def _odd_entry(t, stored, folder) -> Path:
    """A stored results folder where one cell's entry of ``folder`` is a folder."""
    r = _copy(t, stored)
    entry = next((r / folder).iterdir())
    entry.unlink()
    entry.mkdir()
    return r


def _hub(t: Path, *, unet: dict | None = None, scheduler: dict | None = None, weights: bool = False) -> str:
    """A flat diffusers folder: configs only unless ``weights`` (a tiny random UNet saved as safetensors)."""
    folder = t / "hub"
    if weights:
        import diffusers
        torch.manual_seed(0)
        diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                              layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                              up_block_types=("UpBlock2D",) * 2).save_pretrained(folder, safe_serialization=True)
    folder.mkdir(exist_ok=True)
    config = json.loads((folder / "config.json").read_text()) if weights else {
        "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1}
    (folder / "config.json").write_text(json.dumps({**config, **(unet or {})}))
    sched = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, **(scheduler or {})}
    (folder / "scheduler_config.json").write_text(json.dumps(sched))
    return f"hub:{folder}"


def _baseline(t, stored, column, value) -> str:
    df = ResultsStore(stored).read()[list(baseline_columns())]
    df = df.astype(object)
    df.loc[0, column] = value
    path = t / "baseline.csv"
    df.to_csv(path, index=False)
    return str(path)


def _env(mp, **env):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        mp.delenv(var, raising=False)
    for k, v in env.items():
        mp.setenv(k, v)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _raises_in_load(mp, exc):
    def load(*_, **__):
        warnings.warn("a third-party deprecation warning", FutureWarning)
        raise exc
    mp.setattr("pretrained.load", load)


# (class, case, builder(t, stored, mp) -> argv, words the one line must contain)
CASES = [
    # 1. the pre-flight runs the cell's own data-dependent checks
    ("checks that depend on the checkpoint", "t_eps 0 on a VP schedule", lambda t, s, mp: [*NLL, "nll:ode_heun,t_eps=0",
                                                                         "--results", f"{t}/r"], ["t_eps=0", "gmm-2d"]),
    ("checks that depend on the checkpoint", "t_eps 0, adaptive", lambda t, s, mp: [*NLL, "nll:ode_dopri5,t_eps=0", "--results",
                                                                  f"{t}/r"], ["ode_dopri5", "t_eps"]),
    ("checks that depend on the checkpoint", "t_eps 0, VLB", lambda t, s, mp: [*NLL, "nll:vlb_continuous,t_eps=0", "--results",
                                                             f"{t}/r"], ["vlb_continuous", "t_eps"]),
    ("checks that depend on the checkpoint", "discrete truncation on continuous data",
     lambda t, s, mp: [*NLL, "nll:ode_euler,truncation=discrete,dequantization=none", "--results", f"{t}/r"],
     ["truncation='discrete'", "gmm-2d"]),
    ("checks that depend on the checkpoint", "--nll-samples above the holdout set",
     lambda t, s, mp: [*NLL, "nll:vlb_continuous", "--checkpoint", "digits", "--nll-samples", "301", "--results",
                       f"{t}/r"], ["holdout", "301"]),
    ("checks that depend on the checkpoint", "hub UNet that does not run on its sample_size",
     lambda t, s, mp: [*RUN, "--checkpoint", _hub(t, unet={"sample_size": 5}, weights=True), "--results", f"{t}/r"],
     ["network fails", "(1, 5, 5)"]),
    # 2. every size has a cap (--allow-large lifts it)
    ("sizes above their caps", "--n-samples above the cap", lambda t, s, mp: [*RUN, "--n-samples", str(10**9), "--results", f"{t}/r"],
     ["--n-samples", "--allow-large"]),
    ("sizes above their caps", "--nll-samples above the cap", lambda t, s, mp: [*NLL, "nll:ode_heun", "--nll-samples", str(10**7),
                                                                "--results", f"{t}/r"], ["--nll-samples", "cap"]),
    ("sizes above their caps", "--batch-size above the cap", lambda t, s, mp: [*RUN, "--batch-size", str(10**8), "--results",
                                                               f"{t}/r"], ["--batch-size", "--allow-large"]),
    ("sizes above their caps", "--threads above the cap", lambda t, s, mp: [*RUN, "--threads", str(10**6), "--results", f"{t}/r"],
     ["--threads"]),
    ("sizes above their caps", "probe count above the cap", lambda t, s, mp: [*NLL, "nll:ode_heun,n_probes=1000000", "--results",
                                                              f"{t}/r"], ["n_probes", "--allow-large"]),
    ("sizes above their caps", "dequantisation draws above the cap", lambda t, s, mp: [*NLL, "nll:ode_rk4,n_dequant=99999999",
                                                                       "--results", f"{t}/r"], ["n_dequant"]),
    ("sizes above their caps", "more distinct seeds than the cap",
     lambda t, s, mp: [*RUN, "--seeds", *map(str, range(10_001)), "--results", f"{t}/r"], ["--seeds", "--allow-large"]),
    ("sizes above their caps", "hub sample_size above the cap", lambda t, s, mp: [*RUN, "--checkpoint",
                                                                  _hub(t, unet={"sample_size": 100000}),
                                                                  "--results", f"{t}/r"], ["sample_size", "cap"]),
    ("sizes above their caps", "hub channels above the cap", lambda t, s, mp: [*RUN, "--checkpoint",
                                                               _hub(t, unet={"in_channels": 4096, "out_channels": 4096}),
                                                               "--results", f"{t}/r"], ["in_channels", "cap"]),
    ("sizes above their caps", "hub block channels above the cap",
     lambda t, s, mp: [*RUN, "--checkpoint", _hub(t, unet={"block_out_channels": [8, 10**7]}), "--results", f"{t}/r"],
     ["block_out_channels", "--allow-large"]),
    ("sizes above their caps", "hub num_train_timesteps above the cap",
     lambda t, s, mp: [*RUN, "--checkpoint", _hub(t, scheduler={"num_train_timesteps": 10**10}), "--results", f"{t}/r"],
     ["num_train_timesteps", "--allow-large"]),
    ("sizes above their caps", "flow hub num_train_timesteps above the cap",
     lambda t, s, mp: [*RUN, "--checkpoint", _hub(t, scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                                "num_train_timesteps": 10**10}),
                       "--results", f"{t}/r"], ["num_train_timesteps", "--allow-large"]),
    # 3. the results folder's own entries
    ("results folder's own entries", "lock is a folder", lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, ".lock", "folder"))],
     [".lock", "should be a file"]),
    ("results folder's own entries", "markers folder is a file", lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, ".cells",
                                                                                                      "file"))],
     [".cells", "should be a folder"]),
    ("results folder's own entries", "cache is a file", lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, "cache", "file"))],
     ["cache", "should be a folder"]),
    ("results folder's own entries", "samples is a file", lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, "samples", "file"))],
     ["samples", "should be a folder"]),
    ("results folder's own entries", "markers folder a dangling link",
     lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, ".cells", "link"))], [".cells", "move it out"]),
    ("results folder's own entries", "a marker that is a folder",
     lambda t, s, mp: [*RUN, "--results", str(_odd_entry(t, s, ".cells"))], ["not a plain file"]),
    ("results folder's own entries", "a kept-samples entry that is a folder",
     lambda t, s, mp: [*RUN, "--results", str(_odd_entry(t, s, "samples"))], ["samples", "not a plain file"]),
    ("results folder's own entries", "dataset a dangling link",
     lambda t, s, mp: [*RUN, "--results", str(_entry(t, s, "results.parquet", "link"))], ["results.parquet"]),
    ("results folder's own entries", "run on a read-only results folder",
     lambda t, s, mp: (_read_only(mp), [*RUN, "--results", str(_copy(t, s))])[1], ["not writable"]),
    ("results folder's own entries", "compact with the lock a folder",
     lambda t, s, mp: ["compact", "--results", str(_entry(t, s, ".lock", "folder"))], [".lock"]),
    # 4. report, baseline, compact outputs
    ("report, baseline and compact outputs", "report --out is a file", lambda t, s, mp: ["report", "--results", str(_copy(t, s)), "--out",
                                                             f"{t}/r/.lock"], [".lock", "is a file"]),
    ("report, baseline and compact outputs", "report --out under a file", lambda t, s, mp: ["report", "--results", str(_copy(t, s)), "--out",
                                                                f"{t}/r/results.parquet/{_part(t / 'r').name}/rep"],
     ["not writable"]),
    ("report, baseline and compact outputs", "report with a damaged samples file",
     lambda t, s, mp: ["report", "--results", str(_samples_damaged(t, s))], ["samples file", "damaged"]),
    ("report, baseline and compact outputs", "baseline --out is a folder", lambda t, s, mp: ["baseline", "--results", str(_copy(t, s)), "--out",
                                                                 f"{t}/r/cache"], ["is a folder"]),
    ("report, baseline and compact outputs", "baseline --out under a file", lambda t, s, mp: ["baseline", "--results", str(_copy(t, s)), "--out",
                                                                  f"{t}/r/.lock/b.csv"], [".lock", "is a file"]),
    ("report, baseline and compact outputs", "report of a read-only results folder",
     lambda t, s, mp: (_read_only(mp), ["report", "--results", str(_copy(t, s))])[1], ["not writable", "Read-only"]),
    ("report, baseline and compact outputs", "compact of a read-only results folder",
     lambda t, s, mp: (_read_only(mp), ["compact", "--results", str(_copy(t, s))])[1], ["not writable"]),
    ("report, baseline and compact outputs", "baseline into a read-only folder",
     lambda t, s, mp: (_read_only(mp), ["baseline", "--results", str(_copy(t, s)), "--out", f"{t}/b.csv"])[1],
     ["baseline --out", "not writable"]),
    # 5. the distributed environment
    ("distributed environment", "WORLD_SIZE not a number", lambda t, s, mp: (_env(mp, WORLD_SIZE="two"),
                                                                 [*RUN, "--results", f"{t}/r"])[1], ["WORLD_SIZE"]),
    ("distributed environment", "RANK not a number", lambda t, s, mp: (_env(mp, WORLD_SIZE="2", RANK="first"),
                                                           [*RUN, "--results", f"{t}/r"])[1], ["RANK"]),
    ("distributed environment", "WORLD_SIZE without RANK", lambda t, s, mp: (_env(mp, WORLD_SIZE="2"),
                                                                 [*RUN, "--results", f"{t}/r"])[1],
     ["RANK", "torchrun"]),
    ("distributed environment", "RANK beyond WORLD_SIZE", lambda t, s, mp: (_env(mp, WORLD_SIZE="2", RANK="2"),
                                                                [*RUN, "--results", f"{t}/r"])[1], ["RANK=2"]),
    ("distributed environment", "RANK without WORLD_SIZE", lambda t, s, mp: (_env(mp, RANK="1"),
                                                                 [*RUN, "--results", f"{t}/r"])[1], ["RANK=1"]),
    ("distributed environment", "WORLD_SIZE zero", lambda t, s, mp: (_env(mp, WORLD_SIZE="0"),
                                                         [*RUN, "--results", f"{t}/r"])[1], ["WORLD_SIZE=0"]),
    ("distributed environment", "no MASTER_ADDR", lambda t, s, mp: (_env(mp, WORLD_SIZE="2", RANK="0"),
                                                        [*RUN, "--results", f"{t}/r"])[1], ["MASTER_ADDR"]),
    ("distributed environment", "MASTER_PORT out of range",
     lambda t, s, mp: (_env(mp, WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="99999"),
                       [*RUN, "--results", f"{t}/r"])[1], ["MASTER_PORT"]),
    ("distributed environment", "a peer that never comes",
     lambda t, s, mp: (_env(mp, WORLD_SIZE="2", RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port()),
                       mp.setattr(bench.dist, "RENDEZVOUS_TIMEOUT_S", 0.5), [*RUN, "--results", f"{t}/r"])[2],
     ["did not meet", "torchrun"]),
    # 6. baseline values
    ("baseline values", "nan metric", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "solver_error_median", "nan"),
                                                  "--results", str(s)], ["non-finite", "nan"]),
    ("baseline values", "-inf metric", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "frechet", "-inf"),
                                                   "--results", str(s)], ["non-finite"]),
    ("baseline values", "seed beyond int64", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "seed", str(2**64)),
                                                         "--results", str(s)], ["out of range", str(2**64)]),
    ("baseline values", "NFE zero", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "nfe", "0"), "--results",
                                                str(s)], ["nfe", "out of range"]),
    ("baseline values", "negative n_samples", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "n_samples", "-8"),
                                                          "--results", str(s)], ["n_samples", "out of range"]),
    ("baseline values", "huge float as an integer", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "seed", "1e30"),
                                                                "--results", str(s)], ["not integers"]),
    # 7. cell identity: options that cannot change a result are refused
    ("cell identity", "probe count under exact divergence",
     lambda t, s, mp: [*NLL, "nll:ode_heun,divergence=exact,n_probes=4", "--results", f"{t}/r"], ["n_probes", "exact"]),
    ("cell identity", "probe kind under exact divergence",
     lambda t, s, mp: [*NLL, "nll:ode_dopri5,divergence=exact,probe=gaussian", "--results", f"{t}/r"], ["probe"]),
    ("cell identity", "a threshold ratio without thresholding",
     lambda t, s, mp: [*RUN, "--sampler", "dpm_solver++,threshold_ratio=0.9", "--results", f"{t}/r"],
     ["threshold_ratio", "thresholding='none'"]),
    ("cell identity", "lower-order final steps of a singlestep solver",
     lambda t, s, mp: [*RUN, "--sampler", "dpm_solver_3,lower_order_final=False", "--results", f"{t}/r"],
     ["lower_order_final", "singlestep"]),
    ("cell identity", "a probe option at its default under exact divergence",
     lambda t, s, mp: [*NLL, "nll:ode_euler,divergence=exact,n_probes=1", "--results", f"{t}/r"], ["n_probes"]),
    # 8. other people's noise
    ("third-party output and failures", "diffusers warns, then the config is refused",
     lambda t, s, mp: [*RUN, "--checkpoint", _hub(t, scheduler={"beta_end": 2.0, "no_such_key": 1}), "--results",
                       f"{t}/r"], ["scheduler_config.json", "beta_end"]),
    ("third-party output and failures", "a multi-line third-party failure",
     lambda t, s, mp: (_raises_in_load(mp, RuntimeError("CUDA said no\n  at frame 1\n  at frame 2")),
                       [*RUN, "--results", f"{t}/r"])[1], ["gmm-2d", "CUDA said no"]),
    ("third-party output and failures", "a warning, then a multi-line refusal",
     lambda t, s, mp: (_raises_in_load(mp, ValueError("first line\nsecond line")), [*RUN, "--results", f"{t}/r"])[1],
     ["first line second line"]),
    ("third-party output and failures", "a diffusers scheduler failure", lambda t, s, mp: [
        *RUN, "--checkpoint", _hub(t, scheduler={"beta_schedule": "nope"}), "--results", f"{t}/r"], ["nope"]),
    # 9. a damaged stored part blocks every command, naming it and the way out
    ("damaged stored part", "run", lambda t, s, mp: [*RUN, "--results", str(_damaged(t, s))], ["part-", "--drop-damaged"]),
    ("damaged stored part", "report", lambda t, s, mp: ["report", "--results", str(_damaged(t, s))], ["part-", "damaged"]),
    ("damaged stored part", "check", lambda t, s, mp: ["check", "--baseline", _baseline(t, s, "status", "ok"), "--results",
                                                str(_damaged(t, s))], ["part-", "--drop-damaged"]),
    ("damaged stored part", "baseline", lambda t, s, mp: ["baseline", "--results", str(_damaged(t, s)), "--out",
                                                   f"{t}/b.csv"], ["part-", "damaged"]),
    ("damaged stored part", "compact", lambda t, s, mp: ["compact", "--results", str(_damaged(t, s))], ["part-", "damaged"]),
    ("damaged stored part", "a folder where a part belongs", lambda t, s, mp: [*RUN, "--results", str(_damaged(t, s, "dir"))],
     ["part-", "damaged"]),
]


def _samples_damaged(t, stored) -> Path:
    r = _copy(t, stored)
    for f in (r / "samples").glob("*.npy"):
        f.write_bytes(b"\x93NUMPY garbage")
    return r


@pytest.mark.parametrize("klass,case,argv,words", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(klass, case, argv, words, stored, tmp_path, capsys,
                                                              monkeypatch):
    args = argv(tmp_path, stored, monkeypatch)
    before = snapshot(tmp_path)
    stored_before = snapshot(stored)
    assert_one_line_exit_2(args, words, capsys)
    assert snapshot(tmp_path) == before, "a refused command must leave every file as it was"
    assert snapshot(stored) == stored_before


def test_the_table_covers_nine_classes_with_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == 9
    assert f"`tests/test_hostile_inputs.py` ({len(CASES)} in all)" in (ROOT / "README.md").read_text()


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupt(*_, **__):
        raise KeyboardInterrupt
    for target in ("bench.preflight.load_checkpoints", "bench.cli.build_parser"):
        with monkeypatch.context() as mp:
            mp.setattr(target, interrupt)
            assert main([*RUN, "--results", f"{tmp_path}/r"]) == 130
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("interrupted"), err
        assert not (tmp_path / "r").exists()


def test_verbose_shows_the_warnings_held_back(tmp_path, capsys, monkeypatch):
    _raises_in_load(monkeypatch, RuntimeError("boom"))
    with warnings.catch_warnings():  # pytest records warnings itself: print them to stderr as Python would
        warnings.simplefilter("always")
        warnings.showwarning = lambda msg, cat, path, line, file=None, text=None: sys.stderr.write(
            warnings.formatwarning(msg, cat, path, line, text))
        assert main([*RUN, "--results", f"{tmp_path}/r", "--verbose"]) == 2
    assert "a third-party deprecation warning" in capsys.readouterr().err


def test_allow_large_lifts_a_size_cap(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.preflight.RUN_SIZES, "--n-samples", 4)
    assert main([*RUN, "--results", f"{tmp_path}/a"]) == 2
    assert main([*RUN, "--results", f"{tmp_path}/b", "--allow-large"]) == 0


def test_equal_computations_get_equal_cell_ids():
    """-0.0 is 0.0 in a cell's key, for sampler options and guidance alike."""
    a, b = resolve_samplers(["ddim,eta=-0.0"])[0], resolve_samplers(["ddim,eta=0"])[0]
    assert Cell("gmm-2d", a, 3, 0, 8).cell_id == Cell("gmm-2d", b, 3, 0, 8).cell_id
    assert Cell("x", a, 3, 0, 8, guidance=-0.0).cell_id == Cell("x", b, 3, 0, 8, guidance=0.0).cell_id
    assert len(resolve_samplers(["ddim,eta=-0.0", "ddim,eta=0"])) == 1


def test_compact_drop_damaged_recovers_and_the_next_run_recomputes(stored, tmp_path, capsys):
    r = _damaged(tmp_path, stored)
    assert main(["compact", "--results", str(r), "--drop-damaged"]) == 0
    assert len(list((r / "damaged").iterdir())) == 1
    assert main([*RUN, "--results", str(r)]) == 0
    assert "ok: 1" in capsys.readouterr().out


def test_a_report_is_all_or_nothing(stored, tmp_path):
    """A report that fails midway (a damaged samples file) leaves no file; one that succeeds leaves no staging."""
    r = _samples_damaged(tmp_path, stored)
    assert main(["report", "--results", str(r), "--out", f"{tmp_path}/rep"]) == 2
    assert not (tmp_path / "rep").exists() and not list(tmp_path.glob(".report*"))
    assert main(["report", "--results", str(stored), "--out", f"{tmp_path}/rep"]) == 0
    assert (tmp_path / "rep" / "gmm-2d" / "README.md").is_file() and not list(tmp_path.rglob(".report*"))


def test_diffusers_warnings_are_held_back_in_a_real_process(tmp_path):
    """diffusers' logging handler writes to the process's own stderr: still one line (--verbose would show it)."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "bench", *RUN, "--checkpoint",
            _hub(tmp_path, scheduler={"beta_end": 2.0, "no_such_key": 1}), "--results", f"{tmp_path}/r"]
    quiet = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    assert "no_such_key" not in quiet.stderr and not (tmp_path / "r").exists()
