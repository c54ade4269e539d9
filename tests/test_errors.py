"""Every user error the README's table lists: exit code 2, one line naming the value and what is allowed,
and nothing written. One case per error class; the README table is checked against this list."""
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BASE = ["run", "--checkpoint", "gmm-2d", "--n-samples", "8", "--seeds", "0", "--quiet"]
RUN = [*BASE, "--nfe", "3"]


def _hub_folder(tmp: Path, kind: str) -> str:
    """A diffusers-format folder broken in one way."""
    folder = tmp / f"hub-{kind}"
    folder.mkdir()
    if kind == "empty":
        return str(folder)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 8,
                                                     "in_channels": 1, "out_channels": 1}))
    sched = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}
    if kind == "bad-scheduler-class":
        sched["_class_name"] = "os.system"
    if kind == "flow-dynamic-shift":
        sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True}
    (folder / "scheduler_config.json").write_text(json.dumps(sched))
    if kind == "pickle-only":
        torch.save({"w": torch.zeros(1)}, folder / "diffusion_pytorch_model.bin")
    if kind == "bad-json":
        (folder / "config.json").write_text("{not json")
    return str(folder)


def _fid_ref(tmp: Path, kind: str) -> str:
    """A --fid-ref file broken in one way (issue 20)."""
    import numpy as np

    if kind == "pickle":
        path = tmp / "ref.pkl"
        path.write_bytes(b"\x80\x04K\x01.")  # pickle.dumps(1)
        return str(path)
    path = tmp / f"ref-{kind}.npz"
    if kind == "too-few":
        np.savez(path, images=np.zeros((3, 8, 8), np.uint8))
    elif kind == "nan-statistics":
        np.savez(path, mu=np.full(64, np.nan), sigma=np.eye(64))
    elif kind == "rgb-16":
        np.savez(path, images=np.zeros((8, 16, 16, 3), np.uint8))
    return str(path)


def _results_with(tmp: Path, kind: str) -> str:
    folder = tmp / f"results-{kind}"
    folder.mkdir()
    if kind == "foreign-parquet":
        pd.DataFrame({"a": [1]}).to_parquet(folder / "results.parquet")
    return str(folder)


def _baseline(tmp: Path, kind: str) -> str:
    """A baseline CSV (all of check's columns) broken in one way."""
    from bench.check import baseline_columns

    path = tmp / f"baseline-{kind}.csv"
    row = {"checkpoint": "gmm-2d", "sampler": "ddim", "sampler_config": "{}", "nfe": 3, "seed": 0, "n_samples": 8,
           "state_dtype": "float64", "net_dtype": "native", "status": "ok"}
    df = pd.DataFrame([{c: row.get(c, 0.1) for c in baseline_columns()}])
    if kind == "empty":
        df = df.iloc[:0]
    elif kind == "unknown-status":
        df["status"] = "great"
    elif kind == "unknown-column":
        df["colour"] = "red"
    df.to_csv(path, index=False)
    return str(path)


