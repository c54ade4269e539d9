"""pretrained.hub: diffusers-format folders behind the model boundary (offline, tiny random UNet)."""
import json
import re
import shutil

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


def test_a_checkpoint_name_cannot_steer_files_out_of_the_results_folder(tmp_path):
    """Names become cache and report paths only through hashes and safe names (the old cache path used the name)."""
    from bench.cli import main

    _save(tmp_path / "a" / "ckpt")
    (tmp_path / "r").mkdir()
    # a relative name that climbs to / first: the old reference cache file (named after it) landed in a/
    name = "hub:" + "../" * 12 + str(tmp_path / "a" / "ckpt").lstrip("/")
    before = set(tmp_path.rglob("*"))
    assert main(["run", "--checkpoint", name, "--nfe", "3", "--sampler", "ddim", "--n-samples", "4", "--seeds", "0",
                 "--results", str(tmp_path / "r"), "--quiet"]) == 0
    assert main(["report", "--results", str(tmp_path / "r")]) == 0
    new = set(tmp_path.rglob("*")) - before
    assert any(p.name.startswith("reference-") for p in new)
    assert new and all(p.is_relative_to(tmp_path / "r") for p in new), sorted(new)


def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **changes}))


def _bad_folder(tmp_path, case):
    """A folder (or path) broken in one way; returns the hub: source to pass."""
    folder = tmp_path / "ckpt"
    if case == "empty":
        folder.mkdir()
    elif case == "a file":
        folder.write_text("not a folder")
    elif case == "pickle only":
        unet, _ = _save(folder)
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        torch.save(unet.state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    elif case == "no weights":
        _save(folder, pipeline_layout=False)
        (folder / "diffusion_pytorch_model.safetensors").unlink()
    elif case == "unsupported scheduler":
        _save(folder)
        _edit_json(folder / "scheduler" / "scheduler_config.json", _class_name="LCMScheduler")
    elif case == "not a scheduler":
        _save(folder)
        _edit_json(folder / "scheduler" / "scheduler_config.json", _class_name="UNet2DModel")
    elif case == "bad beta_schedule":
        _save(folder)
        _edit_json(folder / "scheduler" / "scheduler_config.json", beta_schedule="quartic")
    elif case == "config not JSON":
        _save(folder, pipeline_layout=False)
        (folder / "config.json").write_text('{"_class_name": "UNet2DModel",')
    elif case == "conditional UNet":
        _save(folder)
        _edit_json(folder / "unet" / "config.json", _class_name="UNet2DConditionModel")
    elif case == "out_channels":
        _save(folder)
        _edit_json(folder / "unet" / "config.json", out_channels=3)
    elif case == "no scheduler":
        _save(folder)
        shutil.rmtree(folder / "scheduler")
    elif case == "unrelated files":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
    return str(folder)


BAD_FOLDERS = {  # case: what the one-line message must say (after the path)
    "empty": r"ckpt: the folder is empty; expected unet/config.json \+ scheduler/scheduler_config.json",
    "a file": r"ckpt is a file; expected a folder",
    "pickle only": r"unet: only pickle weights \(diffusion_pytorch_model.bin\).*expected "
                   r"diffusion_pytorch_model.safetensors",
    "no weights": r"ckpt: no weights; expected diffusion_pytorch_model.safetensors",
    "unsupported scheduler": r"scheduler_config.json: _class_name 'LCMScheduler' is not a supported diffusers "
                             r"scheduler; allowed: VP \(DDPM betas\): \[.*'DDPMScheduler'.*flow: "
                             r"\['FlowMatchEulerDiscreteScheduler'.*EDM: \['EDMEulerScheduler'",
    "not a scheduler": r"scheduler_config.json: _class_name 'UNet2DModel' is not a supported diffusers scheduler",
    "bad beta_schedule": r"scheduler_config.json: diffusers cannot build DDPMScheduler from it \(.*quartic",
    "config not JSON": r"ckpt/config.json: not valid JSON",
    "conditional UNet": r"unet/config.json: _class_name is 'UNet2DConditionModel', whose forward needs "
                        r"\['encoder_hidden_states'\] besides \(sample, timestep\): a conditional model; expected an "
                        r"unconditional diffusers model class called as model\(x, t\)",
    "out_channels": r"unet/config.json: out_channels 3 must equal in_channels 1",
    "no scheduler": r"ckpt: missing scheduler/scheduler_config.json; expected unet/config.json",
    "unrelated files": r"ckpt: no diffusers UNet here \(found \['notes.txt'\]\); expected",
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folders_give_one_line_value_errors(tmp_path, case):
    source = _bad_folder(tmp_path, case)
    pretrained.entry(f"hub:{source}")  # cheap: nothing is read yet
    for attempt in (lambda: pretrained.validate(f"hub:{source}"), lambda: load_diffusers(source)):
        with pytest.raises(ValueError, match=BAD_FOLDERS[case]) as e:
            attempt()
        assert "\n" not in str(e.value) and "download" not in str(e.value)


@pytest.mark.parametrize("source, says", [
    ("./missing", "no such folder"), ("../missing", "no such folder"), ("/nonexistent/x", "no such folder"),
    ("a/b/c", "no such folder"), ("~/missing-folder-xyz", "no such folder"),
    ("missing", "neither a folder nor a Hugging Face hub id 'owner/name'"),
    ("hub:../../etc", "no such folder"), ("owner/../x", "no such folder")])
def test_missing_local_paths_do_not_suggest_downloading(tmp_path, monkeypatch, source, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=re.escape(f"hub:{source}: {says}")) as e:
        pretrained.validate(f"hub:{source}")
    msg = str(e.value)
    assert "\n" not in msg and "download" not in msg.lower() and "expected a folder with unet/config.json" in msg


def test_validate_does_not_read_the_weights(tmp_path, monkeypatch):
    _save(tmp_path)
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", lambda *a, **k: pytest.fail("weights loaded"))
    entry = pretrained.validate(f"hub:{tmp_path}")
    assert entry.name == f"hub:{tmp_path}"
    with pytest.raises(ValueError, match="CUDA is not available|unknown device"):
        pretrained.validate(f"hub:{tmp_path}", device="cuda" if not torch.cuda.is_available() else "tpu")


def test_fingerprint_covers_weights_and_both_configs(tmp_path):
    _save(tmp_path)
    fp = load_diffusers(str(tmp_path)).fingerprint
    assert load_diffusers(str(tmp_path)).fingerprint == fp and len(fp) == 64
    _edit_json(tmp_path / "scheduler" / "scheduler_config.json", beta_end=0.01)  # new betas, same weights
    fp_sched = load_diffusers(str(tmp_path)).fingerprint
    _edit_json(tmp_path / "unet" / "config.json", act_fn="silu", norm_eps=1e-6)
    fp_unet = load_diffusers(str(tmp_path)).fingerprint
    assert len({fp, fp_sched, fp_unet}) == 3


def test_sharded_index_names_must_be_plain_files(tmp_path):
    _save(tmp_path)
    unet_dir = tmp_path / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").rename(unet_dir / "part-1.safetensors")
    index = unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"conv_in.weight": "../../outside.safetensors"}}))
    with pytest.raises(ValueError, match=r"shard '../../outside.safetensors' must be a plain .safetensors file name"):
        pretrained.validate(f"hub:{tmp_path}")
    index.write_text(json.dumps({"weight_map": {"conv_in.weight": "part-1.safetensors"}}))
    pretrained.validate(f"hub:{tmp_path}")


def test_cli_reports_a_missing_hub_folder_in_one_line(tmp_path, capsys):
    from bench.cli import main

    code = main(["run", "--checkpoint", "hub:/nonexistent", "--nfe", "3", "--sampler", "ddim", "--n-samples", "2",
                 "--seeds", "0", "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: hub:/nonexistent: no such folder") and "\n" not in err
