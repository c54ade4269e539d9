"""Weight folders: a safetensors file plus manifest.json, checked against the pinned sha256 before loading.

The manifest records the file's sha256, but an edit to both would pass that check alone; so loading
also compares the file with the pin in ``pins.py`` (shipped weights) or with a sha256 the caller
states (weights you trained). The manifest's ``weights_file`` must be a plain file name in the folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from .pins import PINNED_SHA256

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
WEIGHTS_ROOT = Path(__file__).parent / "weights"
PLAIN_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.safetensors")  # no separators, no leading dot
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; ValueError naming the file if it is not valid JSON or not an object."""
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


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


def file_in_folder(folder, file_name, what: str = "file") -> Path:
    """The real path of ``folder/file_name``; ValueError unless it is a regular file directly inside ``folder``."""
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, file_name))
    if os.path.dirname(path) != root:
        raise ValueError(f"{Path(folder) / file_name}: {what} resolves to {path}, outside the folder {root}")
    if not os.path.isfile(path):
        raise ValueError(f"{Path(folder) / file_name}: {what} is missing (or not a regular file)")
    return Path(path)


def read_manifest(folder) -> dict:
    """manifest.json of ``folder``, with ``weights_file`` (a plain file name) and ``weights_sha256`` checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such checkpoint folder; expected a folder with {MANIFEST_FILE} "
                         f"and {WEIGHTS_FILE}")
    manifest = read_json_object(file_in_folder(folder, MANIFEST_FILE, "manifest"))
    name = manifest.get("weights_file")
    if not isinstance(name, str) or not PLAIN_FILE_NAME.fullmatch(name):
        raise ValueError(f"{folder / MANIFEST_FILE}: weights_file {name!r} must be a plain file name "
                         f"([A-Za-z0-9._-], no leading dot, ending .safetensors) inside {folder}")
    if not isinstance(manifest.get("weights_sha256"), str) or not SHA256_HEX.fullmatch(manifest["weights_sha256"]):
        raise ValueError(f"{folder / MANIFEST_FILE}: weights_sha256 must be 64 lowercase hex digits, "
                         f"got {manifest.get('weights_sha256')!r}")
    return manifest


def write_manifest(folder, manifest: dict) -> None:
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def verify_weights(folder, name: str | None = None, *, expected_sha256: str | None = None,
                   trust_manifest: bool = False) -> dict:
    """The manifest of ``folder`` once its weights file passed the checks of ``load_weights`` (file not parsed)."""
    return _checked_bytes(folder, name, expected_sha256, trust_manifest)[1]


def load_weights(folder, name: str | None = None, *, expected_sha256: str | None = None,
                 trust_manifest: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, manifest) of ``folder``: the file must match its manifest's sha256 and the expected one.

    Args:
        folder: a folder written by ``save_weights``.
        name: the checkpoint the caller expects (must equal the manifest's "name"); default: the manifest's.
        expected_sha256: the file's sha256 as the caller knows it (weights you trained).
        trust_manifest: accept the manifest's sha256 alone (your own folder, e.g. a recipe's ``--out``).
            With neither, the file must match ``PINNED_SHA256[name]``.
    """
    raw, manifest = _checked_bytes(folder, name, expected_sha256, trust_manifest)
    return load_safetensors_bytes(raw), manifest


def _checked_bytes(folder, name, expected_sha256, trust_manifest) -> tuple[bytes, dict]:
    folder = Path(folder)
    if expected_sha256 is not None and trust_manifest:
        raise ValueError("pass expected_sha256 or trust_manifest=True, not both")
    manifest = read_manifest(folder)
    if name is not None and manifest.get("name") != name:
        raise ValueError(f"{folder / MANIFEST_FILE}: names checkpoint {manifest.get('name')!r}, expected {name!r}")
    name = manifest.get("name")
    if expected_sha256 is not None:
        if not isinstance(expected_sha256, str) or not SHA256_HEX.fullmatch(expected_sha256):
            raise ValueError(f"expected_sha256 must be 64 lowercase hex digits, got {expected_sha256!r}")
        source = "the caller"
    elif not trust_manifest:
        if name not in PINNED_SHA256:
            raise ValueError(f"{folder}: no pinned sha256 for checkpoint {name!r} (pinned: {sorted(PINNED_SHA256)}); "
                             f"to load weights you trained pass expected_sha256='<hex>' or trust_manifest=True")
        expected_sha256, source = PINNED_SHA256[name], f"the pin of {name!r} in pretrained/pins.py"
    # Checked before the file is opened; read once, so the bytes hashed are the bytes loaded.
    path = file_in_folder(folder, manifest["weights_file"], "weights_file")
    raw = path.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != manifest["weights_sha256"]:
        raise ValueError(f"checksum mismatch for {folder / manifest['weights_file']}: sha256 is {actual}, "
                         f"manifest {folder / MANIFEST_FILE} expects {manifest['weights_sha256']}")
    if expected_sha256 is not None and actual != expected_sha256:
        raise ValueError(f"checksum mismatch for {folder / manifest['weights_file']}: sha256 is {actual}, "
                         f"{source} expects {expected_sha256} (weights and manifest changed together?)")
    return raw, manifest
