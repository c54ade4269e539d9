"""Distilled students of the digits checkpoint (KD, PD, CD), registered as heads of the checkpoint they come from.

Each head is a v-prediction UNet behind its own model boundary (pretrained.distill.v_model), its weights checked
against their pin in pins.py. A student is registered only once its weights are pinned; the sampling rules are
samplers/students.py. Recipes: pretrained/recipes/train_{digits_v,kd,pd,cd}.py.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from samplers.model import DiffusionModel
from samplers.students import CD_HEAD, KD_HEAD, PD_PREFIX, NoStudent

from .distill import v_model
from .nets import UNet
from .pins import PINNED_SHA256
from .registry import available, heads_of, register_head
from .weights import WEIGHTS_ROOT, load_weights, read_manifest, verify_weights

TEACHER = "digits"
KD_FOLDER, PD_FOLDER, CD_FOLDER = (WEIGHTS_ROOT / f"digits-{k}" for k in ("kd", "pd", "cd"))
PD_STEPS = (8, 4, 2, 1)  # the PD students shipped in digits-pd (keys "n8.", "n4.", ...)


def _boundary(state: dict, manifest: dict, head: str, device: torch.device) -> DiffusionModel:
    net = UNet(**manifest["architecture"]["config"])
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return v_model(net.eval().to(device), f"{TEACHER}/{head}")


@lru_cache(maxsize=None)
def _weights(folder, name: str) -> tuple[dict, dict]:
    """A students' weights file, read and pin-checked once per process (digits-pd holds four students)."""
    return load_weights(folder, name)


def load_student(folder, name: str, head: str, device: torch.device, prefix: str = "") -> DiffusionModel:
    """The student ``head`` from the weights ``folder`` of checkpoint ``name`` (pin-checked); keys under ``prefix``."""
    state, manifest = _weights(folder, name)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{folder}: no weights under {prefix!r}; it holds the students {manifest.get('students')}")
    return _boundary(state, manifest, head, device)


COST_COLUMNS = ("optimiser_steps", "teacher_nfe", "seconds", "threads")


def training_cost(sampler: str, nfe: int | None = None) -> dict | None:
    """What the network behind a student sampler (kd, pd at ``nfe``, cd) or genie's head cost to train, from its
    manifest's ``training_cost`` (the digits-v start included): optimiser steps, teacher NFE, wall-clock seconds,
    threads. None for a sampler that trains nothing."""
    folder = {"kd": KD_FOLDER, "pd": PD_FOLDER, "cd": CD_FOLDER, "genie": WEIGHTS_ROOT / "digits-genie"}.get(sampler)
    if folder is None:
        return None
    cost = read_manifest(folder)["training_cost"]
    if sampler == "pd":
        cost = cost["per_student"][str(nfe)]
    return {k: cost[k] for k in COST_COLUMNS}


def unsupported_reason(exc: Exception) -> str:
    """An unsupported cell's error text; a missing student also names the checkpoints that have one."""
    if not isinstance(exc, NoStudent):
        return str(exc)
    have = [c for c in available() if any(h == exc.student or h.startswith(f"{exc.student}:") for h in heads_of(c))]
    return f"{exc}; students exist for: {', '.join(have) or 'none'}"


def _register(folder, name: str, head: str, prefix: str = "") -> None:
    def check() -> None:
        verify_weights(folder, name)

    register_head(TEACHER, head, lambda ck: load_student(folder, name, head, ck.device, prefix), check=check)


if "digits-kd" in PINNED_SHA256:
    _register(KD_FOLDER, "digits-kd", KD_HEAD)
if "digits-pd" in PINNED_SHA256:
    for _n in PD_STEPS:
        _register(PD_FOLDER, "digits-pd", f"{PD_PREFIX}{_n}", prefix=f"n{_n}.")
if "digits-cd" in PINNED_SHA256:
    _register(CD_FOLDER, "digits-cd", CD_HEAD)