# (error class, argv builder, words the message must contain)
CASES = [
    ("unknown sampler", lambda t: [*RUN, "--sampler", "nope", "--results", f"{t}/r"], ["nope", "allowed"]),
    ("sampler glob matching nothing", lambda t: [*RUN, "--sampler", "zz*", "--results", f"{t}/r"], ["zz*"]),
    ("sampler option not key=value", lambda t: [*RUN, "--sampler", "ddim,eta", "--results", f"{t}/r"], ["key=value"]),
    ("unknown sampler option", lambda t: [*RUN, "--sampler", "ddim,foo=1", "--results", f"{t}/r"], ["foo", "allowed"]),
    ("sampler option of the wrong type", lambda t: [*RUN, "--sampler", "ddim,eta=abc", "--results", f"{t}/r"],
     ["eta", "abc"]),
    ("sampler option not among its choices", lambda t: [*RUN, "--sampler", "ddim,grid=nope", "--results", f"{t}/r"],
     ["grid", "allowed"]),
    ("negative eta", lambda t: [*RUN, "--sampler", "ddim,eta=-1", "--results", f"{t}/r"], ["eta", "-1"]),
    ("t_end negative", lambda t: [*RUN, "--sampler", "ddim,t_end=-1.0", "--results", f"{t}/r"], ["t_end", "-1"]),
    ("t_end zero", lambda t: [*RUN, "--sampler", "euler,t_end=0", "--results", f"{t}/r"], ["t_end", "0"]),
    ("option a preset fixes", lambda t: [*RUN, "--sampler", "dpm_solver++_2m,order=3", "--results", f"{t}/r"],
     ["fixes", "order"]),
    ("thresholding ratio above 1", lambda t: [*RUN, "--sampler", "dpm_solver++,threshold_ratio=1.5",
                                              "--results", f"{t}/r"], ["threshold_ratio", "1.5"]),
    ("negative adaptive tolerance", lambda t: [*RUN, "--sampler", "dpm_solver_adaptive,rtol=-0.1",
                                               "--results", f"{t}/r"], ["rtol", "-0.1"]),
    ("solver order out of range", lambda t: [*RUN, "--sampler", "dpm_solver,order=5", "--results", f"{t}/r"],
     ["order", "5"]),
    ("invalid diffusers option value", lambda t: [*RUN, "--sampler", "diffusers:DPMSolverMultistepScheduler,"
                                                  "algorithm_type=nope", "--results", f"{t}/r"],
     ["algorithm_type", "nope"]),
    ("likelihood estimator with zero probes", lambda t: [*RUN, "--sampler", "nll:ode_heun,n_probes=0", "--results",
                                                          f"{t}/r"], ["n_probes", "0"]),
    ("unknown likelihood estimator", lambda t: [*RUN, "--sampler", "nll:ode_magic", "--results", f"{t}/r"],
     ["nll:ode_magic", "allowed"]),
    ("unknown checkpoint", lambda t: [*RUN[:1], "--checkpoint", "cifar", "--results", f"{t}/r"], ["cifar", "allowed"]),
    ("hub folder missing", lambda t: [*RUN[:1], "--checkpoint", f"hub:{t}/nowhere", "--results", f"{t}/r"],
     ["nowhere"]),
    ("hub folder empty", lambda t: [*RUN[:1], "--checkpoint", f"hub:{_hub_folder(t, 'empty')}", "--results",
                                    f"{t}/r"], ["hub-empty"]),
    ("hub folder with pickle weights only", lambda t: [*RUN[:1], "--checkpoint", f"hub:{_hub_folder(t, 'pickle-only')}",
                                                       "--results", f"{t}/r"], ["safetensors"]),
    ("hub scheduler class not a diffusers scheduler",
     lambda t: [*RUN[:1], "--checkpoint", f"hub:{_hub_folder(t, 'bad-scheduler-class')}", "--results", f"{t}/r"],
     ["os.system"]),
    ("hub config not JSON", lambda t: [*RUN[:1], "--checkpoint", f"hub:{_hub_folder(t, 'bad-json')}", "--results",
                                       f"{t}/r"], ["config.json"]),
    ("hub scheduler config not supported",
     lambda t: [*RUN[:1], "--checkpoint", f"hub:{_hub_folder(t, 'flow-dynamic-shift')}", "--results", f"{t}/r"],
     ["use_dynamic_shifting=True is not supported", "allowed"]),
    ("py checkpoint not module:factory", lambda t: [*RUN[:1], "--checkpoint", "py:examples.my_model", "--results",
                                                    f"{t}/r"], ["py:package.module:factory"]),
    ("py factory missing", lambda t: [*RUN[:1], "--checkpoint", "py:examples.my_model:nothing", "--results",
                                      f"{t}/r"], ["has no function 'nothing'"]),
    ("FID reference that needs pickle", lambda t: [*RUN, "--fid-ref", _fid_ref(t, "pickle"), "--results", f"{t}/r"],
     ["pickle", "never loaded"]),
    ("FID reference of too few images", lambda t: [*RUN, "--fid-ref", _fid_ref(t, "too-few"), "--results", f"{t}/r"],
     ["3 images", "at least 4"]),
    ("FID statistics not finite", lambda t: [*RUN, "--fid-ref", _fid_ref(t, "nan-statistics"), "--results",
                                             f"{t}/r"], ["non-finite"]),
    ("FID reference of another shape", lambda t: [*RUN, "--checkpoint", "digits", "--fid-ref", _fid_ref(t, "rgb-16"),
                                                  "--results", f"{t}/r"], ["(3, 16, 16)", "digits"]),
    ("FID reference for a checkpoint without images", lambda t: [*RUN, "--fid-ref", _fid_ref(t, "rgb-16"),
                                                                 "--results", f"{t}/r"], ["gmm-2d", "not images"]),
    ("feature extractor without a reference", lambda t: [*RUN, "--fid-extractor", "inception-v3-compat", "--results",
                                                         f"{t}/r"], ["--fid-extractor", "--fid-ref"]),
    ("NFE zero", lambda t: [*BASE, "--nfe", "0", "--results", f"{t}/r"], ["NFE", "0"]),
    ("NFE negative", lambda t: [*BASE, "--nfe", "-3", "--results", f"{t}/r"], ["-3"]),
    ("NFE above the cap", lambda t: [*BASE, "--nfe", "100000", "--results", f"{t}/r"],
     ["100000", "--allow-large-nfe"]),
    ("NFE not an integer", lambda t: [*BASE, "--nfe", "ten", "--results", f"{t}/r"], ["ten"]),
    ("zero samples", lambda t: [*RUN, "--n-samples", "0", "--results", f"{t}/r"], ["--n-samples", "0"]),
    ("negative samples", lambda t: [*RUN, "--n-samples", "-5", "--results", f"{t}/r"], ["--n-samples", "-5"]),
    ("zero batch size", lambda t: [*RUN, "--batch-size", "0", "--results", f"{t}/r"], ["--batch-size", "0"]),
    ("negative batch size", lambda t: [*RUN, "--batch-size", "-1", "--results", f"{t}/r"], ["--batch-size", "-1"]),
    ("negative threads", lambda t: [*RUN, "--threads", "-1", "--results", f"{t}/r"], ["--threads", "-1"]),
    ("negative seed", lambda t: [*RUN, "--seeds", "-1", "--results", f"{t}/r"], ["-1"]),
    ("seed beyond int64", lambda t: [*RUN, "--seeds", str(2**64), "--results", f"{t}/r"], [str(2**64)]),
    ("unknown device", lambda t: [*RUN, "--device", "tpu", "--results", f"{t}/r"], ["tpu", "allowed"]),
    ("unknown state dtype", lambda t: [*RUN, "--state-dtype", "float16", "--results", f"{t}/r"], ["float16"]),
    ("unknown network dtype", lambda t: [*RUN, "--net-dtype", "int8", "--results", f"{t}/r"], ["int8"]),
    ("guidance on an unconditional checkpoint", lambda t: [*RUN, "--guidance", "2", "--results", f"{t}/r"],
     ["--guidance", "gmm-2d", "unconditional", "digits-cond"]),
    ("negative guidance scale", lambda t: [*RUN, "--guidance", "1", "-1", "--results", f"{t}/r"],
     ["--guidance -1", "allowed: [0, inf)"]),
    ("shard index out of range", lambda t: [*RUN, "--shard", "3/2", "--results", f"{t}/r"], ["3/2"]),
    ("shard not i/N", lambda t: [*RUN, "--shard", "half", "--results", f"{t}/r"], ["half"]),
    ("results path is a file", lambda t: [*RUN, "--sampler", "ddim", "--results", str(ROOT / "README.md")],
     ["README.md", "file"]),
    ("results path not writable", lambda t: [*RUN, "--sampler", "ddim", "--results", "/dev/null/r"],
     ["/dev/null/r", "not writable"]),
    ("foreign parquet in the results folder", lambda t: [*RUN, "--sampler", "ddim", "--results",
                                                         _results_with(t, "foreign-parquet")],
     ["not a samplerbench results file"]),
    ("unknown command", lambda t: ["frobnicate"], ["frobnicate"]),
    ("unknown flag", lambda t: [*RUN, "--frobnicate", "--results", f"{t}/r"], ["--frobnicate"]),
    ("report of a folder without results", lambda t: ["report", "--results", f"{t}/none", "--out", f"{t}/out"],
     ["no results"]),
    ("check against a missing baseline", lambda t: ["check", "--baseline", f"{t}/none.csv", "--results", f"{t}/r"],
     ["none.csv"]),
    ("check against an empty baseline", lambda t: ["check", "--baseline", _baseline(t, "empty"), "--results",
                                                   _results_with(t, "plain")], ["no cells"]),
    ("baseline with an unknown status", lambda t: ["check", "--baseline", _baseline(t, "unknown-status"),
                                                   "--results", _results_with(t, "plain")], ["great", "allowed"]),
    ("baseline with an unknown column", lambda t: ["check", "--baseline", _baseline(t, "unknown-column"),
                                                   "--results", _results_with(t, "plain")], ["colour"]),
    ("negative check tolerance", lambda t: ["check", "--baseline", _baseline(t, "unknown-status"), "--rtol", "-1",
                                            "--results", _results_with(t, "plain")], ["rtol", "-1"]),
    ("baseline of a folder without results", lambda t: ["baseline", "--results", f"{t}/none", "--out",
                                                        f"{t}/b.csv"], ["no results"]),
    ("compact of a folder without results", lambda t: ["compact", "--results", f"{t}/none"], ["no results"]),
]


def assert_one_line_exit_2(args, words, capsys) -> None:
    """``main(args)`` exits 2 with one line on stderr, "error: ..." containing every one of ``words``."""
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2_and_writes_nothing(name, argv, words, tmp_path, capsys):
    if name == "unknown device" and torch.cuda.is_available():
        pytest.skip("checked on CPU machines")
    args = argv(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert_one_line_exit_2(args, words, capsys)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, "an error must write nothing"


def test_readme_error_table_lists_every_class():
    table = re.search(r"### Errors\n(.*?)\n#", README, re.S).group(1)  # up to the next heading
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    from test_hostile_inputs import CASES as HOSTILE  # one row per class of issue 18

    assert sorted(rows[1:]) == sorted([c[0] for c in CASES] + list(dict.fromkeys(c[0] for c in HOSTILE)))
    assert len(CASES) >= 40
