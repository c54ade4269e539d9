"""Conditioning and classifier-free guidance at the model boundary, the guided sweep and its metrics."""
import math

import pandas as pd
import pytest
import torch

import samplers
from bench.cli import main
from bench.grid import make_cells, resolve_samplers
from bench.metrics.guided import GuidedAccumulator, guided_metrics
from samplers.model import ClassLabels, DiffusionModel, check_guidance
from samplers.noise import sample_labels

C = 3  # classes of the tiny model; label C is the null class


def _tiny_net(x, t, y=None):
    """A conditional 'network' whose output of each sample depends on that sample only: exact under batching."""
    y = torch.full((x.shape[0],), C) if y is None else y
    shift = (y.to(x.dtype) - 1.0).reshape(-1, *([1] * (x.dim() - 1))) * 0.3
    return torch.tanh(x * (0.5 + t.reshape(-1, *([1] * (x.dim() - 1))))) + shift


def tiny(prediction="eps", **kw) -> DiffusionModel:
    return DiffusionModel(_tiny_net, samplers.VPLinear(), prediction, data_shape=(1, 4, 4), net_dtype=torch.float64,
                          name="tiny-cond", condition=ClassLabels(C), **kw)


def _x(n=6, seed=0):
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_scale_1_is_the_conditional_and_scale_0_the_unconditional_model_exactly(prediction):
    m, x, y = tiny(prediction), _x(), torch.tensor([0, 1, 2, 2, 1, 0])
    cond = DiffusionModel(lambda x, t: _tiny_net(x, t, y.to(x.device)), m.schedule, prediction, data_shape=(1, 4, 4),
                          net_dtype=torch.float64)
    for t in (0.02, 0.5, 1.0):
        assert torch.equal(m.guided(y, 1).eps(x, t), cond.eps(x, t))
        assert torch.equal(m.guided(y, 0).eps(x, t), m.eps(x, t))
        assert torch.equal(m.guided(y, 0.0).x0(x, t), m.x0(x, t))


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_one_batched_call_equals_two_separate_calls(prediction):
    """eps_u + s (eps_c - eps_u): both branches in one network call, as if computed apart."""
    calls = []

    def net(x, t, y=None):
        calls.append(len(x))
        return _tiny_net(x, t, y)

    m = tiny(prediction).replace(fn=net)
    x, y, s = _x(), torch.tensor([2, 0, 1, 1, 0, 2]), 3.5
    with m.counting() as c:
        guided = m.guided(y, s).eps(x, 0.4)
    assert calls == [12] and c.n == 1 and c.passes == 2  # one call, one NFE, two passes per sample
    eps_c, eps_u = m.guided(y, 1).eps(x, 0.4), m.eps(x, 0.4)
    torch.testing.assert_close(guided, eps_u + s * (eps_c - eps_u), rtol=1e-12, atol=1e-12)


