"""Provenance of a run: git commit, package versions and threads, recorded in every row (the device: devices.py)."""
from __future__ import annotations

import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=None)
def git_commit() -> str:
    """HEAD of the checkout this package runs from, '+dirty' if modified; 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=None)
def versions() -> str:
    import numpy
    from importlib.metadata import PackageNotFoundError, version
    try:
        ours = version("samplerbench")
    except PackageNotFoundError:
        ours = "source"
    return json.dumps({"samplerbench": ours, "python": platform.python_version(), "torch": torch.__version__,
                       "numpy": numpy.__version__}, sort_keys=True)


def provenance() -> dict:
    return {"git_commit": git_commit(), "versions": versions(), "threads": torch.get_num_threads()}
