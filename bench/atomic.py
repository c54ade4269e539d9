"""Atomic file writes: a hidden per-process temporary name, fsync, rename; leftovers of killed runs are swept later.

Every file the harness writes goes through ``atomic_write``, so a reader (ours or a user's, by path) sees
either the old file or the whole new one, and a kill at any moment leaves at most a temporary file named
``.<name>.<host>.<pid>.tmp``, which ``sweep_temporaries`` removes once its process is gone.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

HOST = socket.gethostname().replace(".", "_") or "host"
TMP_SUFFIX = ".tmp"
FOREIGN_TMP_MAX_AGE_S = 24 * 3600  # a temporary of another host is swept only when this old


def temp_path(path: Path) -> Path:
    """The hidden temporary name this process writes ``path`` through."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then move tmp onto ``path`` (fsync'd); on any failure the temporary is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def sweep_temporaries(root: str | os.PathLike) -> int:
    """Remove temporaries under ``root`` left by dead processes of this host (or old ones of other hosts)."""
    removed = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                continue
            parts = name[: -len(TMP_SUFFIX)].rsplit(".", 2)
            if len(parts) != 3 or not parts[2].isdigit():
                continue
            host, pid, path = parts[1], int(parts[2]), Path(dirpath) / name
            try:
                stale = (not pid_alive(pid)) if host == HOST else (
                    time.time() - path.stat().st_mtime > FOREIGN_TMP_MAX_AGE_S)
                if stale:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed
