"""The regression gate: compare stored cells with a committed baseline; any worse or missing cell fails.

A metric is worse when it moved in its bad direction by more than ``atol + rtol * |baseline|``
(lower is better for errors, distances, FID/KID and NLL; higher for log-likelihood). Timing is not
gated. A baseline cell that is missing from the results, or that was ``ok`` and now is not, fails.

A baseline has exactly the columns ``baseline_columns()`` (the schema's key columns, ``status`` and the
gated metrics). A baseline written before a key column existed is refused with the missing column named,
not matched as if it had some default: rewrite it with ``python -m bench baseline``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from . import schema
from .report import read_results

DEFAULT_RTOL = 0.02   # 2 %: same seeds give the same numbers, so this only absorbs float noise across machines
DEFAULT_ATOL = 1e-8
UNGATED_METRICS = ("wall_clock_s",)  # timing depends on the machine
NAMED_KEYS = ("checkpoint", "sampler", "nfe", "seed")  # spelled out in every report line; other keys as k=v
SHOWN = 5  # offending values quoted in an error message
JSON_COLUMNS = ("sampler_config",)  # JSON of every option (schema)


def gated_metrics() -> tuple[str, ...]:
    return tuple(m for m in schema.METRICS if m not in UNGATED_METRICS)


def baseline_columns() -> tuple[str, ...]:
    """The columns of a baseline CSV, in order (read from the schema at call time, so they follow it)."""
    return (*schema.KEY_COLUMNS, "status", *gated_metrics())


def validate_tolerances(rtol: float, atol: float) -> None:
    """Raise ValueError unless both tolerances are finite numbers >= 0."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        try:
            ok = not isinstance(value, bool) and math.isfinite(value) and value >= 0
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"--{name} must be a finite number >= 0, got {value!r}")


def write_baseline(results_dir: str | Path, out: str | Path) -> int:
    """Write the cells of a results folder (key, status, gated metrics) as a CSV baseline."""
    from .atomic import atomic_write
    from .preflight import check_output_file

    df = read_results(results_dir)
    check_output_file(out, "baseline --out")
    df = df[list(baseline_columns())].sort_values(list(schema.KEY_COLUMNS), na_position="first")
    text = df.to_csv(index=False, float_format="%.10g")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: tmp.write_text(text))  # the old baseline or the whole new one, never a part
    return len(df)


INT_RANGES = {"nfe": (1, 2**63 - 1), "seed": (0, 2**63 - 1), "n_samples": (1, 2**63 - 1)}  # as `run` allows them
INT64_RANGE = (-(2**63), 2**63 - 1)


