import pytest
import torch

from samplers import DiffusionModel, VPDiscrete, VPLinear


def _as(mix, prediction):
    """The analytic mixture expressed in another prediction type (an independent conversion)."""
    sch = mix.schedule

    def fn(x, t):
        a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
        eps = mix.eps(x, t)
        return {"eps": eps, "x0": (x - s * eps) / a, "v": a * eps - s * (x - s * eps) / a,
                "score": -eps / s}[prediction]
    return DiffusionModel(fn, sch, prediction, data_shape=(mix.dim,), net_dtype=torch.float64)


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_prediction_types_normalise_to_the_same_eps_and_x0(gmm16d, prediction):
    mix = gmm16d.extras["mixture"]
    ref, other = _as(mix, "eps"), _as(mix, prediction)
    x = torch.randn(5, 16, dtype=torch.float64)
    for t in (0.01, 0.5, 1.0):
        assert torch.allclose(other.eps(x, t), ref.eps(x, t), atol=1e-10)
        assert torch.allclose(other.x0(x, t), ref.x0(x, t), atol=1e-10)
        assert torch.allclose(other.score(x, t), mix.score(x, torch.tensor(t)), atol=1e-8)


def test_nfe_is_counted_per_network_call(gmm2d):
    m = gmm2d.model
    x = torch.zeros(3, 2, dtype=torch.float64)
    with m.counting() as c:
        m.eps(x, 0.5)
        m.x0(x, 0.5)
        m.score(x, 0.2)
    assert c.n == 3
    with m.counting() as c2:
        pass
    assert c2.n == 0


def test_discrete_time_input_is_passed_to_the_network():
    seen = []
    sch = VPDiscrete.linear()

    def net(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)
    m = DiffusionModel(net, sch, "eps", time_input="discrete", data_shape=(1,))
    m.eps(torch.zeros(2, 1), torch.tensor([1.0, 0.001]))
    assert torch.allclose(seen[0].double(), torch.tensor([999.0, 0.0], dtype=torch.float64), atol=1e-3)


def test_bad_model_arguments_raise():
    with pytest.raises(ValueError, match="allowed"):
        DiffusionModel(lambda x, t: x, VPLinear(), "epsilon")
    with pytest.raises(ValueError, match="VPDiscrete"):
        DiffusionModel(lambda x, t: x, VPLinear(), "eps", time_input="discrete")