def test_the_unet_batched_call_matches_two_calls():
    from pretrained.digits import as_model
    from pretrained.nets import UNet

    torch.manual_seed(0)
    m = as_model(UNet(channels=(8, 16), emb_dim=16, groups=4, num_classes=10), "unet-cond")
    x = torch.randn(5, 1, 8, 8)
    y = torch.tensor([3, 1, 4, 1, 5])
    eps_c, eps_u = m.guided(y, 1).eps(x, 0.3), m.eps(x, 0.3)
    torch.testing.assert_close(m.guided(y, 2.0).eps(x, 0.3), eps_u + 2.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


def test_guided_view_counts_on_the_models_counters_and_scale_1_is_one_pass():
    m, x, y = tiny(), _x(4), torch.tensor([0, 1, 2, 0])
    with m.counting() as c:
        m.guided(y, 1).eps(x, 0.5)
        m.guided(y, 0).eps(x, 0.5)
        m.guided(y, 2).eps(x, 0.5)
        m.eps(x, 0.5)
    assert (c.n, c.passes) == (4, 5)
    assert m.nfe == 4 and m.network_passes == 5


def test_labels_are_balanced_and_depend_on_seed_and_index_only():
    y = sample_labels(7, range(1000), 10)
    assert torch.bincount(y, minlength=10).tolist() == [100] * 10
    for n in (1, 9, 23):  # any prefix: each class floor or ceil of n / 10 times
        counts = torch.bincount(sample_labels(7, range(n), 10), minlength=10)
        assert counts.min() >= n // 10 and counts.max() <= -(-n // 10)
    # batch size: drawn in batches of 7, of 1, or at once
    parts = torch.cat([sample_labels(7, range(lo, min(lo + 7, 100)), 10) for lo in range(0, 100, 7)])
    assert torch.equal(parts, y[:100])
    assert torch.equal(torch.cat([sample_labels(7, [i], 10) for i in range(30)]), y[:30])
    # torchrun sharding: rank r of W takes indices r, r + W, ...
    for world in (2, 3):
        shards = {r: sample_labels(7, range(r, 100, world), 10) for r in range(world)}
        for r, labels in shards.items():
            assert torch.equal(labels, y[r:100:world])
    assert not torch.equal(sample_labels(8, range(100), 10), y[:100])  # the seed matters


def test_runner_draws_the_same_labels_for_any_batch_size_and_records_guidance(tmp_path):
    from bench.runner import RunOptions, run_sweep
    from bench.store import ResultsStore
    import pretrained

    if "digits-cond" not in pretrained.available():
        pytest.skip("digits-cond not registered")
    rows = {}
    for bs in (3, 16):
        out = tmp_path / f"bs{bs}"
        cells = make_cells(["digits-cond"], resolve_samplers(["ddim"]), [4], [0], 16, guidance=[2.0])
        run_sweep(cells, out, options=RunOptions(batch_size=bs), progress=False)
        rows[bs] = ResultsStore(out).read().iloc[0]
    a, b = rows[3], rows[16]
    assert a["status"] == "ok" and a["guidance"] == 2.0
    assert a["nfe_counted"] == 4 and a["network_passes"] == 8
    assert a["accuracy"] == b["accuracy"] and a["out_of_range"] == b["out_of_range"]
    assert math.isclose(a["fid"], b["fid"], rel_tol=1e-5)  # float32 UNet kernels differ by batch size in the last bits


def test_unknown_class_negative_scale_and_unconditional_model_are_clear_errors():
    m = tiny()
    with pytest.raises(ValueError, match=r"unknown class 3; allowed: 0\.\.2"):
        m.guided(torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match=r"unknown class -1"):
        m.guided([-1], 2)
    with pytest.raises(ValueError, match=r"out of range; allowed: \[0, inf\)"):
        m.guided([0], -1)
    for bad in (math.nan, math.inf, "big"):
        with pytest.raises(ValueError, match="guidance scale"):
            check_guidance(bad)
    uncond = DiffusionModel(lambda x, t: x, samplers.VPLinear(), "eps", data_shape=(1, 4, 4), name="plain")
    with pytest.raises(samplers.Unsupported, match="'plain' is unconditional"):
        uncond.guided([0], 2)
    with pytest.raises(ValueError, match="made for 2 samples, called with 6"):
        m.guided([0, 1], 2).eps(_x(), 0.5)


def test_guidance_on_an_unconditional_checkpoint_is_an_unsupported_row(tmp_path):
    from bench.runner import RunOptions, run_sweep
    from bench.store import ResultsStore

    cells = make_cells(["gmm-2d"], resolve_samplers(["ddim"]), [4], [0], 8, guidance=[2.0])
    run_sweep(cells, tmp_path, options=RunOptions(), progress=False)
    row = ResultsStore(tmp_path).read().iloc[0]
    assert row["status"] == "unsupported" and "unconditional" in row["error"]


def _default_sweep_samplers():
    return [samplers.get(n) for n in samplers.available(default_sweep_only=True)]


@pytest.mark.parametrize("sampler", _default_sweep_samplers(), ids=lambda s: s.name)
def test_every_default_sweep_sampler_runs_guided_unchanged(sampler):
    """Each sampler sees only the boundary: guided at scale 3 it runs, counts its NFE and makes 2 passes per NFE."""
    m = tiny()
    nfe = 10
    try:
        sampler.check_nfe(nfe)
        sampler.check_model(m, nfe)
    except samplers.Unsupported:
        pytest.skip(f"{sampler.name} cannot run this model at NFE {nfe} (a head it needs, or its NFE rule)")
    idx = range(4)
    x_T = samplers.initial_noise(0, idx, m.data_shape)
    noise = samplers.SampleNoise(0, idx, m.data_shape) if sampler.stochastic else None
    view = m.guided(sample_labels(0, idx, C), 3.0)
    with m.counting() as c:
        out = sampler.sample(view, x_T, nfe, noise=noise)
    assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert c.passes == 2 * c.n and (sampler.adaptive or c.n == nfe)


def test_guided_metrics_count_accuracy_and_out_of_range_and_merge_across_shards():
    class Ck:
        extras = {"classifier": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                  "data_range": (-1.0, 1.0), "range_tolerance": 0.005}

    with torch.no_grad():
        Ck.extras["classifier"][1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        Ck.extras["classifier"][1].bias.zero_()
    # samples 2 and 3 are out of range; sample 0 is within the tolerance of it
    x = torch.tensor([[0.5, 0, 0, 1.004], [-0.5, 0, 0, 0], [0.5, 1.2, 0, 0], [-0.9, 0, 0, -1.01]]).reshape(4, 1, 2, 2)
    labels = lambda idx: torch.tensor([0, 1, 1, 1])[idx]  # sample 2 is misclassified
    whole = GuidedAccumulator(Ck, labels)
    whole.update(x, [0, 1, 2, 3])
    shards = [GuidedAccumulator(Ck, labels) for _ in range(2)]
    shards[0].update(x[0::2], [0, 2])
    shards[1].update(x[1::2], [1, 3])
    merged = GuidedAccumulator.merge([s.state() for s in shards])
    assert guided_metrics(merged) == guided_metrics(GuidedAccumulator.merge([whole.state()])) == {
        "accuracy": 0.75, "out_of_range": 0.5}
    assert guided_metrics(GuidedAccumulator.merge([GuidedAccumulator(Ck, None).state()])) == {}


def test_cli_sweep_with_guidance_and_its_report(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["run", "--checkpoint", "digits-cond", "--sampler", "ddim", "diffusers:DPMSolverMultistepScheduler",
               "--nfe", "4", "--guidance", "0", "1", "3", "--n-samples", "8", "--seeds", "0", "--quiet",
               "--results", str(out)])
    assert rc == 0
    from bench.store import ResultsStore
    df = ResultsStore(out).read()
    assert sorted(df["guidance"].tolist()) == [0.0, 0.0, 1.0, 1.0, 3.0, 3.0] and set(df["status"]) == {"ok"}
    assert (df["network_passes"] == df["nfe_counted"] * df["guidance"].map({0.0: 1, 1.0: 1, 3.0: 2})).all()
    assert df["accuracy"].between(0, 1).all() and df["out_of_range"].between(0, 1).all()
    assert df["solver_error_median"].isna().all()  # the reference is the unguided model's ODE solution
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "rep")]) == 0
    folder = tmp_path / "rep" / "digits-cond"
    assert (folder / "guidance.png").is_file() and (folder / "guidance_accuracy.md").is_file()
    summary = pd.read_csv(folder / "guidance.csv")
    assert len(summary) == 6 and "accuracy_mean" in summary
