"""Sweeps as files: ``bench run --config FILE.toml`` sets the run's sweep options from a TOML file (stdlib tomllib),
so a paper table is one reproducible command. A key is a ``run`` option's name with underscores (``nfe``,
``checkpoint``, ``sampler``, ``seeds``, ``n_samples``, ...) and takes what the flag takes: a list where the flag
takes several values (a single value is read as a one-element list), a number, a string, true/false for a switch.
A sampler is a spec string as on the command line (``"ddim,eta=0.5"``) or a table ``{name = "ddim", eta = 0.5}``.
Where to write and how to compute (``--results``, ``--threads``, ``--device``, ``--shard``, ``--compile``,
``--quiet``) stay on the command line. The same options give the same cells as the flags (the same pre-flight
builds them). Checks are ``bench.preflight.apply_run_config``'s; every refusal is one ValueError line.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

RUNTIME = ("results", "threads", "device", "shard", "compile", "quiet", "verbose", "config", "help")
DESCRIPTION_KEY = "description"  # free text about the table the config makes; not an option
MAX_CONFIG_BYTES = 1_000_000
CONFIGS_DIR = "configs"  # <results>/configs/<sha256[:16]>.toml: the configs a results folder was run with


def read_toml(path) -> dict:
    """The TOML file at ``path`` as a dict; a missing, unreadable, huge or malformed file is a ValueError."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("--config needs Python >= 3.11 (tomllib) or the tomli package") from None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file (a TOML file such as reports/digits/config.toml)")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a sweep config")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: not valid TOML ({exc})") from None


def config_actions(run_parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The run options a config may set: dest -> argparse action (every option but the runtime ones)."""
    return {a.dest: a for a in run_parser._actions if a.option_strings and a.dest not in RUNTIME}


def given_options(run_parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options given on the command line ``argv`` (``run`` and its arguments)."""
    import copy

    parser = copy.deepcopy(run_parser)
    for a in parser._actions:
        a.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(argv)
    return set(vars(ns))


def _value(key: str, value, action: argparse.Action, where: str):
    """``value`` as the flag would hold it, or a ValueError naming what the key takes."""
    flag = action.option_strings[0]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} = {value!r} must be true or false (as {flag})")
        return value
    many = action.nargs in ("+", "*")
    items = value if isinstance(value, list) else [value]
    if not many and isinstance(value, list):
        raise ValueError(f"{where}: {key} takes one value (as {flag}), got a list")
    if many and not items:
        raise ValueError(f"{where}: {key} = [] needs at least one value (as {flag})")
    out = []
    for v in items:
        if key == "sampler":
            v = _sampler_spec(v, where)
        elif action.type in (int, float):
            ok = isinstance(v, int) and not isinstance(v, bool) or (action.type is float and isinstance(v, float))
            if not ok:
                raise ValueError(f"{where}: {key} = {v!r} must be {'an integer' if action.type is int else 'a number'}"
                                 f"{' or a list of them' if many else ''} (as {flag})")
            v = action.type(v)
        elif not isinstance(v, str):
            raise ValueError(f"{where}: {key} = {v!r} must be a string{' or a list of them' if many else ''} "
                             f"(as {flag})")
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{where}: {key} = {v!r}; allowed: {list(action.choices)}")
        out.append(v)
    return out if many else out[0]


def _sampler_spec(v, where: str) -> str:
    """A sampler entry as run's spec string: a string as it is, a table {name = ..., option = value, ...} joined."""
    if isinstance(v, str):
        return v
    if not isinstance(v, dict) or not isinstance(v.get("name"), str):
        raise ValueError(f"{where}: sampler entry {v!r} must be a spec string (\"ddim,eta=0.5\") or a table with a "
                         f"name ({{name = \"ddim\", eta = 0.5}})")
    parts = [v["name"]]
    for k, x in v.items():
        if k == "name":
            continue
        if isinstance(x, (dict, list)) or (isinstance(x, str) and ("," in x or "=" in x)):
            raise ValueError(f"{where}: sampler {v['name']!r} option {k} = {x!r}: a value must be a number, true/false "
                             f"or a string without ',' and '='")
        parts.append(f"{k}={x!r}")
    return ",".join(parts)


def apply_config(args: argparse.Namespace, config: dict, run_parser: argparse.ArgumentParser, given: set[str],
                 where: str) -> argparse.Namespace:
    """``args`` with the config's options set; ValueError for an unknown key (naming the allowed ones), a value the
    flag would not take, or an option given both on the command line and in the config."""
    actions = config_actions(run_parser)
    allowed = sorted(actions) + [DESCRIPTION_KEY]
    for key, value in config.items():
        if key == DESCRIPTION_KEY:
            if not isinstance(value, str):
                raise ValueError(f"{where}: {DESCRIPTION_KEY} must be a string")
            continue
        if key not in actions:
            hint = " (set it on the command line)" if key in RUNTIME else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}; allowed: {allowed}")
        if key in given:
            raise ValueError(f"{where}: {actions[key].option_strings[0]} is given on the command line and as {key!r} "
                             f"in the config; give it in one place")
        setattr(args, key, _value(key, value, actions[key], where))
    return args


def config_copy_name(text: str) -> str:
    """The file name of a config's copy in a results folder: its content hash."""
    return hashlib.sha256(text.encode()).hexdigest()[:16] + ".toml"


def save_config_copy(results_dir, path) -> Path:
    """Keep the config a run used in ``<results>/configs/`` (named by content hash, first line: the path it was
    given as), so ``bench report`` can name it; returns the copy's path."""
    from .atomic import atomic_write

    text = Path(path).read_text(encoding="utf-8")
    dest = Path(results_dir) / CONFIGS_DIR / config_copy_name(text)
    if dest.parent.exists() and not dest.parent.is_dir() or dest.exists() and not dest.is_file():
        raise ValueError(f"{dest.parent if not dest.parent.is_dir() else dest} should be a "
                         f"{'folder' if not dest.parent.is_dir() else 'file'} of the results store (the configs a "
                         f"results folder was run with); move it out of {results_dir}")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, lambda tmp: tmp.write_text(f"# bench run --config {path}\n" + text, encoding="utf-8"))
    return dest


def saved_configs(results_dir) -> list[tuple[str, str]]:
    """(the path a config was given as, its copy's name) for each config a results folder was run with."""
    folder = Path(results_dir) / CONFIGS_DIR
    out = []
    for p in sorted(q for q in folder.glob("*.toml") if q.is_file()) if folder.is_dir() else []:
        first = p.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
        out.append((first.removeprefix("# bench run --config ").strip(), p.name))
    return out