def _exact_int(text: str):
    """The integer a CSV cell spells ("3", "3.0"), exactly; None if it spells no integer."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        return None
    return int(x) if math.isfinite(x) and x.is_integer() and abs(x) < 2**53 else None


def _parse_column(values: pd.Series, dtype: str) -> tuple[pd.Series, str | None]:
    """(values as ``dtype``, None) or (None, what is wrong with them); ``values`` are the CSV's strings.

    Only an empty cell is a missing value: a spelled "nan" or "inf" is refused (a NaN baseline metric would turn
    the gate off for it), and integers must lie in their column's range (``INT_RANGES``), never wrapped.
    """
    present = values.notna()
    if dtype == "float64":
        number = pd.to_numeric(values, errors="coerce")
        spelled = present & number.isna() & values.str.strip().str.lower().isin(["nan", "<na>", "-nan", "+nan"])
        bad = present & number.isna() & ~spelled
        if bad.any():
            return None, f"values that are not numbers: {_quote(values, bad)}"
        bad = spelled | (number.notna() & ~number.map(math.isfinite, na_action="ignore").astype(bool))
        if bad.any():
            return None, f"non-finite values {_quote(values, bad)}; a metric is a finite number or empty"
        return number.astype("float64"), None
    if dtype in ("Int64", "int64"):
        number = pd.to_numeric(values, errors="coerce")
        bad = present & number.isna()
        if bad.any():
            return None, f"values that are not numbers: {_quote(values, bad)}"
        ints = [None if pd.isna(v) else _exact_int(v) for v in values]
        bad = present & pd.Series([v is None for v in ints], index=values.index)
        if bad.any():
            return None, f"values that are not integers: {_quote(values, bad)}"
        lo, hi = INT_RANGES.get(values.name, INT64_RANGE)
        bad = pd.Series([v is not None and not lo <= v <= hi for v in ints], index=values.index)
        if bad.any():
            return None, f"values out of range {_quote(values, bad)}; allowed: {lo}..{hi}"
        if dtype == "int64" and (~present).any():
            return None, f"empty values (line {_line(~present)}); every cell has one"
        return pd.Series(pd.array(ints, dtype="Int64"), index=values.index).astype(dtype), None
    if dtype == "string":
        if values.name in JSON_COLUMNS:
            bad = present & ~values.map(_is_json_object, na_action="ignore").fillna(True).astype(bool)
            if bad.any():
                return None, f"values that are not JSON objects: {_quote(values, bad)}"
        return values.astype("string"), None
    try:
        return values.astype(dtype), None
    except (TypeError, ValueError):
        return None, f"values that are not of type {dtype}"


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _line(mask: pd.Series) -> int:
    return int(mask.to_numpy().nonzero()[0][0]) + 2  # the header is line 1


def _quote(values: pd.Series, mask: pd.Series) -> str:
    bad = list(dict.fromkeys(values[mask].tolist()))
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return f"{bad[:SHOWN]}{more} (first on line {_line(mask)})"


def read_baseline(path: str | Path) -> pd.DataFrame:
    """A baseline CSV with the schema's dtypes; every way it can be unusable is a one-line ValueError."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"baseline {path} does not exist; write one with `python -m bench baseline --out {path}`")
    if p.is_dir():
        raise ValueError(f"baseline {path} is a folder, not a CSV file written by "
                         "`python -m bench baseline --out FILE`")
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ValueError(f"baseline {path} is an empty file: it has no cells, so it would pass anything") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"baseline {path} is not a CSV file: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start})") from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"baseline {path} is not a CSV file ({str(exc).strip().splitlines()[0]})") from None
    expected = baseline_columns()
    missing = [c for c in expected if c not in raw.columns]
    unknown = [str(c) for c in raw.columns if c not in expected]
    if len(missing) == len(expected):
        raise ValueError(f"baseline {path} is not a baseline CSV: its header {unknown[:SHOWN]} has none of the "
                         f"columns {list(expected)}")
    if missing:
        keys = [c for c in missing if c in schema.KEY_COLUMNS]
        hint = (f" (key columns added after it was written? rewrite it with "
                f"`python -m bench baseline --results DIR --out {path}`)" if keys else "")
        raise ValueError(f"baseline {path} lacks columns {missing}{hint}; required: {list(expected)}")
    if unknown:
        raise ValueError(f"baseline {path} has unknown columns {unknown}; allowed: {list(expected)}")
    if raw.empty:
        raise ValueError(f"baseline {path} has no cells: it would pass anything")
    df = raw[list(expected)].copy()
    for col in expected:
        df[col], problem = _parse_column(raw[col], schema.COLUMNS[col])
        if problem:
            raise ValueError(f"baseline {path}: column {col} has {problem}")
    status = df["status"].fillna("<empty>")
    unknown_status = sorted(set(status) - set(schema.STATUSES))
    if unknown_status:
        raise ValueError(f"baseline {path} has unknown status values {unknown_status} "
                         f"(first on line {_line(~status.isin(schema.STATUSES))}); allowed: {list(schema.STATUSES)}")
    dup = df.duplicated(list(schema.KEY_COLUMNS), keep=False)
    if dup.any():
        raise ValueError(f"baseline {path} has {int(dup.sum())} rows that share a key, e.g. "
                         f"{_cell_name(df[dup].iloc[0])} on line {_line(dup)}; each key "
                         f"({', '.join(schema.KEY_COLUMNS)}) may appear once")
    return df


def _key(row) -> tuple:
    return tuple(None if pd.isna(row[c]) else row[c] for c in schema.KEY_COLUMNS)


def _cell_name(row) -> str:
    extra = "".join(f" {c}={row[c]}" for c in schema.KEY_COLUMNS
                    if c not in (*NAMED_KEYS, "sampler_config", "n_samples") and not pd.isna(row[c]))
    return f"{row['checkpoint']} {row['sampler']} nfe={row['nfe']} seed={row['seed']}{extra}"


def check_against_baseline(baseline: str | Path, results_dir: str | Path, rtol: float = DEFAULT_RTOL,
                           atol: float = DEFAULT_ATOL) -> tuple[bool, list[str]]:
    """(passed, report lines) for the results in ``results_dir`` against ``baseline``."""
    validate_tolerances(rtol, atol)
    base = read_baseline(baseline)
    current = {_key(r): r for _, r in read_results(results_dir).iterrows()}
    failures, notes, failed_cells = [], [], set()
    for _, b in base.iterrows():
        key = _key(b)
        name = _cell_name(b)
        if key not in current:
            failed_cells.add(key)
            failures.append(f"MISSING {name}: in the baseline, not in the results")
            continue
        c = current[key]
        if b["status"] == "ok" and c["status"] != "ok":
            failed_cells.add(key)
            failures.append(f"STATUS  {name}: ok -> {c['status']} ({c['error']})")
            continue
        if b["status"] != "ok":
            if c["status"] == "ok":
                notes.append(f"better  {name}: {b['status']} -> ok")
            continue
        for metric in gated_metrics():
            bv, cv = b[metric], c[metric]
            if pd.isna(bv):
                continue
            margin = atol + rtol * abs(bv)
            lower_better = schema.METRICS[metric]
            worse = (pd.isna(cv) or not math.isfinite(cv)
                     or (cv > bv + margin if lower_better else cv < bv - margin))
            if worse:
                failed_cells.add(key)
                failures.append(f"WORSE   {name}: {metric} {bv:.6g} -> {cv:.6g} (tolerance {margin:.3g})")
    verdict = (f"FAIL: {len(failed_cells)} of {len(base)} baseline cells got worse or are missing"
               if failures else f"PASS: {len(base)} baseline cells, none worse (rtol={rtol}, atol={atol})")
    return not failures, [*failures, *notes, verdict]
