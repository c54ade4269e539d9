"""The ``hub:`` source: diffusers-format checkpoints (a model + scheduler config) from a local folder or a hub id.

The model is ``UNet2DModel`` or any unconditional diffusers model class called as ``model(x, t)``; the scheduler
config says the family (``family_of``), each read as diffusers' own pipelines feed the network:
- VP (the schedulers with DDPM betas: DDPM, DDIM, DPM-Solver, ...): a ``VPDiscrete`` schedule from diffusers' betas,
  the network fed discrete timesteps (DPM-Solver's time map, ``time_input="discrete"``); epsilon / sample /
  v_prediction are eps / x0 / v.
- flow (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``): ``FlowMatching(shift)``, the
  network's output a velocity (eps - x0), fed the timestep sigma * num_train_timesteps as a float (as
  FlowMatchEuler's ``timesteps`` are).
- EDM (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): ``EDM(sigma_min, sigma_max, sigma_data)`` with
  prediction "edm": the boundary feeds F(c_in x, c_noise) with c_noise = log(sigma) / 4, which is diffusers'
  ``precondition_inputs`` / ``precondition_noise`` (the same c_noise as NVlabs' EDMPrecond); v_prediction flips the
  sign of c_out in diffusers' ``precondition_outputs``, so its output is negated here.
Learned-variance outputs (2x channels) keep their first half. Weights load from safetensors only (no pickle).
``inspect_folder`` checks a folder (layout, both configs, weights present) without loading the weights; every
problem is a one-line ValueError naming the path and what was expected.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from samplers.model import DiffusionModel
from samplers.schedules import EDM, FlowMatching, NoiseSchedule, VPDiscrete

from .checkpoint import Checkpoint, CheckpointEntry, resolve_device
from .reference import ReferenceSolver
from .weights import file_sha256, read_json_object

PREFIX = "hub:"
DEFAULT_N_SAMPLES = 1000
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
MODEL_CLASSES = "an unconditional diffusers model class called as model(x, t), such as 'UNet2DModel'"
# diffusers schedulers whose config defines DDPM betas (diffusers' KarrasDiffusionSchedulers less EDMEuler).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                     "EulerDiscreteScheduler", "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
                     "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler",
                     "UniPCMultistepScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
EDM_OUTPUT_SIGN = {"epsilon": 1.0, "v_prediction": -1.0}  # the sign of c_out in diffusers' precondition_outputs
SUPPORTED_SCHEDULERS = (f"VP (DDPM betas): {list(SCHEDULER_CLASSES)}; flow: {list(FLOW_SCHEDULERS)}; "
                        f"EDM: {list(EDM_SCHEDULERS)}")
# Flow options that change what the network was trained on, or make the shift depend on the image at sampling time.
FLOW_REFUSED = {"use_dynamic_shifting": "the shift then depends on the image size at sampling time; save the config "
                                        "with the fixed shift the model was trained for",
                "invert_sigmas": "an inverted time axis is not the flow convention (t = 1 is noise)"}
DEFAULT_SCHEDULER = "DDPMScheduler"  # a scheduler_config.json without _class_name
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = SAFETENSORS_FILE + ".index.json"
PICKLE_FILES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
LAYOUTS = ("unet/config.json + scheduler/scheduler_config.json (a saved pipeline) "
           "or config.json + scheduler_config.json (a UNet folder)")
HUB_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?")
SHARD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.safetensors")
# Caps on the sizes a config gives (checked before the UNet is built); ``allow_large()`` (bench's --allow-large) lifts them.
MAX_SAMPLE_SIDE = 1024     # sample_size, per side
MAX_CHANNELS = 64          # in_channels
MAX_BLOCK_CHANNELS = 4096  # each of block_out_channels
MAX_BLOCKS = 8             # len(block_out_channels), layers_per_block
MAX_TRAIN_TIMESTEPS = 100_000  # the scheduler config's num_train_timesteps (the length of its betas)
_ALLOW_LARGE = contextvars.ContextVar("allow_large", default=False)


@contextlib.contextmanager
def allow_large(allow: bool = True):
    """Lift the size caps on configs inside the block (``bench run --allow-large``)."""
    token = _ALLOW_LARGE.set(allow)
    try:
        yield
    finally:
        _ALLOW_LARGE.reset(token)


def _check_sizes(path: Path, config: dict, size: list, c_in: int) -> None:
    """ValueError if a size in a UNet config exceeds its cap (a typo there allocates terabytes when the UNet is built)."""
    if _ALLOW_LARGE.get():
        return
    blocks = config.get("block_out_channels", ())
    layers = config.get("layers_per_block", 1)
    checks = [("sample_size", max(size), MAX_SAMPLE_SIDE), ("in_channels", c_in, MAX_CHANNELS)]
    if isinstance(blocks, (list, tuple)):
        checks += [("len(block_out_channels)", len(blocks), MAX_BLOCKS)]
        checks += [("block_out_channels", b, MAX_BLOCK_CHANNELS) for b in blocks if isinstance(b, int)]
    if isinstance(layers, int):
        checks.append(("layers_per_block", layers, MAX_BLOCKS))
    for key, value, cap in checks:
        if value > cap:
            raise ValueError(f"{path}: {key} {value} exceeds the cap of {cap}; pass --allow-large to load it")


@dataclass(frozen=True)
class HubFolder:
    """A checked diffusers folder: where the UNet and scheduler are, their configs and the weights files."""

    folder: Path
    subfolder: str | None
    unet_config: dict
    scheduler_config: dict
    weights: tuple
    data_shape: tuple
    learned_variance: bool
    family: "HubFamily"


@dataclass(frozen=True)
class HubFamily:
    """How the boundary reads a diffusers network of one family: the schedule, what the output is, and how it is fed.

    ``time_scale``: the network gets t * time_scale (flow: num_train_timesteps); ``output_sign``: -1 where diffusers
    negates the output (EDM's v_prediction).
    """

    name: str
    schedule: NoiseSchedule
    prediction: str
    time_input: str = "continuous"
    time_scale: float = 1.0
    output_sign: float = 1.0


def is_hub_id(s: str) -> bool:
    """'owner/name' as the Hugging Face hub spells repository ids (no '..' or '--')."""
    return bool(HUB_ID.fullmatch(s)) and ".." not in s and "--" not in s


def _resolve(source: str, local_files_only: bool) -> Path:
    """A local folder as is; an 'owner/name' hub id through the Hugging Face cache (downloading unless offline)."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path):
        raise ValueError(f"hub:{source}: {path} is a file; expected a folder with {LAYOUTS}")
    if not is_hub_id(source):  # a local path: say nothing about downloading
        looks_like_path = os.path.isabs(path) or source.startswith((".", "~")) or "/" in source or os.sep in source
        kind = "no such folder" if looks_like_path else "neither a folder nor a Hugging Face hub id 'owner/name':"
        raise ValueError(f"hub:{source}: {kind} {path!r}; expected a folder with {LAYOUTS}")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(source, local_files_only=local_files_only,
                                      allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # offline, unknown id, no cache: all end the same way for the user
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(
            f"hub:{source}: not a local folder, and the Hugging Face hub id could not be fetched ({type(e).__name__}: "
            f"{reason}). Without network access, download it elsewhere (e.g. `huggingface-cli download {source}`) "
            f"and pass the local folder, or copy the Hugging Face cache there and point HF_HOME at it.") from None


def _layout(folder: Path) -> tuple[str | None, Path, Path]:
    """(UNet subfolder or None, UNet config, scheduler config) of a pipeline folder or a flat UNet folder."""
    if not any(folder.iterdir()):
        raise ValueError(f"{folder}: the folder is empty; expected {LAYOUTS}")
    if (folder / "unet").is_dir() or (folder / "model_index.json").is_file():
        subfolder, unet_config, scheduler_config = "unet", folder / "unet" / "config.json", \
            folder / "scheduler" / "scheduler_config.json"
    elif (folder / "config.json").is_file() or (folder / "scheduler_config.json").is_file():
        subfolder, unet_config, scheduler_config = None, folder / "config.json", folder / "scheduler_config.json"
    else:
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise ValueError(f"{folder}: no diffusers UNet here (found {found}); expected {LAYOUTS}")
    for path in (unet_config, scheduler_config):
        if not path.is_file():
            raise ValueError(f"{folder}: missing {path.relative_to(folder)}; expected {LAYOUTS}")
    return subfolder, unet_config, scheduler_config


def _weights(unet_dir: Path) -> tuple:
    """The safetensors files of the UNet (one file, or the shards its index names); pickle-only folders refused."""
    if (unet_dir / SAFETENSORS_FILE).is_file():
        return (unet_dir / SAFETENSORS_FILE,)
    if (unet_dir / SAFETENSORS_INDEX).is_file():
        weight_map = read_json_object(unet_dir / SAFETENSORS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{unet_dir / SAFETENSORS_INDEX}: expected a non-empty 'weight_map' object")
        shards = sorted(set(weight_map.values()), key=str)
        for shard in shards:
            if not isinstance(shard, str) or not SHARD_NAME.fullmatch(shard):
                raise ValueError(f"{unet_dir / SAFETENSORS_INDEX}: shard {shard!r} must be a plain .safetensors "
                                 f"file name in {unet_dir}")
            if not (unet_dir / shard).is_file():
                raise ValueError(f"{unet_dir / SAFETENSORS_INDEX}: shard {shard} is missing")
        return tuple(unet_dir / s for s in shards)
    pickles = [name for name in PICKLE_FILES if (unet_dir / name).exists()]
    if pickles:
        raise ValueError(f"{unet_dir}: only pickle weights ({', '.join(pickles)}), which are never loaded; expected "
                         f"{SAFETENSORS_FILE} (re-save with save_pretrained(..., safe_serialization=True))")
    others = sorted(p.name for p in unet_dir.glob("*.safetensors"))
    raise ValueError(f"{unet_dir}: no weights; expected {SAFETENSORS_FILE}" + (f" (found {others})" if others else ""))


def _model_class(path: Path, config: dict) -> str:
    """The config's diffusers model class, if it is one called as ``model(x, t)`` (no other required argument)."""
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"{path}: _class_name is {name!r}; expected {MODEL_CLASSES}")
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    needs = [p.name for p in params[2:] if p.default is inspect.Parameter.empty
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(params) < 2 or needs:
        raise ValueError(f"{path}: _class_name is {name!r}, whose forward needs {needs or 'other arguments'} besides "
                         f"(sample, timestep): a conditional model; expected {MODEL_CLASSES}")
    return name


def _data_shape(path: Path, config: dict) -> tuple[tuple, bool]:
    """(data shape, learned variance) from a model config (diffusers' defaults: 3 channels in and out)."""
    _model_class(path, config)
    c_in, c_out, size = config.get("in_channels", 3), config.get("out_channels", 3), config.get("sample_size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"{path}: sample_size is {config.get('sample_size')!r}; expected an int or [height, width]")
    if not isinstance(c_in, int) or c_in < 1 or c_out not in (c_in, 2 * c_in):
        raise ValueError(f"{path}: out_channels {c_out!r} must equal in_channels {c_in!r} (or twice it: "
                         f"learned variance)")
    _check_sizes(path, config, size, c_in)
    return (c_in, *size), c_out == 2 * c_in


def _betas(path: Path, config: dict) -> torch.Tensor:
    """diffusers' own betas (float32, as its pipelines use them) from the scheduler class that saved the config."""
    cls = config.get("_class_name", DEFAULT_SCHEDULER)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"{path}: prediction_type {prediction!r} not supported; allowed: {list(PREDICTIONS)}")
    betas = _built(path, cls, config).betas.to(torch.float64)
    try:
        VPDiscrete(betas)  # raises ValueError unless every beta is in (0, 1)
    except ValueError as e:
        raise ValueError(f"{path}: {e} (from beta_start, beta_end, beta_schedule or trained_betas)") from None
    return betas


def _number(path: Path, config: dict, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {key} is {value!r}; expected a finite number")
    return float(value)


def _built(path: Path, cls: str, config: dict):
    """diffusers' scheduler ``cls`` from ``config``: what diffusers refuses is refused here, in one line; a
    ``num_train_timesteps`` above MAX_TRAIN_TIMESTEPS (the length of the tables diffusers builds) unless allow_large."""
    import diffusers

    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, int) and steps > MAX_TRAIN_TIMESTEPS and not _ALLOW_LARGE.get():
        raise ValueError(f"{path}: num_train_timesteps {steps} exceeds the cap of {MAX_TRAIN_TIMESTEPS}; pass "
                         f"--allow-large to load it")
    try:
        return getattr(diffusers, cls).from_config(config)
    except Exception as e:  # noqa: BLE001 -- any config diffusers cannot build from is the user's file
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: diffusers cannot build {cls} from it ({type(e).__name__}: {reason})") from None


def family_of(path: Path, config: dict) -> HubFamily:
    """The family a scheduler config says (VP, flow, EDM) and how its network is read; ValueError naming what is
    supported for any other config."""
    cls = config.get("_class_name", DEFAULT_SCHEDULER)
    if cls in SCHEDULER_CLASSES:
        prediction = PREDICTIONS.get(config.get("prediction_type", "epsilon"))
        return HubFamily("vp", VPDiscrete(_betas(path, config)), prediction, time_input="discrete")
    if cls in FLOW_SCHEDULERS:
        for key, why in FLOW_REFUSED.items():
            if config.get(key):
                raise ValueError(f"{path}: {key}={config[key]!r} is not supported ({why}); allowed: {key}=false")
        built = _built(path, cls, config).config
        shift, n = _number(path, built, "shift", 1.0), built.get("num_train_timesteps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{path}: num_train_timesteps is {n!r}; expected an integer >= 1")
        try:
            schedule = FlowMatching(shift=shift)
        except ValueError as e:
            raise ValueError(f"{path}: {e} (from shift)") from None
        return HubFamily("flow", schedule, "velocity", time_scale=float(n))
    if cls in EDM_SCHEDULERS:
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in EDM_OUTPUT_SIGN:
            raise ValueError(f"{path}: prediction_type {prediction!r} not supported by diffusers' EDM "
                             f"preconditioning; allowed: {list(EDM_OUTPUT_SIGN)}")
        built = _built(path, cls, config).config
        sigmas = {k: _number(path, built, k, d) for k, d in (("sigma_min", 0.002), ("sigma_max", 80.0),
                                                              ("sigma_data", 0.5))}
        try:
            schedule = EDM(**sigmas)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return HubFamily("edm", schedule, "edm", output_sign=EDM_OUTPUT_SIGN[prediction])
    raise ValueError(f"{path}: _class_name {cls!r} is not a supported diffusers scheduler; allowed: "
                     f"{SUPPORTED_SCHEDULERS}")


def inspect_folder(source: str, *, local_files_only: bool | None = None) -> HubFolder:
    """Resolve ``source`` (folder or hub id) and check layout, configs and weights files without loading weights."""
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    folder = _resolve(source, local_files_only)
    subfolder, unet_file, scheduler_file = _layout(folder)
    unet_config, scheduler_config = read_json_object(unet_file), read_json_object(scheduler_file)
    data_shape, learned_variance = _data_shape(unet_file, unet_config)
    family = family_of(scheduler_file, scheduler_config)
    weights = _weights(unet_file.parent)
    return HubFolder(folder, subfolder, unet_config, scheduler_config, weights, data_shape, learned_variance, family)


def check_folder(source: str) -> None:
    """ValueError unless ``load_diffusers(source)`` would find a loadable folder (weights not read)."""
    inspect_folder(source)


def fingerprint(info: HubFolder) -> str:
    """sha256 of the weights files' sha256s and both configs: everything that determines the model's outputs."""
    h = hashlib.sha256()
    for path in info.weights:
        h.update(file_sha256(path).encode())
    for config in (info.unet_config, info.scheduler_config):
        h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()


def load_diffusers(path_or_hub_id: str, *, local_files_only: bool | None = None, device="cpu") -> Checkpoint:
    """Load a diffusers model + scheduler as a Checkpoint (reference: ``pretrained.reference.ReferenceSolver`` on the
    PF-ODE, for the runner's default subset of a cell's samples).

    Args:
        path_or_hub_id: a local folder (pipeline layout or flat model folder) or a hub id ("google/ddpm-cifar10-32").
        local_files_only: only use the local Hugging Face cache for hub ids; defaults to HF_HUB_OFFLINE.
        device: where the network computes ("cpu", "cuda", "cuda:N" or a torch.device).
    """
    import diffusers

    device = resolve_device(device)
    info = inspect_folder(path_or_hub_id, local_files_only=local_files_only)
    cls = getattr(diffusers, info.unet_config["_class_name"])
    net = cls.from_pretrained(info.folder, subfolder=info.subfolder, use_safetensors=True).eval().to(device)
    c_in, learned_variance, fam = info.data_shape[0], info.learned_variance, info.family
    scale, sign = fam.time_scale, fam.output_sign

    def fn(x, t_in):
        with torch.no_grad():  # not inference_mode: torch.compile (--compile) cannot trace through it
            out = net(x, t_in * scale if scale != 1.0 else t_in)
        out = out.sample if hasattr(out, "sample") else out[0]
        out = out[:, :c_in] if learned_variance else out
        return -out if sign < 0 else out

    name = f"{PREFIX}{path_or_hub_id}"
    model = DiffusionModel(fn, fam.schedule, fam.prediction, time_input=fam.time_input, data_shape=info.data_shape,
                           net_dtype=torch.float32, name=name, device=device)

    def no_real_data(n, seed=0):
        raise ValueError(f"{name}: a diffusers checkpoint carries no data set; give FID a reference with --fid-ref")

    solver = ReferenceSolver.around(model)
    return Checkpoint(name=name, model=model,
                      description=f"diffusers {info.unet_config['_class_name']} ({fam.name}) from {path_or_hub_id}",
                      reference_solution=solver, reference_solver=solver, real_data=no_real_data, reference_exact=False,
                      fingerprint=fingerprint(info),
                      extras={"folder": str(info.folder), "scheduler_config": info.scheduler_config,
                              "learned_variance": learned_variance, "unet": net, "family": fam.name}, device=device)


def entry(source: str) -> CheckpointEntry:
    """The ``hub:<source>`` entry: loads with ``load_diffusers``, checks with ``check_folder`` (weights not read)."""
    return CheckpointEntry(f"{PREFIX}{source}", lambda device: load_diffusers(source, device=device), (),
                           "from config", "from config", f"diffusers-format checkpoint {source}", DEFAULT_N_SAMPLES,
                           lambda: check_folder(source))
