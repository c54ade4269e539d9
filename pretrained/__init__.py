"""Checkpoints behind one interface: ``pretrained.load(name, device)``, ``validate``, ``available``, ``safe_name``."""
from .registry import (Checkpoint, available, entry, load, register_checkpoint, register_head, resolve_device,
                       safe_name, validate)
from . import analytic  # noqa: F401  (registers gmm-2d, gmm-16d)
from . import digits  # noqa: F401  (registers digits)
from . import vdm  # noqa: F401  (registers digits-vdm)
from . import students  # noqa: F401  (registers the distilled students as heads of digits)
from . import genie  # noqa: F401  (registers GENIE's derivative head of digits)

__all__ = ["Checkpoint", "available", "entry", "load", "register_checkpoint", "register_head", "resolve_device", "safe_name",
           "validate"]
