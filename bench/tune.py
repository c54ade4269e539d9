"""``bench tune``: the configuration of a solver family with the least solver error at an NFE budget, confirmed on
held-out seeds, written as a preset the sampler registry resolves (``--sampler tuned:<name>``).

A client of the runner (DESIGN.md): every trial is a cell in the results folder's store, so a search resumes after a
kill without repeating finished trials, and processes sharing the folder split its cells. Per family and NFE:

1. screen: the family's discrete options (``SPACES``, across ``FAMILY_BASES``) x the fixed grids, on the tuning seed;
2. fit: for the best ``top`` configurations that spend one NFE per step, schedules fitted by dynamic programming
   over a fine candidate grid (GITS, Chen et al. 2024): C[i, j] = mean_s ||Phi(x_ref(t_i), t_i -> t_j) - x_ref(t_j)||
   / sqrt(d), V_k(j) = min_i C[i, j] + gamma V_{k-1}(i), exactly K steps. Two costs (``FITS``): Phi the family's
   first-order exponential-integrator step (GITS's Euler cost in the family's prediction type), and the
   second-order multistep step with its history at the node before (a DP over node pairs). The DP cannot know the
   solver's full history or corrector, so each schedule (cost x gamma in ``GAMMAS``) is a trial of the real solver
   on the tuning seed: the cost and gamma are chosen by the global error like any other option;
3. validate: the winner (least tuning error), the default, the best fixed-grid trial and the best fitted schedule
   next to its own options on every fixed grid, on held-out seeds the search never saw; paired differences per
   seed with a t interval, flagged when it includes 0.

Selection is on solver error against the reference ODE solution only (the exact oracle on the mixtures); FID, where
the checkpoint has it, is read from the same held-out cells and reported, never selected on. ``--budget`` is cells per
family and NFE or a time for the whole search (``30m``): either way a prefix of one seeded screen order, so a time
budget's search reruns exactly as the cell budget its preset records. ``--transfer`` runs presets tuned on one
checkpoint, and their defaults, on another (``run_transfer``), on the same held-out seeds.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import samplers
from samplers import grids, initial_noise

GAMMAS = (0.9, 1.0, 1.1, 1.15, 1.2)  # GITS's discount coefficients (its default 1.15; ComfyUI exposes 0.8-1.5)
FITS = ("local1", "local2")  # the DP's one-step cost: first-order step, or second-order multistep with its history
FIXED_GRIDS = ("time_uniform", "time_quadratic", "logSNR", "karras", "kl_optimal")  # the published fixed grids
DEFAULT_SAMPLERS = ("unipc_bh1_3", "dpm_solver++_3m")
DEFAULT_BUDGET = 200     # trial cells per family and NFE (screen + fitted schedules), validation not counted
SCREEN_CHUNK = 8         # a time budget (--budget 30m) checks the clock after each chunk of screen trials
DEFAULT_CANDIDATES = 80  # points of the fine candidate grid (GITS 61, OSS 100-1000)
DEFAULT_TOP = 3          # configurations that get a fitted schedule
PRESET_FORMAT = "samplerbench-tuned-preset/1"
ENDING = "denoise_to_zero"  # the registry's final denoising step: kept as given (see the README's tune section)
TUNED_PREFIX = "tuned:"
PRESETS_DIR = "presets"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}  # Student t 97.5 %, by dof
# (a dof between two keys takes the smaller key's larger value: the interval is never too narrow)
WAIT_POLL_S = 2.0        # a trial taken by another process: look again after this long

# The discrete options searched per family (the grid is searched for every family that has one); options not
# listed keep the value of the sampler as given (UniPC's variant, DPM-Solver's method, t_end: see ``search_space``).
SPACES = {
    "unipc": {"order": (1, 2, 3), "predict": ("x0", "eps"), "corrector": (True, False),
              "lower_order_final": (True, False)},
    "dpm_solver++": {"order": (1, 2, 3), "solver_type": ("dpmsolver", "taylor"), "lower_order_final": (True, False)},
    "dpm_solver": {"order": (1, 2, 3), "solver_type": ("dpmsolver", "taylor"), "lower_order_final": (True, False)},
}
# The prediction / algorithm type of a family that registers it as separate samplers: DPM-Solver (noise) and ++ (data).
FAMILY_BASES = {"dpm_solver++": ("dpm_solver++", "dpm_solver"), "dpm_solver": ("dpm_solver", "dpm_solver++")}


# -- the fitted schedule -----------------------------------------------------------------------------------------
def base_of(sampler) -> str:
    return sampler.spec.base or sampler.name


def fit_prediction(base: str, options: dict) -> str | None:
    """The prediction type of the one-step map Phi, or None where the family does not spend one NFE per grid step."""
    if base == "unipc":
        return options["predict"]
    if base in ("dpm_solver++", "dpm_solver") and options.get("method") == "multistep":
        return "x0" if base == "dpm_solver++" else "eps"
    return None


def candidate_times(schedule, t_end: float | None, n: int) -> torch.Tensor:
    """About ``n`` decreasing times from T to t_end: the union of a Karras rho = 7 and a logSNR grid (float64)."""
    half = max(n // 2, 1)
    ts = torch.cat([grids.time_grid(schedule, "karras", half, t_end), grids.time_grid(schedule, "logSNR", n - half,
                                                                                        t_end)])
    ts = torch.sort(ts, descending=True).values
    keep = [0] + [i for i in range(1, len(ts)) if ts[i - 1] - ts[i] > 1e-12 * ts[i - 1]]
    return ts[keep]


def reference_trajectory(ck, x_T: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """x_ref at every time (len(times), *x_T.shape), float64, chained segment by segment: the checkpoint's reference
    solution where it takes ``t_start`` (the mixtures' oracle), else the PF-ODE by adaptive dopri5 at
    ``pretrained.reference``'s tolerance (a checkpoint's own reference, e.g. digits' 1000-NFE Heun, starts at T only:
    solving it to each of the candidate times would cost candidates x its NFE)."""
    from pretrained.reference import reference_ode_solution

    chained = "t_start" in inspect.signature(ck.reference_solution).parameters
    out, x = [x_T.to(torch.float64)], x_T.to(torch.float64)
    for s, t in zip(times[:-1].tolist(), times[1:].tolist()):
        x = (ck.reference_solution(x, t, t_start=s) if chained
             else reference_ode_solution(ck.model, x, t, t_start=s)).to(torch.float64)
        out.append(x)
    return torch.stack(out)


def cost_matrix(model, traj: torch.Tensor, times: torch.Tensor, predict: str) -> torch.Tensor:
    """C[i, j] (i < j; inf elsewhere): mean over samples of the RMS error of one first-order exponential-integrator
    step from x_ref(t_i) to t_j against x_ref(t_j); float64 on the CPU."""
    sch, n = model.schedule, len(times)
    lam, alpha, sigma = sch.lambda_(times), sch.alpha(times), sch.sigma(times)
    d = traj[0, 0].numel()
    C = torch.full((n, n), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n - 1):
            x, t = traj[i], times[i].to(traj.device)
            m = (model.x0(x, t) if predict == "x0" else model.eps(x, t)).to(torch.float64).cpu()
            j = torch.arange(i + 1, n)
            h = (lam[j] - lam[i]).reshape(-1, *([1] * traj[0].dim()))
            if predict == "x0":  # x_t = sigma_t / sigma_s x_s - alpha_t (e^{-h} - 1) x0_s
                ratio = (sigma[j] / sigma[i]).reshape(h.shape)
                step = ratio * x.cpu() - alpha[j].reshape(h.shape) * torch.expm1(-h) * m
            else:  # x_t = alpha_t / alpha_s x_s - sigma_t (e^h - 1) eps_s
                ratio = (alpha[j] / alpha[i]).reshape(h.shape)
                step = ratio * x.cpu() - sigma[j].reshape(h.shape) * torch.expm1(h) * m
            err = (step - traj[j].cpu()).reshape(len(j), traj.shape[1], -1)
            C[i, j] = err.square().sum(-1).sqrt().mean(-1) / math.sqrt(d)
    return C


def cost_tensor2(model, traj: torch.Tensor, times: torch.Tensor, predict: str) -> torch.Tensor:
    """C2[h, i, j] (h < i < j; inf elsewhere): as ``cost_matrix`` for the second-order multistep step from x_ref(t_i) to
    t_j with the history at t_h (DPM-Solver-2M's update, Lu et al. 2022b, in the family's prediction type):
    x_j = R x_i - c phi_1 (m_i + (m_i - m_h) / (2 r)), r = (lambda_i - lambda_h) / (lambda_j - lambda_i)."""
    sch, n = model.schedule, len(times)
    lam, alpha, sigma = sch.lambda_(times), sch.alpha(times), sch.sigma(times)
    d = traj[0, 0].numel()
    with torch.no_grad():
        ms = torch.stack([(model.x0(traj[i], times[i].to(traj.device)) if predict == "x0"
                           else model.eps(traj[i], times[i].to(traj.device))).to(torch.float64).cpu()
                          for i in range(n - 1)])
    xs = traj.cpu().reshape(n, traj.shape[1], -1)
    ms = ms.reshape(n - 1, traj.shape[1], -1)
    C2 = torch.full((n, n, n), math.inf, dtype=torch.float64)
    for i in range(1, n - 1):
        j = torch.arange(i + 1, n)
        h = lam[j] - lam[i]
        if predict == "x0":
            ratio, c, phi = sigma[j] / sigma[i], alpha[j], torch.expm1(-h)
        else:
            ratio, c, phi = alpha[j] / alpha[i], sigma[j], torch.expm1(h)
        base = ratio[:, None, None] * xs[i] - (c * phi)[:, None, None] * ms[i]  # (nj, B, d)
        k = -(c * phi * h)[None, :] / (2.0 * (lam[i] - lam[:i]))[:, None]  # (nh, nj): weight of m_i - m_h
        step = base[None] + k[:, :, None, None] * (ms[i] - ms[:i])[:, None]
        C2[:i, i, i + 1:] = (step - xs[j][None]).square().sum(-1).sqrt().mean(-1) / math.sqrt(d)
    return C2


def schedule_objective(model, traj: torch.Tensor, times: torch.Tensor, predict: str, fit: str, gamma: float) -> float:
    """The DP's value of one schedule (``times``, its nodes in order, with x_ref at each): sum_k gamma^(K-k) c_k, the
    cost of ``fit_schedule`` (local1) or ``fit_schedule2`` (local2) for the path through every node."""
    C = cost_matrix(model, traj, times, predict)
    C2 = cost_tensor2(model, traj, times, predict) if fit == "local2" else None
    v = float(C[0, 1])
    for k in range(1, len(times) - 1):
        v = (float(C[k, k + 1]) if C2 is None else float(C2[k - 1, k, k + 1])) + gamma * v
    return v


def fit_schedule2(C: torch.Tensor, C2: torch.Tensor, steps: int, gamma: float) -> list[int]:
    """As ``fit_schedule`` with a second-order cost: the first step costs C[0, j], each later one C2[h, i, j] given
    the node before (a DP over pairs of nodes, O(K N^3)); ties to the lowest index."""
    n = C.shape[0]
    if not 1 <= steps <= n - 1:
        raise ValueError(f"cannot fit {steps} steps on a candidate grid of {n} points; allowed: 1..{n - 1}")
    r = torch.arange(n)
    up = r[:, None] < r[None]
    C, C2 = C.masked_fill(~up, math.inf), C2.masked_fill(~(up[:, :, None] & up[None]), math.inf)  # forward only
    V = torch.full((n, n), math.inf, dtype=torch.float64)
    V[0] = C[0]  # V[i, j]: best cost of a path whose last two nodes are i, j
    back = []
    for _ in range(steps - 1):
        M = C2 + gamma * V[:, :, None]  # M[h, i, j]: arrive at j from i, having come from h
        back.append(torch.argmin(M, dim=0))
        V = M.gather(0, back[-1][None]).squeeze(0)
    i, j = int(torch.argmin(V[:, n - 1])), n - 1
    path = [j, i]
    for arg in reversed(back):
        i, j = int(arg[i, j]), i
        path.append(i)
    return path[::-1]


def fit_schedule(C: torch.Tensor, steps: int, gamma: float) -> list[int]:
    """Indices 0 = i_0 < .. < i_K = N - 1 minimising V_K(N - 1), V_k(j) = min_i C[i, j] + gamma V_{k-1}(i) (GITS DP);
    ties go to the lowest index (``argmin``'s first minimum), so the result is deterministic."""
    n = C.shape[0]
    if not 1 <= steps <= n - 1:
        raise ValueError(f"cannot fit {steps} steps on a candidate grid of {n} points; allowed: 1..{n - 1}")
    r = torch.arange(n)
    C = C.masked_fill(~(r[:, None] < r[None]), math.inf)  # forward steps only
    V = torch.full((n,), math.inf, dtype=torch.float64)
    V[0] = 0.0
    back = []
    for _ in range(steps):
        M = C + gamma * V[:, None]  # M[i, j]: arrive at j from i
        back.append(torch.argmin(M, dim=0))
        V = M.gather(0, back[-1][None]).squeeze(0)
    path = [n - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


# -- presets -----------------------------------------------------------------------------------------------------
def preset_path(folder, name: str) -> Path:
    return Path(folder) / PRESETS_DIR / f"{name}.json"


def write_preset(folder, record: dict) -> Path:
    from .atomic import atomic_write

    path = preset_path(folder, record["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_preset(path) -> dict:
    """A preset file, validated (JSON only, never unpickled); registers its times and ``tuned:<name>``. ValueError
    naming the file and the problem otherwise."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        rec = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"tuned preset {path} does not exist; `bench tune` writes presets to RESULTS/{PRESETS_DIR}/")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"tuned preset {path} is not a JSON file ({type(exc).__name__}: {exc})") from None
    need = {"format": str, "name": str, "base": str, "options": dict, "nfe": int, "checkpoint": str,
            "fingerprint": str, "search": dict}
    if not isinstance(rec, dict):
        raise ValueError(f"tuned preset {path}: expected a JSON object, got {type(rec).__name__}")
    for key, kind in need.items():
        if not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
            raise ValueError(f"tuned preset {path}: field {key!r} must be a {kind.__name__}, got {rec.get(key)!r}")
    if rec["format"] != PRESET_FORMAT:
        raise ValueError(f"tuned preset {path}: format {rec['format']!r}; allowed: {PRESET_FORMAT!r}")
    if not NAME_RE.match(rec["name"]):
        raise ValueError(f"tuned preset {path}: name {rec['name']!r} must match {NAME_RE.pattern}")
    times = rec.get("times")
    options = dict(rec["options"])
    if times is not None:
        if (not isinstance(times, list) or len(times) != rec["nfe"] + 1
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)):
            raise ValueError(f"tuned preset {path}: 'times' must be a list of nfe + 1 = {rec['nfe'] + 1} numbers")
        name = grids.register_times(times)  # ValueError unless positive, finite, decreasing
        if options.get("grid") != name:
            raise ValueError(f"tuned preset {path}: option grid={options.get('grid')!r} does not name its times "
                             f"(they hash to {name!r})")
    elif isinstance(options.get("grid"), str) and options["grid"].startswith(grids.TIMES_PREFIX):
        raise ValueError(f"tuned preset {path}: grid {options['grid']!r} needs its 'times'")
    try:
        samplers.get(rec["base"], **options)  # unknown base, options, values: the registry's message
        register_tuned(rec)
    except ValueError as exc:
        raise ValueError(f"tuned preset {path}: {exc}") from None
    return rec


def register_tuned(rec: dict) -> str:
    """Register ``tuned:<name>`` as the record's base with every option fixed; the same record twice is a no-op."""
    name = TUNED_PREFIX + rec["name"]
    if name in samplers.available():
        spec = samplers.describe(name)
        if spec.base == rec["base"] and dict(spec.fixed) == dict(samplers.get(rec["base"], **rec["options"]).options):
            return name
        raise ValueError(f"sampler {name!r} is already registered with other options")
    full = dict(samplers.get(rec["base"], **rec["options"]).options)
    from samplers.registry import register_preset
    register_preset(name, rec["base"], in_default_sweep=False,
                    description=f"tuned by `bench tune` on {rec['checkpoint']} for NFE {rec['nfe']}", **full)
    return name


def resolve_tuned_specs(specs, results) -> list | None:
    """``run``'s --sampler specs with every ``tuned:NAME`` read from RESULTS/presets/NAME.json (or ``tuned:PATH.json``)
    and registered; a path becomes ``tuned:<its name>``. Bad files: ValueError (one line, exit 2)."""
    if not specs:
        return specs
    out = []
    for spec in specs:
        name, sep, rest = spec.partition(",")
        if not name.startswith(TUNED_PREFIX):
            out.append(spec)
            continue
        ref = name[len(TUNED_PREFIX):]
        if ref.endswith(".json"):
            rec = read_preset(ref)
            out.append(TUNED_PREFIX + rec["name"] + sep + rest)
            continue
        folder = Path(results) / PRESETS_DIR
        if any(c in ref for c in "*?["):
            for path in sorted(folder.glob(f"{ref}.json")):
                read_preset(path)
        else:
            read_preset(folder / f"{ref}.json")
        out.append(spec)
    return out


# -- the search --------------------------------------------------------------------------------------------------
@dataclass
class TuneSettings:
    """What a search is: everything here is recorded with its presets."""

    checkpoint: str
    nfes: list
    specs: list
    budget: int | None = DEFAULT_BUDGET  # trial cells per family and NFE, or None with budget_s
    budget_s: float | None = None        # a time budget for the whole search (--budget 30m), split evenly per family
    seed: int = 0
    tune_samples: int = 64
    val_seeds: int = 8
    val_samples: int = 32
    candidates: int = DEFAULT_CANDIDATES
    top: int = DEFAULT_TOP
    gammas: tuple = GAMMAS
    results: str = "results/tune"
    batch_size: int = 1000
    quiet: bool = True
    device: object = None
    state_dtype: str = "float64"

    def seeds(self) -> tuple[int, list[int]]:
        """(tuning seed, held-out seeds): distinct, drawn from ``seed`` alone."""
        drawn = random.Random(self.seed).sample(range(1_000, 2**31), 1 + self.val_seeds)
        return drawn[0], sorted(drawn[1:])


def search_space(sampler, nfe: int) -> list[tuple[str, dict]]:
    """Every (base, options) the screen tries: the family's bases (``FAMILY_BASES``: the prediction type) x its
    ``SPACES`` x ``FIXED_GRIDS``, other options as given, in a fixed order; combinations that compute the same thing as
    an earlier one are left out (``_redundant``)."""
    base, given = base_of(sampler), dict(sampler.options)
    out = []
    for b in FAMILY_BASES.get(base, (base,)):
        start = given
        if b != base:  # the other prediction type: only where every option it lacks is at its default
            has, own = samplers.describe(b).defaults, samplers.describe(base).defaults
            if any(v != own[k] for k, v in given.items() if k not in has):
                continue
            start = {k: v for k, v in given.items() if k in has}
        space = {k: v for k, v in SPACES.get(b, {}).items() if k in start}
        if "grid" in start:
            space["grid"] = FIXED_GRIDS
        keys = list(space)
        for values in itertools.product(*(space[k] for k in keys)):
            opts = {**start, **dict(zip(keys, values))}
            if not _redundant(b, opts, nfe):
                out.append((b, opts))
    return out


def _redundant(base: str, o: dict, nfe: int) -> bool:
    from samplers.dpm_solver import LOWER_ORDER_FINAL_MAX_STEPS

    if base in ("dpm_solver++", "dpm_solver") and o.get("method") == "multistep":
        if o["order"] != 2 and o["solver_type"] != "dpmsolver":
            return True  # orders 1 and 3 have one update for both solver types
        if (o["order"] == 1 or nfe >= LOWER_ORDER_FINAL_MAX_STEPS) and not o["lower_order_final"]:
            return True  # lower_order_final acts only on order > 1 and short runs
    if base == "unipc" and o["order"] == 1 and not o["lower_order_final"]:
        return True
    return False


def _key(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


class Search:
    """One ``bench tune`` run: trials as cells of the results folder at ``settings.results``."""

    def __init__(self, settings: TuneSettings, checkpoint, methods: list):
        from .runner import RunOptions

        self.s, self.ck, self.methods = settings, checkpoint, methods
        self.tune_seed, self.val_seeds = settings.seeds()
        self.opts = RunOptions(device=settings.device or torch.device("cpu"), batch_size=settings.batch_size)
        self.cells_run = 0
        self.start = time.perf_counter()

    # cells ------------------------------------------------------------------
    def _cells(self, sampler_objs, nfe, seeds, n):
        from .grid import make_cells
        return make_cells([self.s.checkpoint], sampler_objs, [nfe], seeds, n, state_dtype=self.s.state_dtype)

    def _errors(self, cells) -> dict:
        """Run the cells not yet stored (waiting for any another process holds), then {cell_id: solver error}."""
        return {k: err for k, (err, _) in self._metrics(cells).items()}

    def _metrics(self, cells) -> dict:
        """As ``_errors``: {cell_id: (solver error, FID)}; inf for a failed cell, NaN FID where the cell has none."""
        from .runner import run_sweep
        from .store import ResultsStore

        cells = list({c.cell_id: c for c in cells}.values())  # equal options: one cell
        while True:  # cells another live process holds: look again (a dead one's claims are taken over)
            counts = run_sweep(cells, self.s.results, options=self.opts, progress=not self.s.quiet)
            self.cells_run += sum(v for k, v in counts.items() if k not in ("skipped", "taken"))
            if not counts.get("taken"):
                break
            time.sleep(WAIT_POLL_S)
        store = ResultsStore(self.s.results)
        want = {c.cell_id for c in cells}
        df = store.read()
        df = df[df["cell_id"].isin(want)]
        out = {}
        for _, row in df.iterrows():
            v, f = row.get("solver_error_mean"), row.get("fid")
            ok = row["status"] == "ok" and v is not None and math.isfinite(float(v))
            fid = float(f) if row["status"] == "ok" and f is not None and not _missing(f) else math.nan
            out[row["cell_id"]] = (float(v) if ok else math.inf, fid if ok else math.inf)
        return out

    # stages -----------------------------------------------------------------
    def tune(self, sampler, nfe: int) -> dict:
        """Screen, fit, validate one family at one NFE; returns its summary (and writes its preset)."""
        from .preflight import one_line

        s, base = self.s, base_of(sampler)
        space = search_space(sampler, nfe)
        pred_types = sorted({p for b, o in space if (p := fit_prediction(b, o)) is not None})
        n_fit = min(s.top, len(space)) * len(s.gammas) * len(FITS) if pred_types else 0
        room = math.inf if s.budget is None else s.budget - n_fit
        if room < 1:
            raise ValueError(f"--budget {s.budget} leaves no screen trials for {sampler.name} after its {n_fit} "
                             f"fitted schedules; allowed: >= {n_fit + 1}")
        default = (base, dict(sampler.options))
        # the screen's order: the sampler as given, then the rest in an order drawn from the search seed; a cell budget
        # takes its first `room` trials, a time budget as many as its share of the clock allows (both: a prefix)
        full = space
        rest = [bo for bo in space if bo != default]
        random.Random(f"{s.seed}|{sampler.name}|{nfe}").shuffle(rest)
        space = ([default] if default in space else []) + rest
        if s.budget_s is None:
            space = space[:room]
            errs = self._errors(self._cells([samplers.get(b, **o) for b, o in space], nfe, [self.tune_seed],
                                            s.tune_samples))
        else:
            share = s.budget_s / (len(self.methods) * len(s.nfes))
            stage_start, cells, errs = time.perf_counter(), [], {}
            for lo in range(0, len(space), SCREEN_CHUNK):
                objs = [samplers.get(b, **o) for b, o in space[lo:lo + SCREEN_CHUNK]]
                before, t0 = self.cells_run, time.perf_counter()
                chunk = self._cells(objs, nfe, [self.tune_seed], s.tune_samples)
                errs.update(self._errors(chunk))
                cells += chunk
                ran = self.cells_run - before
                per_cell = (time.perf_counter() - t0) / ran if ran else 0.0
                if time.perf_counter() - stage_start + per_cell * (n_fit + SCREEN_CHUNK) > share:
                    break  # the next chunk and the fitted schedules would not fit in this family's share
            space = space[:len(cells)]
        space = [bo for bo in full if bo in space]  # the search space's order: ties go the same way for any budget
        cells = self._cells([samplers.get(b, **o) for b, o in space], nfe, [self.tune_seed], s.tune_samples)
        screen = [(errs.get(c.cell_id, math.inf), i) for i, c in enumerate(cells)]
        trials = [(space[i], None, None, e) for e, i in screen]  # ((base, options), times, gamma, tuning error)
        # fitted schedules for the best configurations that spend one NFE per step (one per grid-less config)
        seen, chosen = set(), []
        for e, i in sorted(screen):
            b, o = space[i]
            k = b + _key({**o, "grid": None})
            if fit_prediction(b, o) and math.isfinite(e) and k not in seen and len(chosen) < s.top:
                seen.add(k)
                chosen.append((b, o))
        fitted = []
        for b, o in chosen:
            (C, C2), times = self.cost(o, b, nfe)
            steps = nfe - int(bool(o.get(ENDING)))  # a final denoising step spends the last NFE off the grid
            for fit, g in itertools.product(FITS, s.gammas):
                idx = fit_schedule(C, steps, g) if fit == "local1" else fit_schedule2(C, C2, steps, g)
                ts = [float(times[i]) for i in idx]
                fitted.append(((b, {**o, "grid": grids.register_times(ts), "t_end": ts[-1]}), ts, (fit, g)))
        if fitted:
            objs = [samplers.get(b, **o) for (b, o), _, _ in fitted]
            cells = self._cells(objs, nfe, [self.tune_seed], s.tune_samples)
            errs = self._errors(cells)
            trials += [(bo, ts, g, errs.get(c.cell_id, math.inf)) for (bo, ts, g), c in zip(fitted, cells)]
        best = min(range(len(trials)), key=lambda i: (trials[i][3], i))
        (win_base, win_opts), win_times, win_fit, win_err = trials[best]
        best_fixed = min(range(len(screen)), key=lambda i: (screen[i][0], i))
        # held-out validation: default, winner, the best fixed-grid trial, and the best fitted schedule next to its
        # own options on every fixed grid (the fitted-vs-fixed comparison, whoever won)
        val = {"default": default, "tuned": (win_base, win_opts), "best_screen": space[screen[best_fixed][1]]}
        n_screen = len(screen)
        best_fit = min(range(n_screen, len(trials)), key=lambda i: (trials[i][3], i), default=None)
        (cmp_base, cmp_opts) = trials[best_fit][0] if best_fit is not None else (win_base, win_opts)
        if best_fit is not None:
            val["grid:fitted"] = (cmp_base, cmp_opts)
        for g in FIXED_GRIDS:
            val[f"grid:{g}"] = (cmp_base, {**cmp_opts, "grid": g, "t_end": default[1].get("t_end")})
        keys = list(val)
        objs = [samplers.get(b, **o) for b, o in val.values()]
        per_seed = {}
        cells = self._cells(objs, nfe, self.val_seeds, s.val_samples)
        got = self._metrics(cells)
        for c in cells:
            k = keys[next(i for i, o in enumerate(objs) if o is c.sampler)]
            per_seed.setdefault(k, {})[c.seed] = got.get(c.cell_id, (math.inf, math.inf))
        val_err = {k: [per_seed[k][sd][0] for sd in self.val_seeds] for k in keys}
        val_fid = {k: [per_seed[k][sd][1] for sd in self.val_seeds] for k in keys}
        has_fid = not all(math.isnan(f) for v in val_fid.values() for f in v)
        cmp_fit = trials[best_fit][2] if best_fit is not None else None
        summary = {
            "sampler": sampler.name, "base": base, "nfe": nfe,
            "tune_error": {"default": next((e for bo, _, _, e in trials if bo == default), None), "tuned": win_err},
            "heldout_error": {k: _mean(v) for k, v in val_err.items()},
            "paired": paired(val_err["default"], val_err["tuned"]),
            # the winner against the best fixed-grid trial of the screen: where a fitted schedule won on the tuning
            # seed, an interval with 0 (or below it) on held-out seeds says it overfitted
            "paired_vs_best_fixed": paired(val_err["best_screen"], val_err["tuned"]),
            "tuned_base": win_base, "tuned_options": win_opts, "tuned_times": win_times,
            "fit": win_fit[0] if win_fit else None, "gamma": win_fit[1] if win_fit else None,
            "fitted_compared": {"base": cmp_base, "options": cmp_opts,
                                "fit": trials[best_fit][2][0] if best_fit is not None else None,
                                "gamma": trials[best_fit][2][1] if best_fit is not None else None},
            "trials": len(trials), "screen_trials": len(space), "fitted_trials": len(fitted),
            "heldout_seeds": self.val_seeds, "heldout_per_seed": val_err,
            # FID confirms on the same held-out cells, it never selects (NaN where the checkpoint has no FID)
            "heldout_fid": {k: _mean(v) for k, v in val_fid.items()} if has_fid else None,
            "heldout_fid_per_seed": val_fid if has_fid else None,
            "paired_fid": paired(val_fid["default"], val_fid["tuned"]) if has_fid else None,
            "paired_fid_vs_best_fixed": paired(val_fid["best_screen"], val_fid["tuned"]) if has_fid else None,
            # the DP's own objective (the fitted schedule's cost and gamma) of the fitted schedule and of every fixed
            # grid, on the tuning seed: a fixed grid with a larger objective and a smaller held-out error says the
            # objective, not the optimiser, is what loses
            "dp_objective": (self.objectives(cmp_base, cmp_opts, nfe, trials[best_fit][1], *cmp_fit)
                             if cmp_fit else None),
        }
        name = f"{s.checkpoint}-{sampler.name}-nfe{nfe}".replace(":", "_").replace("*", "_")
        rec = {"format": PRESET_FORMAT, "name": name, "base": win_base, "options": win_opts, "times": win_times,
               "nfe": nfe, "checkpoint": s.checkpoint, "fingerprint": self.ck.fingerprint or "",
               "search": {"budget": s.budget, "budget_s": s.budget_s, "seed": s.seed, "tune_seed": self.tune_seed,
                          "tune_samples": s.tune_samples, "heldout_seeds": self.val_seeds,
                          "heldout_samples": s.val_samples, "trials": len(trials),
                          "fit": win_fit[0] if win_fit else None, "gamma": win_fit[1] if win_fit else None,
                          "candidates": s.candidates, "objective": "solver_error_mean",
                          "started_from": sampler.name, "screen_trials": len(space),
                          "cells_budget_equivalent": len(space) + n_fit},  # --budget N reruns a time budget's search
               "heldout": {"default": summary["heldout_error"]["default"],
                           "tuned": summary["heldout_error"]["tuned"], "paired": summary["paired"]}}
        try:
            summary["preset"] = str(write_preset(s.results, rec))
            read_preset(summary["preset"])  # what run reads: validated and registered here too
        except OSError as exc:
            raise ValueError(f"cannot write preset {name}: {one_line(exc)}") from None
        summary["preset_name"] = TUNED_PREFIX + name
        return summary

    def objectives(self, base: str, options: dict, nfe: int, fitted_times: list, fit: str, gamma: float) -> dict:
        """{"grid:fitted" / "grid:<fixed>": the DP objective of that schedule} for ``options``' prediction type, on
        the tuning seed's reference trajectory at the schedule's own times (``schedule_objective``)."""
        sch = self.ck.model.schedule
        t_end = fitted_times[-1]
        steps = len(fitted_times) - 1
        x_T = initial_noise(self.tune_seed, range(self.s.tune_samples), self.ck.data_shape, device=self.opts.device,
                            std=sch.prior_std)
        predict = fit_prediction(base, options)
        out = {}
        for key, ts in [("grid:fitted", torch.tensor(fitted_times, dtype=torch.float64))] + [
                (f"grid:{g}", grids.time_grid(sch, g, steps, t_end)) for g in FIXED_GRIDS]:
            traj = self._trajectory(x_T, ts, t_end)
            out[key] = schedule_objective(self.ck.model, traj, ts, predict, fit, gamma)
        return out

    def cost(self, options: dict, base: str, nfe: int):
        """The DP cost matrix of ``options``' prediction type and t_end on the tuning seed (cached on disk)."""
        from safetensors.torch import load_file, save_file

        from .atomic import atomic_write

        s, ck = self.s, self.ck
        sch = ck.model.schedule
        t_end = grids.end_time(sch, options.get("t_end"))
        predict = fit_prediction(base, options)
        src = json.dumps({"checkpoint": s.checkpoint, "weights": ck.fingerprint, "seed": self.tune_seed,
                          "n": s.tune_samples, "t_end": t_end, "candidates": s.candidates, "predict": predict,
                          "fits": list(FITS),
                          "shape": list(ck.data_shape)})
        path = Path(s.results) / "cache" / f"tune-cost-{hashlib.sha256(src.encode()).hexdigest()[:24]}.safetensors"
        times = candidate_times(sch, t_end, s.candidates)
        if path.is_file():
            try:
                saved = load_file(str(path))
                return (saved["C"], saved["C2"]), times
            except Exception:  # noqa: BLE001 -- a damaged cache file is recomputed, never trusted
                pass
        x_T = initial_noise(self.tune_seed, range(s.tune_samples), ck.data_shape, device=self.opts.device,
                            std=sch.prior_std)
        traj = self._trajectory(x_T, times, t_end)
        C = cost_matrix(ck.model, traj, times, predict).contiguous()
        C2 = cost_tensor2(ck.model, traj, times, predict).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"C": C, "C2": C2}, str(tmp)))
        return (C, C2), times

    def _trajectory(self, x_T, times, t_end):
        from safetensors.torch import load_file, save_file

        from .atomic import atomic_write

        s, ck = self.s, self.ck
        src = json.dumps({"checkpoint": s.checkpoint, "weights": ck.fingerprint, "seed": self.tune_seed,
                          "n": s.tune_samples, "times": [float(t).hex() for t in times], "exact": ck.reference_exact})
        path = Path(s.results) / "cache" / f"tune-traj-{hashlib.sha256(src.encode()).hexdigest()[:24]}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["x"].to(x_T.device)
            except Exception:  # noqa: BLE001
                pass
        traj = reference_trajectory(ck, x_T, times)
        cpu = {"x": traj.detach().cpu().contiguous()}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file(cpu, str(tmp)))
        return traj


# -- transfer: presets tuned on one checkpoint, run on another --------------------------------------------------------
def map_times(times: list, source, target) -> list:
    """A fitted schedule on ``target``'s schedule: the same times where both schedules agree on them (digits ->
    digits-lw), else the same fractions of the log-SNR range between the ends (source T..t_end -> target T..t_end)."""
    ts = torch.tensor(times, dtype=torch.float64)
    if (type(source) is type(target) and source.T == target.T
            and torch.equal(source.lambda_(ts), target.lambda_(ts))):
        return [float(t) for t in ts]
    lam = source.lambda_(ts)
    u = (lam - lam[0]) / (lam[-1] - lam[0])
    ends = target.lambda_(torch.tensor([target.T, target.t_end], dtype=torch.float64))
    out = target.inverse_lambda(ends[0] + u * (ends[1] - ends[0])).to(torch.float64)
    out[0], out[-1] = target.T, target.t_end
    return [float(t) for t in out]


def transferred(rec: dict, source_schedule, target_schedule) -> tuple[str, dict]:
    """(base, options) of a preset on another checkpoint: its options, t_end at the target's own end (t_end is not
    searched), a fitted schedule's times through ``map_times``."""
    opts = {**rec["options"], "t_end": None}
    if rec.get("times") is not None:
        ts = map_times(rec["times"], source_schedule, target_schedule)
        opts.update(grid=grids.register_times(ts), t_end=ts[-1])
    return rec["base"], opts


def run_transfer(settings: TuneSettings, ck, records: list[dict]) -> list[dict]:
    """Each preset's default (the sampler it was tuned from) and tuned configuration on ``ck``, on the held-out seeds
    ``settings`` draws: paired differences of solver error and FID; writes RESULTS/transfer-<checkpoint>.json/.md."""
    import pretrained

    from .atomic import atomic_write

    search = Search(settings, ck, [])
    out = []
    for rec in records:
        source = pretrained.load(rec["checkpoint"]).model.schedule if rec.get("times") is not None else None
        default = samplers.get(rec["search"]["started_from"])
        base, opts = transferred(rec, source, ck.model.schedule)
        tuned = samplers.get(base, **opts)
        cells = search._cells([default, tuned], rec["nfe"], search.val_seeds, settings.val_samples)
        got = search._metrics(cells)
        per = {"default": {}, "tuned": {}}
        for c in cells:
            per["default" if c.sampler is default else "tuned"][c.seed] = got.get(c.cell_id, (math.inf, math.inf))
        err = {k: [v[sd][0] for sd in search.val_seeds] for k, v in per.items()}
        fid = {k: [v[sd][1] for sd in search.val_seeds] for k, v in per.items()}
        has_fid = not all(math.isnan(f) for v in fid.values() for f in v)
        out.append({"preset": rec["name"], "tuned_on": rec["checkpoint"], "checkpoint": settings.checkpoint,
                    "sampler": rec["search"]["started_from"], "nfe": rec["nfe"], "base": base, "options": opts,
                    "times_mapped": rec.get("times") is not None, "heldout_seeds": search.val_seeds,
                    "heldout_error": {k: _mean(v) for k, v in err.items()}, "heldout_per_seed": err,
                    "paired": paired(err["default"], err["tuned"]),
                    "heldout_fid": {k: _mean(v) for k, v in fid.items()} if has_fid else None,
                    "heldout_fid_per_seed": fid if has_fid else None,
                    "paired_fid": paired(fid["default"], fid["tuned"]) if has_fid else None})
    meta = {"checkpoint": settings.checkpoint, "seed": settings.seed, "heldout_seeds": search.val_seeds,
            "heldout_samples": settings.val_samples, "cells_run": search.cells_run,
            "seconds": time.perf_counter() - search.start}
    stem = f"transfer-{settings.checkpoint}".replace(":", "_").replace("/", "_")
    text = json.dumps({"transfer": meta, "results": out}, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(Path(settings.results) / f"{stem}.json", lambda tmp: Path(tmp).write_text(text))
    md = transfer_table(out)
    atomic_write(Path(settings.results) / f"{stem}.md", lambda tmp: Path(tmp).write_text(md))
    return out


def _ci(p: dict, fmt: str = ".3g") -> str:
    lo, hi = p["ci95"]
    return f"{p['diff_mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]{'' if p['resolved'] else ' (not resolved)'}"


def transfer_table(rows: list[dict]) -> str:
    """Markdown: default vs transferred preset per row, solver error and FID with paired 95 % intervals."""
    lines = ["| preset (tuned on) | run on | NFE | default err | tuned err | default - tuned (95% CI) | default FID | "
             "tuned FID | default - tuned FID (95% CI) | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, f = r["heldout_error"], r["heldout_fid"]
        fcols = (f"{f['default']:.2f} | {f['tuned']:.2f} | {_ci(r['paired_fid'], '.2f')}" if f else "- | - | -")
        lines.append(f"| {r['preset']} ({r['tuned_on']}) | {r['checkpoint']} | {r['nfe']} | {h['default']:.3g} | "
                     f"{h['tuned']:.3g} | {_ci(r['paired'])} | {fcols} | {r['paired']['n']} |")
    return "\n".join(lines) + "\n"


def _missing(v) -> bool:
    import pandas as pd
    return bool(pd.isna(v))


def _mean(v):
    return sum(v) / len(v) if v else math.nan


def paired(default: list, tuned: list) -> dict:
    """Paired per-seed differences default - tuned: mean, 95 % t interval, ratio of means, and whether the interval
    excludes 0 (``resolved``); with one seed the interval is unknown (not resolved)."""
    d = [a - b for a, b in zip(default, tuned)]
    n = len(d)
    mean = _mean(d)
    if n < 2 or not all(math.isfinite(x) for x in d):
        return {"n": n, "diff_mean": mean, "ci95": [math.nan, math.nan], "resolved": False,
                "ratio": _mean(default) / _mean(tuned) if _mean(tuned) else math.nan}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = T_975.get(n - 1) or T_975[max(k for k in T_975 if k <= n - 1)]
    half = t * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"n": n, "diff_mean": mean, "ci95": [lo, hi], "resolved": lo > 0 or hi < 0,
            "ratio": _mean(default) / _mean(tuned) if _mean(tuned) else math.inf}


# -- the command -------------------------------------------------------------------------------------------------
def check_tune_args(args) -> None:
    """Scalar arguments of `tune`, before anything is loaded or written."""
    from samplers.registry import validate_nfe

    from .preflight import MAX_SAMPLES, MAX_SEED, MAX_SEEDS, check_size, parse_budget

    big = args.allow_large
    for nfe in args.nfe:
        validate_nfe(nfe, allow_large=args.allow_large_nfe)
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed}: must be in 0..2**63-1")
    cells, seconds = parse_budget(args.budget)
    for flag, v, lo in (("--tune-samples", args.tune_samples, 1), ("--val-samples", args.val_samples, 1),
                        ("--val-seeds", args.val_seeds, 1), ("--candidates", args.candidates, 3),
                        ("--top", args.top, 0), ("--batch-size", args.batch_size, 1)):
        if v < lo:
            raise ValueError(f"{flag} {v}: must be >= {lo}")
    check_size("--tune-samples", args.tune_samples, MAX_SAMPLES, big)
    check_size("--val-samples", args.val_samples, MAX_SAMPLES, big)
    check_size("--val-seeds", args.val_seeds, MAX_SEEDS, big)
    if cells is not None:
        check_size("--budget", cells, MAX_SEEDS * 10, big)
    check_size("--candidates", args.candidates, 2000, big)
    if max(args.nfe) >= args.candidates:
        raise ValueError(f"--candidates {args.candidates}: a fitted schedule of NFE {max(args.nfe)} needs more "
                         f"candidate times than steps; allowed: > {max(args.nfe)}")


def plan_tune(args):
    """The pre-flight of `tune` (preflight.py's path: methods, checkpoint with one network call, a dry-run of each
    family, the results folder); returns (settings, checkpoint, methods). Nothing is written."""
    from .devices import resolve_device
    from .preflight import (check_environment, check_output_folder, dry_run, load_checkpoints, parse_budget,
                            resolve_methods)
    from .store import ResultsStore

    if check_environment() != 1:
        raise ValueError("bench tune runs in one process; share --results between processes to split its trials")
    check_tune_args(args)
    device = resolve_device(args.device)
    if args.transfer:
        records = [read_preset(p) for p in transfer_paths(args.transfer, args.results)]
        ck = load_checkpoints([args.checkpoint], device, allow_large=args.allow_large)[args.checkpoint]
        for rec in records:
            dry_run(ck, samplers.get(rec["search"]["started_from"]), [rec["nfe"]], 1, "float64", device)
        check_output_folder(args.results, "tune --results")
        ResultsStore(args.results).check()
        settings = TuneSettings(args.checkpoint, sorted({r["nfe"] for r in records}), [], seed=args.seed,
                                val_seeds=args.val_seeds, val_samples=args.val_samples, results=args.results,
                                batch_size=args.batch_size, quiet=args.quiet, device=device)
        return settings, ck, records
    methods = resolve_methods(args.sampler or list(DEFAULT_SAMPLERS), args.allow_large)
    for m in methods:
        if not hasattr(m, "spec") or m.adaptive or m.stochastic:
            raise ValueError(f"--sampler {m.name}: tune searches deterministic fixed-NFE samplers; allowed: e.g. "
                             f"{', '.join(DEFAULT_SAMPLERS)}")
        if len(search_space(m, max(args.nfe))) < 2:
            raise ValueError(f"--sampler {m.name}: it has no options tune can search (no time grid, no family in "
                             f"{sorted(SPACES)})")
    ck = load_checkpoints([args.checkpoint], device, allow_large=args.allow_large)[args.checkpoint]
    for m in methods:
        dry_run(ck, m, sorted(set(args.nfe)), 1, "float64", device)
    check_output_folder(args.results, "tune --results")
    ResultsStore(args.results).check()
    cells, seconds = parse_budget(args.budget)
    settings = TuneSettings(args.checkpoint, sorted(set(args.nfe)), [m.name for m in methods], budget=cells,
                            budget_s=seconds,
                            seed=args.seed, tune_samples=args.tune_samples, val_seeds=args.val_seeds,
                            val_samples=args.val_samples, candidates=args.candidates, top=args.top,
                            results=args.results, batch_size=args.batch_size, quiet=args.quiet, device=device)
    return settings, ck, methods


def transfer_paths(specs: list, results) -> list[Path]:
    """``--transfer``'s presets: PATH.json files, or NAME (globs allowed) in RESULTS/presets/; ValueError if none."""
    out = []
    for spec in specs:
        spec = spec[len(TUNED_PREFIX):] if spec.startswith(TUNED_PREFIX) else spec
        if spec.endswith(".json"):
            out.append(Path(spec))
            continue
        found = sorted((Path(results) / PRESETS_DIR).glob(f"{spec}.json"))
        if not found:
            raise ValueError(f"--transfer {spec}: no preset {Path(results) / PRESETS_DIR / (spec + '.json')}; allowed: "
                             f"a preset file PATH.json or a NAME in RESULTS/{PRESETS_DIR}/ (globs allowed)")
        out += found
    return out


def command(args) -> int:
    """``bench tune``: search and write presets, or with ``--transfer`` run presets on another checkpoint."""
    settings, ck, methods = plan_tune(args)  # every check; nothing written yet
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.transfer:
        print(transfer_table(run_transfer(settings, ck, methods)), end="")
        print(f"results in {args.results}/transfer-{settings.checkpoint}.json")
        return 0
    rows = run_tune(settings, ck, methods)
    print(summary_table(rows), end="")
    for r in rows:
        print(f"preset {r['preset_name']}: {r['preset']}")
    print(f"results in {args.results}/tune.json; next: python -m bench run --results {args.results} "
          f"--checkpoint {args.checkpoint} --sampler {rows[0]['preset_name']} --nfe {rows[0]['nfe']}")
    return 0


def run_tune(settings: TuneSettings, ck, methods) -> list[dict]:
    """Every family at every NFE; writes presets and RESULTS/tune.json, RESULTS/tune.md; returns the summaries."""
    from .atomic import atomic_write

    search = Search(settings, ck, methods)
    out = [search.tune(m, nfe) for m in methods for nfe in settings.nfes]
    meta = {"checkpoint": settings.checkpoint, "budget": settings.budget, "budget_s": settings.budget_s,
            "seed": settings.seed,
            "tune_seed": search.tune_seed, "heldout_seeds": search.val_seeds, "cells_run": search.cells_run,
            "seconds": time.perf_counter() - search.start}
    text = json.dumps({"search": meta, "results": out}, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(Path(settings.results) / "tune.json", lambda tmp: Path(tmp).write_text(text))
    md = summary_table(out)
    atomic_write(Path(settings.results) / "tune.md", lambda tmp: Path(tmp).write_text(md))
    return out


def summary_table(rows: list[dict]) -> str:
    """Markdown: held-out solver error default vs tuned with the paired difference, then fitted vs fixed grids."""
    lines = ["| sampler | NFE | default | tuned | default / tuned | paired diff (95% CI) | resolved | "
             "best fixed grid - tuned (95% CI) | tuned config |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, p, o, q = r["heldout_error"], r["paired"], r["tuned_options"], r["paired_vs_best_fixed"]
        vs = "same" if q["diff_mean"] == 0 and q["ci95"] == [0, 0] else (
            f"{q['diff_mean']:.3g} [{q['ci95'][0]:.3g}, {q['ci95'][1]:.3g}]{'' if q['resolved'] else ' NO'}")
        cfg = f"{r['tuned_base']}: " + ", ".join(f"{k}={v}" for k, v in sorted(o.items())
                                                 if k != "t_end" and not k.startswith("threshold"))
        if r["gamma"] is not None:
            cfg += f" (fitted: {r['fit']}, gamma={r['gamma']})"
        lines.append(f"| {r['sampler']} | {r['nfe']} | {h['default']:.3g} | {h['tuned']:.3g} | {p['ratio']:.2f} | "
                     f"{p['diff_mean']:.3g} [{p['ci95'][0]:.3g}, {p['ci95'][1]:.3g}] | "
                     f"{'yes' if p['resolved'] else 'NO'} | {vs} | {cfg} |")
    lines += ["", "Best fitted schedule (least tuning error) against the fixed grids, same solver options:", "",
              "| sampler | NFE | fitted (cost, gamma) | " + " | ".join(FIXED_GRIDS) + " | solver options |",
              "|---|---|---|" + "---|" * len(FIXED_GRIDS) + "---|"]
    for r in rows:
        h = r["heldout_error"]
        fc = r["fitted_compared"]
        fitted = f"{h['grid:fitted']:.3g} ({fc['fit']}, {fc['gamma']})" if "grid:fitted" in h else "-"
        opts = ", ".join(f"{k}={v}" for k, v in sorted(fc["options"].items())
                         if k not in ("t_end", "grid") and not k.startswith("threshold"))
        lines.append(f"| {r['sampler']} | {r['nfe']} | {fitted} | "
                     + " | ".join(f"{h[f'grid:{g}']:.3g}" for g in FIXED_GRIDS) + f" | {fc['base']}: {opts} |")
    if any(r.get("heldout_fid") for r in rows):
        lines += ["", "Held-out FID of the same cells (confirms, never selects): default vs tuned, paired per seed:", "",
                  "| sampler | NFE | default FID | tuned FID | default - tuned (95% CI) | best fixed grid - tuned (95% CI) "
                  "| fitted | " + " | ".join(FIXED_GRIDS) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(FIXED_GRIDS)]
        for r in rows:
            f = r.get("heldout_fid")
            if not f:
                continue
            q = r["paired_fid_vs_best_fixed"]
            vs = "same" if q["diff_mean"] == 0 and q["ci95"] == [0, 0] else _ci(q, ".2f")
            lines.append(f"| {r['sampler']} | {r['nfe']} | {f['default']:.2f} | {f['tuned']:.2f} | "
                         f"{_ci(r['paired_fid'], '.2f')} | {vs} | {f.get('grid:fitted', math.nan):.2f} | "
                         + " | ".join(f"{f[f'grid:{g}']:.2f}" for g in FIXED_GRIDS) + " |")
    if any(r.get("dp_objective") for r in rows):
        lines += ["", "The DP's objective (tuning seed) against the held-out error, fitted schedule and fixed grids: "
                  "objective / held-out error:", "",
                  "| sampler | NFE | cost, gamma | fitted | " + " | ".join(FIXED_GRIDS) + " |",
                  "|---|---|---|---|" + "---|" * len(FIXED_GRIDS)]
        for r in rows:
            o, h, fc = r.get("dp_objective"), r["heldout_error"], r["fitted_compared"]
            if not o:
                continue
            cols = [f"{o[k]:.3g} / {h[k]:.3g}" for k in ["grid:fitted"] + [f"grid:{g}" for g in FIXED_GRIDS]]
            lines.append(f"| {r['sampler']} | {r['nfe']} | {fc['fit']}, {fc['gamma']} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
