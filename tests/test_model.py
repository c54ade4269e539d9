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


def _recording(seen, out=lambda x, t: torch.zeros_like(x)):
    def net(x, t):
        seen.append((x.dtype, t.device, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return out(x, t)
    return net


def test_replace_changes_fields_and_starts_a_fresh_count():
    seen = []
    m = DiffusionModel(_recording(seen), VPLinear(), "x0", data_shape=(2,), net_dtype=torch.float64, name="net")
    m.eps(torch.zeros(3, 2, dtype=torch.float64), 0.5)
    amp = m.replace(autocast_dtype=torch.bfloat16)
    assert (amp.nfe, m.nfe) == (0, 1) and amp.autocast_dtype == torch.bfloat16 and m.autocast_dtype is None
    assert (amp.fn, amp.schedule, amp.prediction, amp.name, amp.device) == (m.fn, m.schedule, "x0", "net", m.device)
    with pytest.raises(ValueError, match=r"has no argument \['autocast'\]; allowed: .*autocast_dtype"):
        m.replace(autocast=torch.bfloat16)


def test_autocast_runs_the_network_in_mixed_precision_and_returns_the_state_dtype():
    seen = []
    # A float32 linear layer under autocast computes in bfloat16; the boundary casts its output back to x's dtype.
    layer = torch.nn.Linear(4, 4).requires_grad_(False)
    m = DiffusionModel(_recording(seen, lambda x, t: layer(x)), VPLinear(), "eps", data_shape=(4,),
                       net_dtype=torch.float32, autocast_dtype=torch.bfloat16)
    x = torch.randn(2, 4, dtype=torch.float64)
    out = m.eps(x, 0.3)
    assert seen[-1][2] and seen[-1][3] == torch.bfloat16 and out.dtype == torch.float64
    exact = layer(x.float()).double()
    assert 1e-5 < float((out - exact).abs().max()) < 0.1  # bfloat16 round-off: neither float32 nor garbage
    assert not torch.is_autocast_enabled("cpu")
    plain = m.replace(autocast_dtype=None).eps(x, 0.3)
    assert not seen[-1][2] and torch.allclose(plain, exact, atol=1e-6)
    with pytest.raises(ValueError, match="autocast_dtype torch.float64 is not supported; allowed"):
        m.replace(autocast_dtype=torch.float64)


def test_time_is_made_on_the_state_device():
    seen = []
    m = DiffusionModel(_recording(seen, lambda x, t: x), VPLinear(), "eps", data_shape=(2,), net_dtype=torch.float64,
                       device="meta")
    x = torch.empty(3, 2, device="meta", dtype=torch.float64)
    for t in (0.5, torch.tensor(0.5), torch.tensor(0.5, device="meta"), torch.full((3,), 0.5, device="meta")):
        m.eps(x, t)
        assert seen[-1][1].type == "meta"
    with pytest.raises(ValueError, match=r"t of shape \(3,\) is on cpu, x on meta"):
        m.eps(x, torch.full((3,), 0.5))  # a whole grid on the host: one copy per call
    with pytest.raises(ValueError, match="x is on cpu, the model on meta"):
        m.eps(torch.zeros(3, 2, dtype=torch.float64), 0.5)


def test_a_device_without_index_accepts_any_index():
    from samplers.model import same_device
    assert same_device(torch.device("cuda"), torch.device("cuda", 1))
    assert not same_device(torch.device("cuda", 0), torch.device("cuda", 1))
    assert not same_device(torch.device("cpu"), torch.device("meta"))
    with pytest.raises(ValueError, match="not a torch device"):
        DiffusionModel(lambda x, t: x, VPLinear(), device="gpu0")


@pytest.mark.parametrize("out,got", [(lambda x: x[:, None], r"\(3, 1, 2\)"), (lambda x: x.sum(-1), r"\(3,\)"),
                                     (lambda x: x.to(torch.int32), r"\(3, 2\) torch.int32"),
                                     (lambda x: None, "NoneType")])
def test_network_output_is_checked_on_every_call(out, got):
    m = DiffusionModel(lambda x, t: out(x), VPLinear(), "eps", data_shape=(2,), net_dtype=torch.float64, name="tiny")
    expected = r"expected a floating tensor of shape \(3, 2\)"
    with pytest.raises(ValueError, match=rf"network 'tiny' returned {got}.*{expected}"):
        m.eps(torch.zeros(3, 2, dtype=torch.float64), 0.5)


def test_native_precision_on_cuda_turns_tf32_convolutions_off_for_the_call():
    from samplers.model import precision

    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with precision(torch.device("cuda"), None):
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True  # restored after the call
        with precision(torch.device("cpu"), None):
            assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before
