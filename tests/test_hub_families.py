"""hub: diffusers-format models of every family (VP, flow, EDM), saved here offline: each is read as diffusers' own
scheduler feeds the raw network (a full sampling loop of diffusers' scheduler on the raw UNet equals the same loop
through our boundary), runs `bench run` / `report` / `baseline` / `check` with FID against a --fid-ref set, and a
config we cannot read faithfully is one line (exit 2, nothing written)."""
import json

import numpy as np
import pytest
import torch

import pretrained
from bench.cli import main
from bench.store import ResultsStore

diffusers = pytest.importorskip("diffusers")

FAMILIES = {  # name: (scheduler class, its config, the family and prediction our boundary should read)
    "vp-sample": ("DDPMScheduler", {"prediction_type": "sample"}, "vp", "x0"),
    "flow": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flow", "velocity"),
    "flow-heun": ("FlowMatchHeunDiscreteScheduler", {"shift": 1.5}, "flow", "velocity"),
    "edm": ("EDMEulerScheduler", {"sigma_data": 0.5}, "edm", "edm"),
    "edm-v": ("EDMDPMSolverMultistepScheduler", {"prediction_type": "v_prediction", "sigma_max": 40.0}, "edm", "edm"),
}


def save_family(folder, family: str):
    """A tiny random UNet2DModel (1x8x8) and the family's scheduler, saved as a pipeline; returns (unet, scheduler)."""
    cls, config, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    scheduler = getattr(diffusers, cls)(**config)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    return unet, scheduler


@pytest.fixture(autouse=True)
def coarse_reference(monkeypatch):
    """The reference ODE solution in 20 NFE: these tests check the plumbing."""
    from pretrained import reference
    monkeypatch.setattr(reference, "REFERENCE_NFE", 20)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_is_read_from_the_scheduler_config(tmp_path, family):
    save_family(tmp_path, family)
    ck = pretrained.load(f"hub:{tmp_path}")
    _, config, fam, prediction = FAMILIES[family]
    assert ck.extras["family"] == fam and ck.model.prediction == prediction and ck.model.schedule.family == fam
    if fam == "flow":
        assert ck.model.schedule.shift == config["shift"]
    if fam == "edm":
        assert (ck.model.schedule.sigma_max, ck.model.schedule.sigma_data) == (config.get("sigma_max", 80.0), 0.5)


@pytest.mark.parametrize("family", ["flow", "flow-heun", "edm", "edm-v"])
def test_full_loop_of_diffusers_scheduler_on_the_raw_unet_matches_the_boundary(tmp_path, family):
    """diffusers' own loop (timesteps it feeds the UNet, scale_model_input, step) on the raw UNet, against the same
    Euler steps on diffusers' sigmas through our boundary's x0: equal to float32 precision."""
    unet, _ = save_family(tmp_path, family)
    ck = pretrained.load(f"hub:{tmp_path}")
    cls, config, fam, _ = FAMILIES[family]
    sched = getattr(diffusers, "FlowMatchEulerDiscreteScheduler" if fam == "flow" else "EDMEulerScheduler")(**{
        k: v for k, v in config.items() if k != "prediction_type" or fam == "edm"})
    sched.set_timesteps(6)
    sig = sched.sigmas.double()
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = z * sched.sigmas[0]
    with torch.no_grad():
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t) if fam == "edm" else x
            x = sched.step(unet(x_in, t).sample, t, x).prev_sample
    y = z.double() * sig[0]
    for i in range(len(sig) - 1):
        y = y + (sig[i + 1] - sig[i]) * (y - ck.model.x0(y, sig[i])) / sig[i]
    scale = float(x.abs().max())
    assert float((x.double() - y).abs().max()) < 1e-5 * max(scale, 1.0), (float((x.double() - y).abs().max()), scale)


def _reference_npz(path, n=32):
    from bench.metrics import features
    from pretrained.data import digits_split

    images = features.to_uint8(digits_split("reference")[0][:n]).numpy()
    np.savez(path, images=images)
    return images


@pytest.mark.parametrize("family, kind", [("vp-sample", "folder"), ("flow", "npz"), ("edm", "statistics"),
                                          ("edm-v", "npz")])
def test_run_report_check_end_to_end_with_fid(tmp_path, family, kind):
    """Each family through run / report / baseline / check, FID against a reference given in each of the three forms."""
    from test_fid_reference import write_folder, write_stats

    save_family(tmp_path / "ckpt", family)
    images = _reference_npz(tmp_path / "ref.npz")
    ref = {"npz": tmp_path / "ref.npz", "folder": write_folder(tmp_path / "imgs", images) if kind == "folder" else None,
           "statistics": write_stats(tmp_path / "stats.npz", images, n=np.int64(32)) if kind == "statistics" else None}
    r, name = tmp_path / "r", f"hub:{tmp_path / 'ckpt'}"
    assert main(["run", "--checkpoint", name, "--sampler", "euler", "--nfe", "3", "--n-samples", "8", "--seeds", "0",
                 "--fid-ref", str(ref[kind]), "--results", str(r), "--quiet"]) == 0
    row = ResultsStore(r).read().iloc[0]
    assert row["status"] == "ok", row["error"]
    assert np.isfinite(row["fid"]) and row["fid"] > 0 and np.isfinite(row["solver_error_mean"])
    assert row["fid_ref"].startswith("fidref-") and row["fid_ref_n"] == 32
    assert row["fid_extractor"] == "digits-classifier" and np.isfinite(row["kid"]) == (kind != "statistics")
    assert main(["report", "--results", str(r), "--out", str(tmp_path / "rep")]) == 0
    assert main(["baseline", "--results", str(r), "--out", str(tmp_path / "b.csv")]) == 0
    assert main(["check", "--baseline", str(tmp_path / "b.csv"), "--results", str(r)]) == 0


def _edit(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


BAD_CONFIGS = {  # family to start from, scheduler config changes, what the one line says
    "dynamic shifting": ("flow", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True is not supported"),
    "inverted sigmas": ("flow", {"invert_sigmas": True}, "invert_sigmas=True is not supported"),
    "negative shift": ("flow", {"shift": -1.0}, "flow schedule needs shift > 0"),
    "EDM sample prediction": ("edm", {"prediction_type": "sample"},
                              "prediction_type 'sample' not supported by diffusers' EDM preconditioning; allowed: "
                              "['epsilon', 'v_prediction']"),
    "EDM sigma_min above sigma_max": ("edm", {"sigma_min": 100.0}, "0 < sigma_min < sigma_max"),
    "unknown scheduler": ("flow", {"_class_name": "LCMScheduler"},
                          "is not a supported diffusers scheduler; allowed: VP"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_unsupported_configs_are_one_line_exit_2(tmp_path, capsys, case):
    family, changes, says = BAD_CONFIGS[case]
    save_family(tmp_path / "ckpt", family)
    _edit(tmp_path / "ckpt" / "scheduler" / "scheduler_config.json", **changes)
    before = sorted(tmp_path.rglob("*"))
    rc = main(["run", "--checkpoint", f"hub:{tmp_path / 'ckpt'}", "--sampler", "euler", "--nfe", "3",
               "--n-samples", "4", "--seeds", "0", "--results", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_registry_and_hub_import_without_a_circle():
    """pretrained.hub imports the Checkpoint from pretrained.checkpoint, never the registry (which imports hub)."""
    import ast
    from pathlib import Path

    import pretrained.hub as hub
    tree = ast.parse(Path(hub.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "registry" not in imported and "checkpoint" in imported
