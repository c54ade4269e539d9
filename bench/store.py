"""The results store: a parquet dataset of immutable parts, plus one claim file per cell so runs share a sweep.

Layout of a results folder::

    results.parquet/part-*.parquet   the rows; each part is written once (temporary name, fsync, rename) and never
                                     changed, so any reader by path (pandas.read_parquet, pyarrow, ours) sees whole
                                     files only, and appending costs the same at 10 or 100,000 stored cells
    .cells/<cell_id>                 the cell's state: claimed by a live run (its heartbeat is the file's mtime),
                                     or the final status it ended in
    .lock                            flock for taking over stale claims, compaction and migration

A run claims a cell before computing it (``claim``), so runs started on one folder split the cells between
them; a claim whose run was killed (dead pid on this host, or no heartbeat for CLAIM_TTL_S) is taken over.
A row is stored before its claim turns final, so a kill between the two recomputes nothing already stored
(the takeover finds the row). ``error`` cells are retried by later runs; ``read`` keeps the last attempt.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .atomic import HOST, atomic_write, pid_alive, sweep_temporaries
from .schema import COLUMNS, REQUIRED_COLUMNS, RETRY_STATUSES, STATUSES, conform

RESULTS_FILE = "results.parquet"  # a folder of parts (a single file in stores written before 0.2: migrated)
CELLS_DIR = ".cells"
SAMPLES_DIR = "samples"    # the first few samples of each finished cell, for the report's image grids
PART_PREFIX = "part-"
CLAIMED = "claimed"
CLAIM_TTL_S = 120.0        # a claim not refreshed for this long belongs to a dead run
HEARTBEAT_S = 20.0
READ_RETRIES = 5           # a compaction may remove a part between listing and reading it


LOCK_FILE = ".lock"
CACHE_DIR = "cache"
DAMAGED_DIR = "damaged"    # `bench compact --drop-damaged` moves damaged parts here


class StoreWriteError(OSError):
    """The results folder could not be written (disk full, permissions): stored rows are intact."""


class DamagedStoreError(ValueError):
    """A stored file cannot be read: the message names it and how to recover. Every command that reads stops alike."""


@lru_cache(maxsize=1)
def arrow_schema() -> pa.Schema:
    return pa.Schema.from_pandas(conform(pd.DataFrame(columns=list(COLUMNS))), preserve_index=False)


class ResultsStore:
    """Rows and cell claims of one results folder."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / RESULTS_FILE
        self.cells = self.dir / CELLS_DIR
        self._seq = 0
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    # -- checks and housekeeping ----------------------------------------------------------------
    def check(self) -> None:
        """Everything ``prepare`` could refuse, writing nothing (probe files are created and removed, last): the folder
        and its own entries (lock, markers, cache, samples, the parts' folder) of the right type, every stored part
        readable, the folder and its entries writable; ValueError naming the path if not."""
        entries = self._check_entry_types()
        parts = self._parts()
        if parts:
            self._read_table(parts[:1], check=True)  # a foreign file is refused untouched
            self.read()  # a damaged part is named before anything is written
        self._check_writable(entries)

    def check_entries(self) -> None:
        """``check`` without reading the stored parts."""
        self._check_writable(self._check_entry_types())

    def _check_entry_types(self) -> dict[Path, str]:
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"results folder {self.dir} is a file; give a folder (it is created if missing)")
        kinds = {LOCK_FILE: "file", CELLS_DIR: "folder", CACHE_DIR: "folder", SAMPLES_DIR: "folder",
                 RESULTS_FILE: "file" if self.path.is_file() else "folder"}  # a file: a store from before 0.2
        entries = {}
        for name, kind in kinds.items():
            path = self.dir / name
            if not (path.exists() or path.is_symlink()):
                continue
            if (kind == "file") != path.is_file() or (kind == "folder") != path.is_dir():
                raise ValueError(f"{path} should be a {kind} of the results store; move it out of {self.dir} "
                                 f"(or use another --results folder)")
            entries[path] = kind
        for folder in (self.cells, self.dir / SAMPLES_DIR):  # one plain file per cell in each
            if folder in entries:
                odd = next((e for e in os.scandir(folder) if not e.is_file(follow_symlinks=False)), None)
                if odd is not None:
                    raise ValueError(f"{odd.path} is not a plain file (each entry of {folder} is one cell's); move it "
                                     f"out of {self.dir}")
        return entries

    def _check_writable(self, entries: dict[Path, str]) -> None:
        from .preflight import check_output_folder, probe_writable

        check_output_folder(self.dir, "results folder")
        for path, kind in entries.items():
            reason = (probe_writable(path) if kind == "folder"
                      else None if os.access(path, os.R_OK | os.W_OK) else "permission denied")
            if reason:
                raise ValueError(f"{path} is not writable ({reason}); fix its permissions or use another --results "
                                 f"folder")

    def prepare(self) -> None:
        """``check``, then create the folder, migrate an old single-file store and sweep leftovers of killed runs."""
        self.check()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"results folder {self.dir} is not writable ({exc.strerror or exc})") from exc
        with self._locked():
            self._migrate_single_file()
            if not self.cells.exists():
                self._rebuild_markers(self.read())
        sweep_temporaries(self.dir)

    def _migrate_single_file(self) -> None:
        if not self.path.is_file():
            return
        df = self._read_table([self.path], check=True).to_pandas()
        legacy = self.dir / f".{RESULTS_FILE}.legacy"
        os.replace(self.path, legacy)
        self.path.mkdir()
        os.replace(legacy, self.path / f"{PART_PREFIX}{0:020d}-legacy.parquet")
        self._rebuild_markers(conform(df))

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- rows -----------------------------------------------------------------------------------
    def _parts(self) -> list[Path]:
        if not self.path.is_dir():
            return [self.path] if self.path.is_file() else []
        return sorted(Path(e.path) for e in os.scandir(self.path)
                      if e.name.startswith(PART_PREFIX) and e.name.endswith(".parquet"))

    def _damaged(self, part: Path, exc: BaseException) -> DamagedStoreError:
        from .preflight import one_line

        return DamagedStoreError(
            f"results part {part} is damaged ({one_line(exc, 200)}); move it aside with `python -m bench compact "
            f"--results {self.dir} --drop-damaged` (its cells are then recomputed by the next run)")

    def _find_damaged(self, parts: list[Path], exc: BaseException) -> DamagedStoreError:
        """The first part that cannot be read alone against the results schema (the error of a whole-dataset read)."""
        for part in parts:
            try:
                self._read_one(part)
            except FileNotFoundError:
                raise
            except (pa.ArrowException, OSError, ValueError) as one:
                return self._damaged(part, one)
        return self._damaged(parts[0], exc)

    def _read_one(self, part: Path) -> pa.Table:
        schema = pa.unify_schemas([pq.read_schema(part), arrow_schema()])
        return ds.dataset([str(part)], schema=schema, format="parquet").to_table()

    def damaged_parts(self) -> list[Path]:
        """Every stored part that cannot be read (all parts are read)."""
        bad = []
        for part in self._parts():
            try:
                self._read_one(part)
            except FileNotFoundError:
                continue
            except (pa.ArrowException, OSError, ValueError):
                bad.append(part)
        return bad

    def _read_table(self, parts: list[Path], check: bool = False) -> pa.Table:
        try:
            return self._read_table_unchecked(parts, check)
        except (DamagedStoreError, FileNotFoundError):
            raise
        except (pa.ArrowException, OSError) as exc:
            raise self._find_damaged(parts, exc) from None

    def _read_table_unchecked(self, parts: list[Path], check: bool) -> pa.Table:
        first = pq.read_schema(parts[0])
        if check:
            missing = [c for c in REQUIRED_COLUMNS if c not in first.names]
            if missing:
                raise ValueError(f"{parts[0]} is not a samplerbench results file: it lacks columns {missing}; "
                                 f"move it out of {self.dir} or use another --results folder")
        try:
            schema = pa.unify_schemas([first, arrow_schema()])
        except pa.ArrowInvalid as exc:
            raise self._damaged(parts[0], exc) from None
        return ds.dataset([str(p) for p in parts], schema=schema, format="parquet").to_table()

    def read(self, *, all_attempts: bool = False) -> pd.DataFrame:
        """Stored rows (schema columns first, then any extra ones); the last attempt of each cell unless ``all_attempts``."""
        for attempt in range(READ_RETRIES):
            parts = self._parts()
            if not parts:
                return conform(pd.DataFrame(columns=list(COLUMNS)))
            try:
                df = conform(self._read_table(parts).to_pandas())
                break
            except FileNotFoundError:
                if attempt == READ_RETRIES - 1:
                    raise
                time.sleep(0.05)
        if all_attempts or df.empty:
            return df
        # Parts are in write order; a final outcome outranks an error row whatever their order.
        final = ~df["status"].isin(RETRY_STATUSES)
        order = np.lexsort((np.arange(len(df)), final.to_numpy()))
        return df.iloc[order].drop_duplicates("cell_id", keep="last").sort_index().reset_index(drop=True)

    def done_cells(self) -> set[str]:
        """Cell ids whose stored outcome is final (everything but ``error``, which is retried)."""
        df = self.read()
        return set(df.loc[~df["status"].isin(RETRY_STATUSES), "cell_id"])

    def append(self, rows: list[dict]) -> int:
        """Store rows as one new part, then mark their cells final (or free an ``error`` cell for a retry)."""
        if not rows:
            return 0
        df = conform(pd.DataFrame(rows))
        unknown = set(df["status"]) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; allowed: {list(STATUSES)}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(exist_ok=True)
        self._seq += 1
        name = f"{PART_PREFIX}{time.time_ns():020d}-{HOST}-{os.getpid()}-{self._seq:06d}.parquet"
        table = pa.Table.from_pandas(df, schema=pa.unify_schemas([arrow_schema(), pa.Schema.from_pandas(
            df, preserve_index=False)]) if len(df.columns) > len(COLUMNS) else arrow_schema(), preserve_index=False)
        try:
            atomic_write(self.path / name, lambda tmp: pq.write_table(table, tmp))
        except OSError as exc:
            raise StoreWriteError(exc.errno or errno.EIO, f"cannot write results to {self.path} "
                                  f"({exc.strerror or exc}); stored rows are intact, rerun to resume") from exc
        for cell_id, status in zip(df["cell_id"], df["status"]):
            self.finish(cell_id, status)
        return len(df)

    def rewrite(self, df: pd.DataFrame) -> None:
        """Replace every stored row by ``df`` (one part): ``bench compact``; readers racing it may need a retry."""
        with self._locked():
            old = self._parts()
            if len(df):
                self.append(conform(df).to_dict("records"))
            for p in old:
                p.unlink(missing_ok=True)
            self._rebuild_markers(conform(df))

    # -- cell claims ----------------------------------------------------------------------------
    def _marker(self, cell_id: str) -> Path:
        if not cell_id or not all(c.isalnum() or c in "-_" for c in cell_id):
            raise ValueError(f"invalid cell id {cell_id!r}")
        return self.cells / cell_id

    def _rebuild_markers(self, df: pd.DataFrame) -> None:
        self.cells.mkdir(parents=True, exist_ok=True)
        final = df[~df["status"].isin(RETRY_STATUSES)]
        keep = set(final["cell_id"])
        for e in os.scandir(self.cells):
            if e.name not in keep and not e.name.startswith(".") and self._state(Path(e.path)).get("state") != CLAIMED:
                Path(e.path).unlink(missing_ok=True)
        for cell_id, status in zip(final["cell_id"], final["status"]):
            self._write_marker(cell_id, {"state": status})

    def _write_marker(self, cell_id: str, content: dict) -> None:
        self.cells.mkdir(parents=True, exist_ok=True)
        atomic_write(self._marker(cell_id), lambda tmp: tmp.write_text(json.dumps(content)))

    @staticmethod
    def _state(path: Path) -> dict:
        try:
            return json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            return {}
        except ValueError:
            return {"state": CLAIMED, "host": "?", "pid": -1}  # being written: treat as a fresh claim

    def _stale(self, path: Path, state: dict) -> bool:
        if state.get("host") == HOST and isinstance(state.get("pid"), int) and state["pid"] > 0:
            if not pid_alive(state["pid"]):
                return True
        try:
            return time.time() - path.stat().st_mtime > CLAIM_TTL_S
        except FileNotFoundError:
            return True

    def claim(self, cell_id: str) -> str:
        """Try to take a cell: "claimed" (ours now), "done" (a final row is stored) or "busy" (a live run has it)."""
        path = self._marker(cell_id)
        self.cells.mkdir(parents=True, exist_ok=True)
        mine = json.dumps({"state": CLAIMED, "host": HOST, "pid": os.getpid(), "since": time.time()})
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            state = self._state(path)
            if state.get("state") not in (None, CLAIMED):
                return "done"
            if not self._stale(path, state):
                return "busy"
            with self._locked():  # one taker of a stale claim; it first looks for a row stored before the kill
                state = self._state(path)
                if state.get("state") not in (None, CLAIMED):
                    return "done"
                if not self._stale(path, state):
                    return "busy"
                stored = self.read()
                hit = stored[(stored["cell_id"] == cell_id) & ~stored["status"].isin(RETRY_STATUSES)]
                if len(hit):
                    self._write_marker(cell_id, {"state": str(hit["status"].iloc[0])})
                    return "done"
                self._write_marker(cell_id, json.loads(mine))
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(mine)
        with self._held_lock:
            self._held.add(cell_id)
        return "claimed"

    def finish(self, cell_id: str, status: str) -> None:
        """Mark a stored cell final, or release it for a retry (``error``)."""
        with self._held_lock:
            self._held.discard(cell_id)
        if status in RETRY_STATUSES:
            self.release(cell_id)
        else:
            self._write_marker(cell_id, {"state": status})

    def release(self, cell_id: str) -> None:
        """Give back a claim of this process (a cell that did not finish); final markers are left alone."""
        with self._held_lock:
            self._held.discard(cell_id)
        path = self._marker(cell_id)
        state = self._state(path)
        if state.get("state") == CLAIMED and state.get("pid") == os.getpid() and state.get("host") == HOST:
            path.unlink(missing_ok=True)

    @contextmanager
    def heartbeat(self, every: float = HEARTBEAT_S):
        """Refresh this process's claims in the background while the block runs, and release them after."""
        stop = threading.Event()

        def beat():
            while not stop.wait(every):
                with self._held_lock:
                    held = list(self._held)
                for cell_id in held:
                    try:
                        os.utime(self._marker(cell_id))
                    except OSError:
                        pass
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with self._held_lock:
                held = list(self._held)
            for cell_id in held:
                self.release(cell_id)

    # -- kept samples ---------------------------------------------------------------------------
    def save_samples(self, cell_id: str, samples) -> None:
        """Keep a few samples of a cell (float32 .npy, written atomically)."""
        folder = self.dir / SAMPLES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.asarray(samples, dtype=np.float32)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
        atomic_write(folder / f"{self._marker(cell_id).name}.npy", write)

    def load_samples(self, cell_id: str):
        """The kept samples of a cell, or None; a damaged file is a DamagedStoreError naming it."""
        path = self.dir / SAMPLES_DIR / f"{self._marker(cell_id).name}.npy"
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            from .preflight import one_line
            raise DamagedStoreError(f"samples file {path} is damaged ({one_line(exc, 200)}); move it aside (the "
                                    f"report then shows no samples for that cell) or delete it") from None

    def drop_damaged(self) -> list[Path]:
        """Move every damaged part into DAMAGED_DIR and forget its cells' final markers, so runs recompute them."""
        with self._locked():
            bad = self.damaged_parts()
            if bad:
                (self.dir / DAMAGED_DIR).mkdir(exist_ok=True)
                for part in bad:
                    os.replace(part, self.dir / DAMAGED_DIR / part.name)
                self._rebuild_markers(self.read())
        return bad
