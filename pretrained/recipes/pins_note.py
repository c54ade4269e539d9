"""What a recipe tells its user about the pin of the weights it wrote (pretrained/pins.py)."""
from __future__ import annotations

import os

from ..pins import PINNED_SHA256
from ..weights import WEIGHTS_ROOT


def pin_note(name: str, out, sha256: str) -> str:
    """One line: how to load the new weights, or which pin to update when they replaced the shipped ones."""
    if os.path.realpath(out) != os.path.realpath(WEIGHTS_ROOT / name):
        return (f"load them with trust_manifest=True or expected_sha256='{sha256}' "
                f"(shipped weights are checked against pretrained/pins.py)")
    if PINNED_SHA256.get(name) == sha256:
        return f"identical to the shipped {name} weights (pin unchanged)"
    return (f"these replace the shipped {name} weights: set PINNED_SHA256[{name!r}] = '{sha256}' in "
            f"pretrained/pins.py, or loading them fails the pin check")
