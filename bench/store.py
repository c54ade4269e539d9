"""The results store: one parquet file of flat rows, written atomically under a lock; resume skips done cells.

Every write replaces the whole file through a temporary file and ``os.replace`` while holding an
exclusive ``flock`` on ``.lock`` beside it, so an interrupted run never leaves a half-written file and
two runs on one folder neither lose nor duplicate rows (a cell already stored is not appended again).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .schema import COLUMNS, RETRY_STATUSES, conform

RESULTS_FILE = "results.parquet"
SAMPLES_DIR = "samples"    # the first few samples of each finished cell, for the report's image grids


class ResultsStore:
    """Rows of one results folder (``<dir>/results.parquet``)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / RESULTS_FILE

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> pd.DataFrame:
        """All stored rows (an empty frame with the schema's columns if none)."""
        try:
            # One open file descriptor: a concurrent os.replace swaps the name, never the file read here
            # (reading by path lets pyarrow open it twice and mix an old footer with new data).
            with open(self.path, "rb") as fh:
                return conform(pd.read_parquet(fh))
        except FileNotFoundError:
            return conform(pd.DataFrame(columns=list(COLUMNS)))

    def done_cells(self) -> set[str]:
        """Cell ids whose stored outcome is final (everything but ``error``, which is retried)."""
        df = self.read()
        return set(df.loc[~df["status"].isin(RETRY_STATUSES), "cell_id"])

    def append(self, rows: list[dict]) -> int:
        """Add rows; a cell already stored with a final status is kept, an ``error`` row is replaced.

        Returns the number of rows written.
        """
        if not rows:
            return 0
        with self._locked():
            old = self.read()
            final = set(old.loc[~old["status"].isin(RETRY_STATUSES), "cell_id"])
            new = conform(pd.DataFrame(rows))
            new = new[~new["cell_id"].isin(final)].drop_duplicates("cell_id", keep="last")
            if new.empty:
                return 0
            old = old[~old["cell_id"].isin(set(new["cell_id"]))]
            frames = [f for f in (old, new) if not f.empty]
            self._write(conform(pd.concat(frames, ignore_index=True)))
            return len(new)

    def save_samples(self, cell_id: str, samples) -> None:
        """Keep a few samples of a cell (float32 .npy, written atomically)."""
        folder = self.dir / SAMPLES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{cell_id}.{os.getpid()}.npy"
        np.save(tmp, np.asarray(samples, dtype=np.float32))
        os.replace(tmp, folder / f"{cell_id}.npy")

    def load_samples(self, cell_id: str):
        path = self.dir / SAMPLES_DIR / f"{cell_id}.npy"
        return np.load(path, allow_pickle=False) if path.exists() else None

    def _write(self, df: pd.DataFrame):
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
