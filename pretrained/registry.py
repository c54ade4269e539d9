"""The checkpoint registry: ``load(name, device)`` gives a ``Checkpoint`` (model boundary + what metrics need).

A checkpoint name comes from one of three sources, each one loader behind one interface (``entry(name)`` gives a
``CheckpointEntry``: ``loader(device) -> Checkpoint`` and a cheap ``check()``): the registered names (a loader
registered with the facts ``bench list`` shows: data shape, schedule, prediction type, one-line description),
``hub:<folder or hub id>`` (``pretrained.hub``: diffusers-format folders) and ``py:<module>:<factory>``
(``pretrained.pysource``: the user's own Python, imported only when such a name is given). Loading happens only when
asked for, once per process and device. ``validate(name, device)`` checks that a load would succeed without loading
the weights.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import Callable

import torch

from samplers.model import DiffusionModel

from . import hub, pysource
from .checkpoint import DEVICES, Checkpoint, CheckpointEntry, resolve_device  # noqa: F401  (re-exported)


_REGISTRY: dict[str, CheckpointEntry] = {}
_HEADS: dict[str, dict[str, tuple]] = {}  # checkpoint -> {head name: (loader, check)}


def register_head(checkpoint: str, head: str, loader: Callable[[Checkpoint], DiffusionModel],
                  check: Callable[[], None] | None = None) -> None:
    """Attach a further network (a distilled student, a derivative head) to ``checkpoint``: ``load`` builds it
    with ``loader(ck)`` from the loaded checkpoint (its device, and what it already loaded, e.g. the network a head
    reads) and passes it to the checkpoint's model as ``heads[head]``; ``check()`` raises
    ValueError where its weights would not load (``validate`` runs it). Duplicates raise."""
    if not head or any(c.isspace() for c in head):
        raise ValueError(f"invalid head name {head!r}")
    if head in _HEADS.get(checkpoint, {}):
        raise ValueError(f"checkpoint {checkpoint!r} already has a head {head!r}")
    _HEADS.setdefault(checkpoint, {})[head] = (loader, check or (lambda: None))


def heads_of(checkpoint: str) -> list[str]:
    """The names of the heads registered for ``checkpoint``."""
    return sorted(_HEADS.get(checkpoint, {}))


def checkpoints_with_head(head: str) -> list[str]:
    """The checkpoints that have a head named ``head`` (for "which checkpoints have a student" messages)."""
    return sorted(c for c, heads in _HEADS.items() if head in heads)


def register_checkpoint(name: str, *, data_shape: tuple, schedule: str, prediction: str, description: str,
                        default_n_samples: int = 1000, check: Callable[[], None] | None = None):
    """Decorator registering a loader ``(device) -> Checkpoint`` under ``name`` (duplicates raise).

    ``check``, if given, raises ValueError where loading would fail (e.g. a weights checksum), cheaply.
    """
    def deco(loader):
        if name in _REGISTRY:
            raise ValueError(f"checkpoint {name!r} is already registered")
        _REGISTRY[name] = CheckpointEntry(name, loader, tuple(data_shape), schedule, prediction, description,
                                         default_n_samples, check or (lambda: None))
        return loader
    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


HUB_PREFIX = hub.PREFIX  # "hub:<folder or hub id>" names a diffusers-format checkpoint
SOURCES = {hub.PREFIX: hub.entry, pysource.PREFIX: pysource.entry}  # name prefix -> entry(source) of that loader
SOURCE_FORMS = "'hub:<folder or hub id>' or 'py:<module>:<factory>'"


SAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
SAFE_NAME_SLUG = 40  # characters of the readable part; the sha1 part keeps distinct names distinct


def safe_name(name: str) -> str:
    """A file-name token for a checkpoint name: its [A-Za-z0-9._-] slug (<= 40 chars) + "-" + 10 hex of sha1(name).

    Never empty, never starts with a dot or contains a separator, so ``folder / safe_name(n)`` stays in ``folder``.
    """
    if not isinstance(name, str):
        raise ValueError(f"checkpoint name must be a str, got {type(name).__name__}")
    slug = SAFE_NAME_CHARS.sub("_", name).strip("._-")[:SAFE_NAME_SLUG]
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}" if slug else digest


def entry(name: str) -> CheckpointEntry:
    """The entry of a registered name, or of a "hub:" / "py:" name from its source (made on the fly, nothing loaded)."""
    if not isinstance(name, str):
        raise ValueError(f"checkpoint name must be a str, got {type(name).__name__}")
    for prefix, source_entry in SOURCES.items():
        if name.startswith(prefix):
            return source_entry(name[len(prefix):])
    if name not in _REGISTRY:
        raise ValueError(f"unknown checkpoint {name!r}; allowed: {available()} or {SOURCE_FORMS}")
    return _REGISTRY[name]


def validate(name: str, device="cpu") -> CheckpointEntry:
    """Raise ValueError unless ``load(name, device)`` would find its files intact, without loading the network.

    For a "hub:" name: the folder layout, both configs and a safetensors weights file (a hub id is resolved
    as ``load`` would, through the Hugging Face cache); for shipped weights: the sha256 pin.
    """
    resolve_device(device)
    e = entry(name)
    e.check()
    for _, check in _HEADS.get(name, {}).values():
        check()
    return e


def load(name: str, device="cpu") -> Checkpoint:
    """Load a registered checkpoint, "hub:<folder or hub id>" (a diffusers model) or "py:<module>:<factory>" onto
    ``device``.

    Cached per (name, device) for the process. ``device``: "cpu", "cuda", "cuda:N" (or a torch.device).
    """
    return _load(name, resolve_device(device))


@lru_cache(maxsize=None)
def _load(name: str, device: torch.device) -> Checkpoint:
    ck = entry(name).loader(device)
    if _HEADS.get(name):
        heads = {**ck.model.heads, **{h: loader(ck) for h, (loader, _) in _HEADS[name].items()}}
        ck.model = ck.model.replace(heads=heads)
    return ck
