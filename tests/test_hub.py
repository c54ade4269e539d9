"""pretrained.hub: diffusers-format folders behind the model boundary (offline, tiny random UNet)."""
import pytest
import torch

import pretrained
import samplers
from pretrained.hub import load_diffusers
from pretrained.reference import reference_ode_solution

diffusers = pytest.importorskip("diffusers")


def _save(folder, *, out_channels=1, prediction_type="epsilon", pipeline_layout=True):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type)
    if pipeline_layout:
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        scheduler.save_pretrained(folder / "scheduler")
    else:
        unet.save_pretrained(folder, safe_serialization=True)
        scheduler.save_pretrained(folder)
    return unet, scheduler


@pytest.mark.parametrize("pipeline_layout", [True, False])
def test_model_boundary_matches_raw_unet(tmp_path, pipeline_layout):
    unet, scheduler = _save(tmp_path, pipeline_layout=pipeline_layout)
    ck = load_diffusers(str(tmp_path))
    model = ck.model
    assert model.data_shape == (1, 8, 8) and model.prediction == "eps" and model.time_input == "discrete"
    # The schedule is the scheduler's: alpha(t_k)^2 = alphas_cumprod[k] at t_k = (k + 1) / 1000.
    k = torch.tensor([0, 17, 500, 999])
    t = (k.double() + 1) / 1000
    assert torch.allclose(model.schedule.alpha(t) ** 2, scheduler.alphas_cumprod[k].double(), rtol=1e-6)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        raw = unet(x.float(), k).sample.double()
    got = torch.stack([model.eps(x[i:i + 1], t[i])[0] for i in range(4)])
    assert float((got - raw).abs().max()) < 1e-6
    assert model.nfe == 4


def test_learned_variance_and_v_prediction(tmp_path):
    unet, _ = _save(tmp_path, out_channels=2, prediction_type="v_prediction")
    ck = pretrained.load(f"hub:{tmp_path}")
    assert ck.model.prediction == "v" and ck.extras["learned_variance"]
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    a, s = ck.model.schedule.alpha(t), ck.model.schedule.sigma(t)
    with torch.no_grad():
        v = unet(x.float(), torch.full((2,), 499.0)).sample[:, :1].double()
    assert float((ck.model.eps(x, t) - (s * x + a * v)).abs().max()) < 1e-5


def test_samplers_run_and_reference(tmp_path):
    _save(tmp_path)
    ck = load_diffusers(str(tmp_path))
    x_T = samplers.initial_noise(0, range(2), (1, 8, 8))
    ref = reference_ode_solution(ck.model, x_T, 1e-3, rtol=1e-3)
    with ck.model.counting() as c:
        x = samplers.get("diffusers:DPMSolverMultistepScheduler", final_sigmas_type="sigma_min").sample(ck.model, x_T, 10)
        y = samplers.get("ddim").sample(ck.model, x_T, 10)
    assert c.n == 20 and x.shape == x_T.shape and torch.isfinite(x).all()
    # 10 steps of second-order DPM-Solver++ land nearer the ODE solution than 10 DDIM steps.
    assert float((x - ref).abs().max()) < float((y - ref).abs().max()) < 0.2 * float(ref.abs().max())


def test_hub_id_without_network_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    # ValueError (was FileNotFoundError): the CLI prints a user error as one line, not a traceback.
    with pytest.raises(ValueError, match="download it elsewhere") as e:
        load_diffusers("google/ddpm-cifar10-32", local_files_only=True)
    assert "\n" not in str(e.value) and "hub:google/ddpm-cifar10-32" in str(e.value)


def test_pickle_only_folder_is_refused(tmp_path):
    unet, _ = _save(tmp_path)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(unet.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")
    # ValueError (was diffusers' OSError), checked before diffusers is asked: no silent fallback to pickle.
    with pytest.raises(ValueError, match="diffusion_pytorch_model.bin.*expected diffusion_pytorch_model.safetensors"):
        load_diffusers(str(tmp_path))


def test_bench_run_on_a_hub_folder(tmp_path):
    from bench.cli import main
    from bench.store import ResultsStore

    _save(tmp_path / "ckpt")
    assert main(["run", "--checkpoint", f"hub:{tmp_path / 'ckpt'}", "--nfe", "3", "--sampler", "ddim",
                 "--n-samples", "4", "--seeds", "0", "--results", str(tmp_path / "r"), "--quiet"]) == 0
    row = ResultsStore(tmp_path / "r").read().iloc[0]
    # a random UNet's x0 = (x - sigma eps) / alpha explodes at t = T (alpha = 7e-3): a diverged row, counted
    assert row["checkpoint"] == f"hub:{tmp_path / 'ckpt'}" and row["nfe_counted"] == 3
    assert row["status"] == "diverged" and "max |x|" in row["error"]
