"""Shipped weights: a safetensors file plus manifest.json recording its sha256, checked before loading."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
WEIGHTS_ROOT = Path(__file__).parent / "weights"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(folder, state_dict: dict, manifest: dict) -> dict:
    """Write ``model.safetensors`` and ``manifest.json`` (``manifest`` plus the weights' sha256) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(folder / WEIGHTS_FILE))
    manifest = {**manifest, "weights_file": WEIGHTS_FILE, "weights_sha256": file_sha256(folder / WEIGHTS_FILE)}
    write_manifest(folder, manifest)
    return manifest


def read_manifest(folder) -> dict:
    return json.loads((Path(folder) / MANIFEST_FILE).read_text())


def write_manifest(folder, manifest: dict) -> None:
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_weights(folder) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, manifest) of ``folder``; the file's sha256 is verified before it is read (no pickle)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    path = folder / manifest["weights_file"]
    actual = file_sha256(path)
    if actual != manifest["weights_sha256"]:
        raise ValueError(f"checksum mismatch for {path}: sha256 is {actual}, "
                         f"manifest {folder / MANIFEST_FILE} expects {manifest['weights_sha256']}")
    return load_file(str(path)), manifest
