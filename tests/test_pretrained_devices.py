"""pretrained.load(name, device): every tensor of a checkpoint on its device, device names checked (issue 8).

The meta device (shapes, no values) stands in for a GPU on CPU-only machines: a tensor left behind on the CPU
shows up there as it would on CUDA. The CUDA tests run where a GPU is present.
"""
import pytest
import torch

import pretrained
import samplers

NAMES = pretrained.available()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _tensors(ck) -> dict:
    """Every tensor a checkpoint computes with: network parameters and buffers, mixture parameters."""
    out = {}
    for key, value in ck.extras.items():
        if isinstance(value, torch.nn.Module):
            out.update({f"{key}.{n}": t for n, t in [*value.named_parameters(), *value.named_buffers()]})
        if isinstance(value, pretrained.gmm.GaussianMixture):
            out.update({f"{key}.{n}": getattr(value, n) for n in ("w", "mu", "s2")})
    return out


def _on(ck, device: torch.device):
    tensors = _tensors(ck)
    assert tensors, ck.name
    wrong = {k: t.device for k, t in tensors.items() if t.device != device}
    assert not wrong, wrong
    assert ck.device == ck.model.device == device


@pytest.mark.parametrize("name", NAMES)
def test_cpu_checkpoints_are_cached_per_device(name):
    ck = pretrained.load(name, device="cpu")
    assert ck is pretrained.load(name, torch.device("cpu")) is pretrained.load(name)
    _on(ck, torch.device("cpu"))


@pytest.mark.parametrize("name", NAMES)
def test_meta_checkpoints_keep_every_tensor_on_meta(name):
    ck = pretrained.load(name, device="meta")
    assert ck is not pretrained.load(name, "cpu")
    _on(ck, torch.device("meta"))
    x = torch.zeros(3, *ck.data_shape, dtype=torch.float64, device="meta")
    with ck.model.counting() as c:
        eps = ck.model.eps(x, 0.5)
        out = samplers.get("ddim").sample(ck.model, x, 4)
    assert eps.device == out.device == torch.device("meta") and out.shape == x.shape and c.n == 5


@pytest.mark.parametrize("name", ["gmm-2d", "gmm-16d"])
def test_mixture_oracle_and_metrics_sides(name):
    cpu, meta = pretrained.load(name, "cpu"), pretrained.load(name, "meta")
    x = torch.zeros(4, *cpu.data_shape, dtype=torch.float64, device="meta")
    assert meta.log_prob(x).device == torch.device("meta")
    with pytest.raises(ValueError, match="oracle needs values"):
        meta.reference_solution(x, samplers.VP_T_END)
    # real data and exact moments stay on the CPU, the same numbers on every device
    torch.testing.assert_close(meta.real_data(5, 3), cpu.real_data(5, 3), rtol=0, atol=0)
    assert all(m.device == torch.device("cpu") for m in meta.moments)
    # a tensor on another device is refused with a message, not computed there
    with pytest.raises(ValueError, match="x is on meta, the model on cpu"):
        cpu.model.eps(x, 0.5)
    with pytest.raises(ValueError, match="x is on meta, the mixture on cpu"):
        cpu.log_prob(x)
    with pytest.raises(ValueError, match="x_T is on meta, the mixture on cpu"):
        cpu.reference_solution(x, samplers.VP_T_END)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", "mps", "xla", "", 0, None])
def test_unknown_devices_name_the_allowed(device):
    with pytest.raises(ValueError, match=r"allowed: \['cpu', 'cuda', 'cuda:N', 'meta'\]"):
        pretrained.load("gmm-2d", device=device)


def test_cuda_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(ValueError, match="CUDA is not available on this machine; allowed: cpu"):
            pretrained.load("gmm-2d", device=device)
        with pytest.raises(ValueError, match="CUDA is not available"):
            pretrained.validate("digits", device=device)


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="has 2 CUDA device.*allowed: cpu, cuda, cuda:0, cuda:1"):
        pretrained.resolve_device("cuda:2")
    assert pretrained.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_hub_checkpoint_on_meta(tmp_path):
    from test_hub import _save

    _save(tmp_path)
    ck = pretrained.load(f"hub:{tmp_path}", device="meta")
    _on(ck, torch.device("meta"))
    assert ck.model.eps(torch.zeros(2, 1, 8, 8, device="meta"), 0.5).device == torch.device("meta")


@cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_checkpoint_matches_cpu(name):
    """eps, the reference solution and a sampler on the GPU agree with the CPU (float32 nets to 1e-4)."""
    cpu, gpu = pretrained.load(name, "cpu"), pretrained.load(name, "cuda")
    _on(gpu, torch.device("cuda", torch.cuda.current_device()))
    x_T = samplers.initial_noise(0, range(8), cpu.data_shape)
    tol = 1e-10 if cpu.reference_exact else 2e-4
    t = torch.linspace(0.05, 0.95, 8, dtype=torch.float64)
    torch.testing.assert_close(gpu.model.eps(x_T.cuda(), t.cuda()).cpu(), cpu.model.eps(x_T, t), rtol=0, atol=tol)
    ref_gpu = gpu.reference_solution(x_T[:4].cuda(), samplers.VP_T_END)
    assert ref_gpu.device.type == "cuda"
    torch.testing.assert_close(ref_gpu.cpu(), cpu.reference_solution(x_T[:4], samplers.VP_T_END), rtol=0,
                               atol=1e-8 if cpu.reference_exact else 5e-3)
    out = samplers.get("ddim").sample(gpu.model, x_T.cuda(), 10)
    torch.testing.assert_close(out.cpu(), samplers.get("ddim").sample(cpu.model, x_T, 10), rtol=0,
                               atol=1e-9 if cpu.reference_exact else 1e-3)
