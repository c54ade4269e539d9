"""Device and dtype awareness of every sampler (issue 8), checked on CPU-only CI with the meta device.

A meta tensor has a shape, a dtype and a device but no data: reading a value back (``.item()``, ``float()``,
``bool()``, ``.tolist()``), which on a GPU would synchronise with the host, raises; and an audit of every op
flags a CPU tensor combined with a state tensor (a table left on the host, or made inside the step loop) and
counts host-to-device copies, which must not grow with the number of steps.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import samplers
from toy_heads import with_every_head
from samplers import DiffusionModel, SampleNoise, VPCosine, VPDiscrete, VPLinear, initial_noise

B, D = 4, 3
DIFFUSERS_ON_META = ["diffusers:DDIMScheduler", "diffusers:DPMSolverMultistepScheduler",
                     "diffusers:EulerAncestralDiscreteScheduler", "diffusers:UniPCMultistepScheduler"]
FLOAT32_ATOL = 3e-5  # float32 state vs float64 on gmm-2d, 64 samples: measured <= 6e-6 (solver errors >= 0.04)
# Steps that cancel x/alpha ~ rho(T) z = 150 z down to O(1) in one go lose more: dpm_2_ancestral's step to rho_down
# (<< rho_next when eta = 1) measured 6.5e-5 at NFE 10, deis_rhork 3kutta's extrapolating stage (a31 = -1, a32 = 2)
# 1.2e-4 at NFE 12 (k-diffusion / th_deis compute the same cancellations).
FLOAT32_ATOL_SAMPLER = {"dpm_2_ancestral": 2e-4, "deis_rhork": 4e-4}


class DeviceAudit(TorchDispatchMode):
    """Counts host-to-device copies; with ``strict``, raises where an op mixes host and device tensors."""

    def __init__(self, strict: bool = True):
        super().__init__()
        self.strict, self.copies = strict, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            target = kwargs.get("device", tensors[0].device)
            self.copies += "cpu" in devices and torch.device(target).type == "meta"
        elif self.strict and "cpu" in devices and "meta" in devices:
            where = [(t.device, tuple(t.shape)) for t in tensors]
            raise AssertionError(f"{func} mixes host and device tensors: {where}")
        return func(*args, **kwargs)


class MetaNoise:
    """Sampler noise made on the meta device (SampleNoise's copy per draw is tested on its own below)."""

    def __init__(self, x):
        self.x = x

    def like(self, x):
        return self

    def randn(self):
        return torch.empty_like(self.x)

    def __len__(self):
        return self.x.shape[0]


def _meta_model(prediction="eps", schedule=None, time_input="continuous"):
    def net(x, t):
        assert x.device.type == t.device.type == "meta" and t.shape == (x.shape[0],)
        return x * 1.0 + t[:, None] * 0
    return with_every_head(DiffusionModel(net, schedule or VPLinear(), prediction, time_input=time_input,
                                          data_shape=(D,), net_dtype=torch.float64, name="meta-net", device="meta"))


def _budgets(sampler, n=2, start=6):
    """The first n NFE budgets from ``start`` the sampler spends exactly."""
    out = []
    for nfe in range(start, start + 40):
        try:
            sampler.check_nfe(nfe)
        except samplers.UnsupportedNFE:
            continue
        out.append(nfe)
        if len(out) == n:
            return out
    pytest.skip(f"{sampler.name}: fewer than {n} supported budgets from {start}")


def _run_on_meta(sampler, model, nfe, dtype, strict=True):
    x = torch.empty(B, D, device="meta", dtype=dtype)
    with DeviceAudit(strict) as audit:
        out = sampler.sample(model, x, nfe, noise=MetaNoise(x) if sampler.stochastic else None)
    assert out.device.type == "meta" and out.dtype == dtype and out.shape == x.shape
    return audit.copies


OURS = [n for n in samplers.available() if not n.startswith("diffusers:") and not samplers.describe(n).adaptive]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", OURS)
def test_sampler_loop_stays_on_the_device_without_syncs(name, dtype):
    s = samplers.get(name)
    small, large = _budgets(s)
    copies = [_run_on_meta(s, _meta_model(), nfe, dtype) for nfe in (small, large, 3 * large)]
    # Schedule tables go to the device once per call, whatever the number of steps.
    assert copies[0] == copies[1] == copies[2], copies


@pytest.mark.parametrize("prediction,schedule,time_input", [
    ("x0", VPLinear(), "continuous"), ("v", VPCosine(), "continuous"), ("score", VPDiscrete.linear(), "discrete"),
    ("eps", VPDiscrete.linear(), "discrete")], ids=["x0-linear", "v-cosine", "score-discrete", "eps-discrete"])
@pytest.mark.parametrize("name,options", [("dpm_solver++_2m", {}), ("unipc", {}), ("dpm_solver_fast", {}),
                                          ("dpm_solver++", {"thresholding": "dynamic"}), ("heun", {"grid": "logSNR"}),
                                          ("deis_rhoab3", {})])
def test_model_boundary_conversions_stay_on_the_device(name, options, prediction, schedule, time_input):
    s = samplers.get(name, **options)
    small, large = _budgets(s)
    model = _meta_model(prediction, schedule, time_input)
    _run_on_meta(s, model, small, torch.float32)  # a discrete schedule copies its knots to a device once, here
    assert _run_on_meta(s, model, small, torch.float32) == _run_on_meta(s, model, large, torch.float32)


@pytest.mark.parametrize("name", DIFFUSERS_ON_META)
def test_diffusers_samplers_run_with_state_on_the_device(name):
    pytest.importorskip("diffusers")
    s = samplers.get(name)
    # diffusers' own tables stay on the host: their 0-d entries scale device tensors, so the audit is not strict.
    _run_on_meta(s, _meta_model(), _budgets(s, 1, 10)[0], torch.float64, strict=False)


def test_the_audit_catches_a_host_sync_a_host_scalar_and_copies():
    x = torch.empty(B, D, device="meta", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="meta"):
        x * float((x * 0).sum())  # a host sync: .item() in disguise
    with DeviceAudit(), pytest.raises(AssertionError, match="host and device"):
        x * torch.tensor(2.0, dtype=x.dtype)  # PyTorch allows a 0-d host tensor; the audit does not
    with DeviceAudit() as audit:
        for _ in range(3):
            x = x * torch.ones(D, dtype=x.dtype).to(x.device)
    assert audit.copies == 3


def test_state_dtype_is_kept_and_other_dtypes_are_refused():
    model = _meta_model()
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(ValueError, match=r"dtype .*allowed: \['torch.float64', 'torch.float32'\]"):
            samplers.get("ddim").sample(model, torch.empty(B, D, device="meta", dtype=dtype), 5)
    with pytest.raises(ValueError, match="x is on cpu, the model on meta"):
        samplers.get("ddim").sample(model, torch.zeros(B, D, dtype=torch.float64), 5)


@pytest.fixture(scope="module")
def x2d():
    return initial_noise(0, range(64), (2,))


@pytest.mark.parametrize("name", [n for n in samplers.available() if not n.startswith("diffusers:")]
                         + ["diffusers:DPMSolverMultistepScheduler", "diffusers:DDPMScheduler"])
def test_float32_state_is_close_to_float64(gmm2d, x2d, name):
    s, x = samplers.get(name), x2d
    nfe = None if s.adaptive else _budgets(s, 1, 10)[0]
    noise = lambda dtype: SampleNoise(1, range(64), (2,), dtype=dtype) if s.stochastic else None
    model = gmm2d.model if gmm2d.model.has_head("genie") and name == "genie" else with_every_head(gmm2d.model)
    out64 = s.sample(model, x, nfe, noise=noise(torch.float64))
    out32 = s.sample(model, x.float(), nfe, noise=noise(torch.float32))
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    if s.adaptive:
        # Accepting or rejecting a step hinges on round-off: float32 may take other steps (measured 2.6e-3 off).
        assert torch.isfinite(out32).all()
        return
    assert float((out32.double() - out64).abs().max()) < FLOAT32_ATOL_SAMPLER.get(name, FLOAT32_ATOL)


def test_noise_is_drawn_on_the_host_and_moved():
    cpu = initial_noise(3, range(5), (2, 3))
    assert cpu.dtype == torch.float64 and cpu.device.type == "cpu"
    assert torch.equal(initial_noise(3, range(5), (2, 3), dtype=torch.float32), cpu.float())
    meta = initial_noise(3, range(5), (2, 3), device="meta", dtype=torch.float32)
    assert meta.device.type == "meta" and meta.dtype == torch.float32 and meta.shape == cpu.shape
    if torch.cuda.is_available():
        assert torch.equal(initial_noise(3, range(5), (2, 3), device="cuda").cpu(), cpu)
    # like(x): the same streams, drawn where x is and in its dtype; a stream count or shape that does not fit raises.
    a, b = SampleNoise(3, range(5), (2, 3)), SampleNoise(3, range(5), (2, 3))
    first = a.like(torch.zeros(5, 2, 3, dtype=torch.float32)).randn()
    assert first.dtype == torch.float32 and torch.equal(first, b.randn().float())
    assert torch.equal(a.randn(), b.randn())  # drawing through like() advanced a's streams
    with pytest.raises(ValueError, match="3 streams"):
        SampleNoise(0, range(3), (2,)).like(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        SampleNoise(0, range(4), (2,)).like(torch.zeros(4, 3))


def test_stochastic_sampler_draws_its_noise_where_the_state_is():
    x = torch.empty(B, D, device="meta", dtype=torch.float32)
    with DeviceAudit() as audit:
        out = samplers.get("ddpm").sample(_meta_model(), x, 5, noise=SampleNoise(0, range(B), (D,)))
    # Draws are made on the host (bit-identical on every device) and copied once per step.
    assert out.device.type == "meta" and out.dtype == torch.float32 and audit.copies >= 5


@pytest.mark.parametrize("net,got", [
    (lambda x, t: x[:, None], r"\(4, 1, 8, 8\)"),                       # broadcastable, still wrong
    (lambda x, t: x.to(torch.int64), "torch.int64"),
    (lambda x, t: torch.empty(x.shape, device="meta"), "on meta"),
    (lambda x, t: x.numpy(), "ndarray"),
], ids=["shape", "dtype", "device", "not-a-tensor"])
def test_a_wrong_network_output_raises_naming_the_network(net, got):
    model = DiffusionModel(net, VPLinear(), "eps", data_shape=(8, 8), net_dtype=torch.float64, name="bad-net")
    x = initial_noise(0, range(4), (8, 8))
    with pytest.raises(ValueError, match=rf"network 'bad-net' returned .*{got}.*expected .*\(4, 8, 8\) on cpu"):
        samplers.get("ddim").sample(model, x, 5)
