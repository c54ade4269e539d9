"""Heads at the model boundary: further networks of a checkpoint (students, GENIE's head) counted on its NFE."""
import pytest
import torch

import pretrained
import samplers
from bench.grid import make_cells
from bench.runner import ReferenceCache, RunOptions, run_cell
from pretrained import registry
from samplers import DiffusionModel, Unsupported, UnsupportedNFE, VPLinear


def _model(fn=lambda x, t: 0.5 * x, prediction="eps", **kw):
    return DiffusionModel(fn, VPLinear(), prediction, data_shape=(2,), net_dtype=torch.float64, **kw)


def test_head_calls_count_on_the_parent_model():
    student = _model(lambda x, t: -x, "x0", name="student")
    m = _model(heads={"s": student}, name="teacher")
    x = torch.randn(4, 2, dtype=torch.float64)
    with m.counting() as c:
        h = m.head("s")
        out = h.x0(x, 0.5)
        m.eps(x, 0.5)
    assert c.n == 2 and student.nfe == 0
    assert torch.equal(out, -x)  # the head's own prediction type, normalised by its boundary


def test_missing_head_is_unsupported_naming_what_exists():
    m = _model(heads={"pd:4": _model()}, name="digits")
    assert m.has_head("pd:4") and not m.has_head("kd") and m.head_names() == ["pd:4"]
    with pytest.raises(Unsupported, match=r"'digits' has no 'kd' network; it has: \['pd:4'\]"):
        m.head("kd")
    assert issubclass(UnsupportedNFE, Unsupported)


def test_replace_keeps_heads_and_derivative():
    m = _model(heads={"s": _model()}, derivative_fn=lambda x, t: (x, 2 * x))
    r = m.replace(name="other")
    assert r.head_names() == ["s"] and r.derivative_fn is m.derivative_fn


def test_eps_and_derivative_is_one_nfe_and_checked():
    m = _model(derivative_fn=lambda x, t: (0.5 * x, -x))
    x = torch.randn(3, 2, dtype=torch.float64)
    with m.counting() as c:
        eps, d = m.eps_and_derivative(x, 0.3)
    assert c.n == 1 and torch.equal(eps, 0.5 * x) and torch.equal(d, -x)
    with pytest.raises(Unsupported, match="no derivative"):
        _model().eps_and_derivative(x, 0.3)
    bad = _model(derivative_fn=lambda x, t: (x, x[:, :1]))
    with pytest.raises(ValueError, match="expected a floating tensor of shape"):
        bad.eps_and_derivative(x, 0.3)
    with pytest.raises(ValueError, match="needs an eps-prediction"):
        _model(prediction="v", derivative_fn=lambda x, t: (x, x))


def test_head_on_another_schedule_is_refused():
    from samplers import VPCosine
    other = DiffusionModel(lambda x, t: x, VPCosine(), "eps", data_shape=(2,))
    with pytest.raises(ValueError, match="same schedule"):
        _model(heads={"s": other})


def test_requires_makes_an_unsupported_row_and_refuses_to_sample(tmp_path, gmm2d):
    def needs_head(model, nfe, **_):
        if not model.has_head("toy"):
            raise Unsupported(f"toy_head_sampler needs a 'toy' head; {model.name!r} has {model.head_names()}")

    name = "toy_head_sampler_for_tests"
    if name not in samplers.available():
        @samplers.register(name, defaults={}, requires=needs_head, in_default_sweep=False)
        def _toy(model, x, nfe, *, noise):
            return model.head("toy").x0(x, 1.0)

    s = samplers.get(name)
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(Unsupported, match="needs a 'toy' head"):
        s.sample(gmm2d.model, x, 1)
    cell = make_cells(["gmm-2d"], [s], [1], [0], 8)[0]
    row = run_cell(gmm2d, cell, ReferenceCache(None), RunOptions())
    assert row["status"] == "unsupported" and "needs a 'toy' head" in row["error"]


def test_register_head_attaches_to_the_loaded_checkpoint(monkeypatch):
    monkeypatch.setattr(registry, "_HEADS", {})
    seen = []
    registry.register_head("gmm-2d", "toy", lambda ck: _model(name=f"{ck.name}/toy"), check=lambda: seen.append(1))
    with pytest.raises(ValueError, match="already has a head 'toy'"):
        registry.register_head("gmm-2d", "toy", lambda ck: _model())
    assert registry.heads_of("gmm-2d") == ["toy"] and registry.checkpoints_with_head("toy") == ["gmm-2d"]
    pretrained.validate("gmm-2d")
    assert seen == [1]
    ck = registry._load.__wrapped__("gmm-2d", torch.device("cpu"))
    assert ck.model.head_names() == ["toy"]
    x = torch.zeros(1, 2, dtype=torch.float64)
    with ck.model.counting() as c:
        ck.model.head("toy")(x, 0.5)
    assert c.n == 1

