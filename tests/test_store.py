"""Fault injection on the results store: kills at random points, concurrent writers and readers by path,
a full disk, leftovers of killed runs, foreign files in the results folder."""
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import store as store_mod
from bench.atomic import HOST, sweep_temporaries, temp_path
from bench.cli import main
from bench.store import ResultsStore

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--checkpoint", "gmm-2d", "--n-samples", "32", "--quiet", "--seeds", "0"]
ROW = {"seed": 0, "n_samples": 1, "batch_size": 1, "threads": 1, "world_size": 1, "checkpoint": "x",
       "sampler": "ddim", "sampler_config": "{}", "nfe": 3, "status": "ok"}


def _bench(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pandas_readers_by_path_never_see_a_partial_store(tmp_path):
    """The README's `pandas.read_parquet(path)` while a writer appends: every read succeeds, rows only grow."""
    store, stop = ResultsStore(tmp_path), threading.Event()
    store.prepare()

    def writer():
        i = 0
        while not stop.is_set():
            store.append([{**ROW, "cell_id": f"c{i}"}])
            i += 1
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen, reads, deadline = 0, 0, time.time() + 5
        while time.time() < deadline:
            if store.path.exists():
                n = len(pd.read_parquet(store.path))
                assert n >= seen
                seen, reads = n, reads + 1
    finally:
        stop.set()
        thread.join()
    assert seen > 20 and reads > 20


def test_appending_reads_no_stored_rows(tmp_path, monkeypatch):
    """An append writes one new part and reads nothing back, so its cost is the same at any store size."""
    store = ResultsStore(tmp_path)
    store.append([{**ROW, "cell_id": "a"}])

    def no_reads(*a, **k):
        raise AssertionError("append read stored rows")
    monkeypatch.setattr(store_mod.ds, "dataset", no_reads)
    monkeypatch.setattr(store_mod.pq, "read_schema", no_reads)
    store.append([{**ROW, "cell_id": "b"}])
    monkeypatch.undo()
    assert sorted(store.read()["cell_id"]) == ["a", "b"]


def test_claims_split_cells_and_expire_with_their_run(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    assert store.claim("c1") == "claimed" and store.claim("c1") == "busy"
    store.append([{**ROW, "cell_id": "c1"}])
    assert store.claim("c1") == "done"
    # a claim left by a killed process of this host is taken over at once
    (tmp_path / ".cells" / "c2").write_text(f'{{"state": "claimed", "host": "{HOST}", "pid": {_dead_pid()}}}')
    assert store.claim("c2") == "claimed"
    # a killed process not yet reaped by its parent (a zombie) is dead too
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()
    time.sleep(0.3)
    (tmp_path / ".cells" / "c5").write_text(f'{{"state": "claimed", "host": "{HOST}", "pid": {zombie.pid}}}')
    assert store.claim("c5") == "claimed"
    zombie.wait()
    # another host's claim: busy while its heartbeat is fresh, taken over after CLAIM_TTL_S
    marker = tmp_path / ".cells" / "c3"
    marker.write_text('{"state": "claimed", "host": "elsewhere", "pid": 1}')
    assert store.claim("c3") == "busy"
    old = time.time() - store_mod.CLAIM_TTL_S - 1
    os.utime(marker, (old, old))
    assert store.claim("c3") == "claimed"
    # a stale claim whose row was stored before the kill is found, not recomputed
    store.append([{**ROW, "cell_id": "c4"}])
    (tmp_path / ".cells" / "c4").write_text(f'{{"state": "claimed", "host": "{HOST}", "pid": {_dead_pid()}}}')
    assert store.claim("c4") == "done"
    # an error row frees its cell for a retry
    store.append([{**ROW, "cell_id": "c2", "status": "error", "error": "boom"}])
    assert store.claim("c2") == "claimed"


def test_heartbeat_keeps_a_long_cell_claimed(tmp_path):
    store = ResultsStore(tmp_path)
    store.claim("c1")
    marker = tmp_path / ".cells" / "c1"
    old = time.time() - 1000
    os.utime(marker, (old, old))
    with store.heartbeat(every=0.05):
        time.sleep(0.3)
        assert time.time() - marker.stat().st_mtime < 5
    assert not marker.exists()  # released when the run ends without finishing it


def test_concurrent_runs_split_the_sweep(tmp_path):
    args = ["run", *TINY, "--results", str(tmp_path), "--nfe", *map(str, range(40, 80, 2)), "--sampler", "euler"]
    procs = [_bench(*args) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    df = ResultsStore(tmp_path).read(all_attempts=True)
    assert len(df) == 20 and df["cell_id"].is_unique and (df["status"] == "ok").all()
    assert df["run_id"].nunique() == 2  # both runs computed cells, none computed twice


def test_random_kills_lose_and_duplicate_nothing(tmp_path):
    """kill -9 at random moments, three times, then resume: every cell once, numbers as a clean run's."""
    nfes = [*map(str, range(20, 50, 2))]
    args = ["run", *TINY, "--results", str(tmp_path / "r"), "--nfe", *nfes, "--sampler", "euler", "ddim"]
    rng = random.Random(7)
    for _ in range(3):
        proc = _bench(*args)
        time.sleep(rng.uniform(3.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _bench(*args).wait(timeout=300) == 0
    assert main(["run", *TINY, "--results", str(tmp_path / "clean"), "--nfe", *nfes, "--sampler", "euler", "ddim"]) == 0
    got = ResultsStore(tmp_path / "r").read(all_attempts=True)
    clean = ResultsStore(tmp_path / "clean").read()
    assert len(got) == len(clean) == 30 and got["cell_id"].is_unique
    a, b = (d.set_index("cell_id").sort_index() for d in (got, clean))
    assert (a["solver_error_mean"] == b["solver_error_mean"]).all()
    leftovers = [p for p in (tmp_path / "r").rglob("*.tmp")]
    assert not leftovers


def test_leftover_temporaries_of_dead_runs_are_swept(tmp_path):
    dead = tmp_path / f".part-x.parquet.{HOST}.{_dead_pid()}.tmp"
    alive = temp_path(tmp_path / "part-y.parquet")  # this process's: still being written
    foreign = tmp_path / ".part-z.parquet.otherhost.12.tmp"
    for p in (dead, alive, foreign):
        p.write_bytes(b"x")
    assert sweep_temporaries(tmp_path) == 1
    assert not dead.exists() and alive.exists() and foreign.exists()


def test_full_disk_stops_the_sweep_and_keeps_what_was_stored(tmp_path, monkeypatch, capsys):
    real, calls = store_mod.pq.write_table, []

    def filling(table, where, *a, **k):
        calls.append(where)
        if len(calls) > 2:
            Path(where).write_bytes(b"PAR1 half a file")  # the disk fills mid-write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, *a, **k)
    monkeypatch.setattr(store_mod.pq, "write_table", filling)
    assert main(["run", *TINY, "--results", str(tmp_path), "--nfe", "3", "4", "5", "6", "--sampler", "ddim"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and "rerun to resume" in err
    monkeypatch.undo()
    store = ResultsStore(tmp_path)
    assert len(store.read()) == 2 and not list(tmp_path.rglob("*.tmp"))
    assert main(["run", *TINY, "--results", str(tmp_path), "--nfe", "3", "4", "5", "6", "--sampler", "ddim"]) == 0
    assert len(store.read(all_attempts=True)) == 4  # the failed cell's claim was released: resumed, once


def test_foreign_parquet_in_the_results_folder_is_refused_untouched(tmp_path, capsys):
    path = tmp_path / "results.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(path)
    before = path.read_bytes()
    assert main(["run", *TINY, "--results", str(tmp_path), "--nfe", "3", "--sampler", "ddim"]) == 2
    assert "not a samplerbench results file" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_old_single_file_store_is_migrated_with_its_extra_columns(tmp_path):
    assert main(["run", *TINY, "--results", str(tmp_path / "a"), "--nfe", "3", "--sampler", "ddim"]) == 0
    df = ResultsStore(tmp_path / "a").read()
    df["note"] = "kept"
    (tmp_path / "b").mkdir()
    df.to_parquet(tmp_path / "b" / "results.parquet")  # the layout before parts
    assert main(["run", *TINY, "--results", str(tmp_path / "b"), "--nfe", "3", "4", "--sampler", "ddim"]) == 0
    out = ResultsStore(tmp_path / "b").read()
    assert len(out) == 2 and (tmp_path / "b" / "results.parquet").is_dir()
    assert list(out.loc[out["nfe"] == 3, "note"]) == ["kept"]  # the first run's row was not recomputed
