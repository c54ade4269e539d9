"""The solver-error reference (issue 25): a bounded subset, its cost and own error on every row, and the same
reference whatever the batch size or the number of ranks."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import pretrained
import samplers
from bench.grid import Cell
from bench.metrics.accumulate import FLOOR_FACTOR, solver_error_metrics
from bench.runner import REFERENCE_CHUNK, ReferenceCache, RunOptions, reference_chunks, reference_count, run_cell
from bench.store import ResultsStore
from pretrained import reference

ROOT = Path(__file__).resolve().parent.parent
PY = "py:py_factories:edm_gray"  # a tiny float64 network: its reference is solved (ReferenceSolver), cheaply


@pytest.mark.parametrize("k", [*range(1, 140), 200, 1000, 4099])
def test_chunks_cover_the_indices_and_split_evenly_over_two_ranks(k):
    chunks = reference_chunks(k)
    assert [lo for lo, _ in chunks] == [0, *(hi for _, hi in chunks[:-1])] and chunks[-1][1] == k
    sizes = [hi - lo for lo, hi in chunks]
    assert max(sizes) <= REFERENCE_CHUNK and max(sizes) - min(sizes) <= 1
    assert len(chunks) % 2 == 0 or k == 1
    halves = sum(sizes[0::2]), sum(sizes[1::2])  # chunk c on rank c mod 2
    assert abs(halves[0] - halves[1]) <= max(1, len(chunks) // 2)


def test_solver_error_metrics_by_hand():
    err = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = solver_error_metrics(err, reference_error=2.5 / FLOOR_FACTOR)  # median: torch's lower median
    assert out["solver_error_mean"] == 2.5 and out["solver_error_median"] == 2.0 and out["reference_n"] == 4
    assert out["solver_error_se"] == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)  # unbiased std / sqrt(n)
    assert out["at_reference_floor"] is True and out["reference_error"] == 0.25
    assert solver_error_metrics(err, reference_error=0.24)["at_reference_floor"] is False
    exact = solver_error_metrics(err)
    assert exact["at_reference_floor"] is False and "reference_error" not in exact
    assert math.isnan(solver_error_metrics(err[:1])["solver_error_se"])


def test_reference_error_is_the_distance_to_the_tight_solve_and_is_cached(tmp_path, monkeypatch):
    ck = pretrained.load(PY)
    solver = ck.reference_solver
    assert solver.nfe == reference.REFERENCE_NFE and solver.tight_nfe == reference.TIGHT_FACTOR * solver.nfe
    t_end = samplers.grids.end_time(ck.model.schedule, None)
    x_T = samplers.initial_noise(0, range(2), ck.data_shape, std=ck.model.schedule.prior_std)
    sampler = samplers.get(reference.REFERENCE_SOLVER, grid=reference.REFERENCE_GRID, t_end=t_end)
    a, b = (sampler.sample(ck.model, x_T.double(), n) for n in (solver.nfe, solver.tight_nfe))
    expected = float((a - b).flatten(1).norm(dim=1).mean())
    assert expected > 0
    assert ReferenceCache(tmp_path).error(ck, t_end, "cpu") == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(type(solver), "solve", lambda *a, **k: pytest.fail("solved again"))
    assert ReferenceCache(tmp_path).error(ck, t_end, "cpu") == pytest.approx(expected, rel=1e-12)  # read back
    assert ReferenceCache(None).error(pretrained.load("gmm-2d"), t_end, "cpu") is None  # exact: no estimate


def test_rows_carry_the_subset_its_se_and_the_reference_cost(tmp_path):
    from bench.cli import main
    args = ["run", "--checkpoint", "gmm-2d", PY, "--sampler", "ddim", "--nfe", "4", "--seeds", "0", "--n-samples",
            "20", "--quiet", "--results", str(tmp_path)]
    assert main([*args, "--reference-samples", "7"]) == 0
    rows = ResultsStore(tmp_path).read().set_index("checkpoint")
    assert (rows["reference_n"] == 7).all() and (rows["solver_error_se"] > 0).all() and (rows["reference_s"] > 0).all()
    gmm, py = rows.loc["gmm-2d"], rows.loc[PY]
    assert gmm["reference_exact"] and pd.isna(gmm["reference_nfe"]) and not gmm["at_reference_floor"]
    assert py["reference_nfe"] == reference.REFERENCE_NFE and py["reference_error"] > 0
    assert py["at_reference_floor"] == (py["solver_error_mean"] <= FLOOR_FACTOR * py["reference_error"])


def test_hub_reference_costs_the_same_for_1024_and_4096_samples(tmp_path, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setattr(reference, "REFERENCE_NFE", 20)  # the cost's shape, not the reference's accuracy
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    calls, costs = [], []
    for n in (1024, 4096):
        ck, refs = pretrained.load(f"hub:{tmp_path}"), ReferenceCache(None)
        cell = Cell(ck.name, samplers.get("ddim"), 2, 0, n)  # a random UNet's samples diverge: the row is not the point
        with ck.reference_solver.model.counting() as count:
            run_cell(ck, cell, refs, RunOptions(batch_size=1024))
        calls.append(count.n)
        k = reference_count(ck, cell, RunOptions())
        costs.append((k, refs.cost(ck, 0, k, ck.model.schedule.t_end, torch.device("cpu"))["reference_nfe"]))
    assert costs == [(128, 20), (128, 20)]
    # 2 chunks of 64 and the 2-sample error estimate (20 + 40 NFE), whatever the cell's size
    assert calls[0] == calls[1] == 2 * 20 + 20 + 40


def test_reference_is_identical_over_world_size_and_batch_size(tmp_path):
    """The cached reference chunks, the reference's error and every solver error: one process at batch 40 and
    torchrun's 2 ranks (gloo) at batch 7 agree bit for bit (150 samples: 4 chunks, 75 per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    args = ["run", "--checkpoint", PY, "--sampler", "ddim", "--nfe", "4", "--seeds", "0", "--n-samples",
            "150", "--reference-samples", "150", "--threads", "1", "--quiet"]
    one = subprocess.run([sys.executable, "-m", "bench", *args, "--batch-size", "40", "--results",
                          str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "bench", *args,
                          "--batch-size", "7", "--results", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    files = {d: sorted((tmp_path / d / "cache").glob("reference-*.safetensors")) for d in ("one", "two")}
    assert len(files["one"]) == len(reference_chunks(150)) == 4
    assert [f.name for f in files["one"]] == [f.name for f in files["two"]]
    for f, g in zip(files["one"], files["two"]):
        assert torch.equal(load_file(str(f))["x"], load_file(str(g))["x"])
    a, b = (ResultsStore(tmp_path / d).read().set_index("cell_id").sort_index() for d in ("one", "two"))
    assert list(b["world_size"].unique()) == [2] and (a["reference_n"] == 150).all()
    for col in ("solver_error_mean", "solver_error_median", "solver_error_se", "reference_error"):
        assert a[col].to_numpy().tolist() == b[col].to_numpy().tolist()
