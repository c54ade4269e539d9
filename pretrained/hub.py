"""diffusers-format checkpoints (UNet2DModel + scheduler config) from a local folder or a Hugging Face hub id.

The UNet's discrete timesteps become a ``VPDiscrete`` schedule from the scheduler's betas with DPM-Solver's
time map (``time_input="discrete"``); epsilon / sample / v_prediction map to eps / x0 / v; learned-variance
outputs (2x channels) keep their first half. Weights load from safetensors only (no pickle).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from samplers.model import DiffusionModel
from samplers.schedules import VPDiscrete

from .reference import reference_ode_solution
from .weights import file_sha256
from .registry import Checkpoint

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _layout(folder: Path) -> tuple[str | None, Path]:
    """(UNet subfolder or None, scheduler config file) of a save_pretrained pipeline folder or a flat UNet folder."""
    if (folder / "unet" / "config.json").exists() and (folder / "scheduler" / "scheduler_config.json").exists():
        return "unet", folder / "scheduler" / "scheduler_config.json"
    if (folder / "config.json").exists() and (folder / "scheduler_config.json").exists():
        return None, folder / "scheduler_config.json"
    raise FileNotFoundError(f"{folder}: expected unet/config.json + scheduler/scheduler_config.json, "
                            f"or config.json + scheduler_config.json")


def _resolve(path_or_hub_id: str, local_files_only: bool) -> Path:
    """A local folder as is; a hub id through the Hugging Face cache (downloading unless local_files_only)."""
    if os.path.isdir(path_or_hub_id):
        return Path(path_or_hub_id)
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(path_or_hub_id, local_files_only=local_files_only,
                                      allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown id, no cache: all end the same way for the user
        raise FileNotFoundError(
            f"cannot get diffusers checkpoint {path_or_hub_id!r} ({type(e).__name__}: {e}). Without network access, "
            f"download it elsewhere (e.g. `huggingface-cli download {path_or_hub_id}`) and pass the local folder, "
            f"or copy the Hugging Face cache there and point HF_HOME at it.") from e


def load_diffusers(path_or_hub_id: str, *, local_files_only: bool | None = None) -> Checkpoint:
    """Load a diffusers UNet2DModel + scheduler as a Checkpoint (reference: dopri5 on the PF-ODE, rtol 1e-5).

    Args:
        path_or_hub_id: a local folder (pipeline layout or flat UNet folder) or a hub id ("google/ddpm-cifar10-32").
        local_files_only: only use the local Hugging Face cache for hub ids; defaults to HF_HUB_OFFLINE.
    """
    import diffusers
    from diffusers import UNet2DModel

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    folder = _resolve(path_or_hub_id, local_files_only)
    subfolder, scheduler_file = _layout(folder)
    config = json.loads(scheduler_file.read_text())
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"{path_or_hub_id}: prediction_type {prediction!r} not supported; allowed: {list(PREDICTIONS)}")
    # diffusers' own betas (float32, as its pipelines use them) from whichever scheduler class saved the config.
    scheduler = getattr(diffusers, config.get("_class_name", "DDPMScheduler")).from_config(config)
    schedule = VPDiscrete(scheduler.betas.to(torch.float64))
    unet = UNet2DModel.from_pretrained(folder, subfolder=subfolder, use_safetensors=True).eval()
    c_in, size = unet.config.in_channels, unet.config.sample_size
    learned_variance = unet.config.out_channels == 2 * c_in

    def fn(x, t_in):
        with torch.inference_mode():
            out = unet(x, t_in).sample
        return out[:, :c_in] if learned_variance else out

    name = f"hub:{path_or_hub_id}"
    model = DiffusionModel(fn, schedule, PREDICTIONS[prediction], time_input="discrete",
                           data_shape=(c_in, size, size), net_dtype=torch.float32, name=name)

    def no_real_data(n, seed=0):
        raise ValueError(f"{name}: a diffusers checkpoint carries no data set")

    return Checkpoint(name=name, model=model, description=f"diffusers UNet2DModel from {path_or_hub_id}",
                      reference_solution=lambda x_T, t_end: reference_ode_solution(model, x_T, t_end),
                      real_data=no_real_data, reference_exact=False,
                      fingerprint=file_sha256(next((folder / (subfolder or "")).glob("*.safetensors"))),
                      extras={"folder": str(folder), "scheduler_config": config, "learned_variance": learned_variance})
