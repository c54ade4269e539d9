"""Solver overhead, two ways (issue 8, "Speed"), one thread:

``test_overhead``: the wall-clock of a sample at NFE n over n times one model evaluation of the same batch (batch
1000, a random 64-dim MLP eps-model of about 2.5 ms per call), ours next to the diffusers loop for the same algorithm.
The network's calls are timed inside the sample, so the ratio is the sample's time over that of the n evaluations
it made (median over ROUNDS_MLP samples, wall and CPU time). Casting the float64 state to the MLP's float32 and
back counts as overhead; diffusers' DPM-Solver and Euler steps return float32 samples, which skip half of it.

``test_step_overhead``: the cost per NFE of the solver alone. The model is near-free (it returns its input, float64,
so the boundary casts nothing) and the state is the digits checkpoint's, 1000 x 1 x 8 x 8 float64. Beside our
sampler, in the same interleaved rounds (CPU time of this process, median of ROUNDS):
  - ``floor``: the bare arithmetic of the same update, same orders per step, written as the minimal torch ops: one
    new tensor per linear combination and one fused multiply-add (``add_(t, alpha=c)``) per further term, with the
    eps -> x0 conversion as two such ops where the solver predicts x0. Target: ours <= 1.5 x floor.
  - ``floor_same_rounding``: the same arithmetic with a separate multiply and add per term (``samplers.state.lincomb``),
    the cheapest form that rounds as our solvers do (a fused multiply-add rounds once, so it changes the bits).
  - ``diffusers``: the diffusers scheduler running the closest algorithm through our adapter, and ``diffusers_loop``,
    its step loop alone (the adapter's sample minus building the scheduler and setting its timesteps). Target: ours
    <= diffusers_loop.
Numbers go to ``benchmark.extra_info`` and a printed table; ``benchmark`` itself times our sampler.
"""
import statistics
import time

import pytest
import torch

import samplers
from samplers.state import lincomb
from timers import interleaved, table

BATCH, DIM, HIDDEN, NFE = 1000, 64, 256, 10
ROUNDS_MLP = 15
# (our sampler, its options, the diffusers scheduler running the same algorithm, its options, NFE)
PAIRS = [
    ("ddim", {}, "diffusers:DDIMScheduler", {"clip_sample": False}, NFE),
    ("euler", {"space": "rho"}, "diffusers:EulerDiscreteScheduler", {}, NFE),
    ("heun", {"final_euler": True}, "diffusers:HeunDiscreteScheduler", {}, NFE + 1),
    ("dpm_solver++_2m", {}, "diffusers:DPMSolverMultistepScheduler", {}, NFE),
    ("unipc", {}, "diffusers:UniPCMultistepScheduler", {}, NFE),
]


class TimedNet:
    """A network with a stopwatch: wall and CPU seconds of its calls since the last reset."""

    def __init__(self, fn):
        self.fn, self.wall, self.cpu = fn, 0.0, 0.0

    def __call__(self, x, t):
        w0, c0 = time.perf_counter(), time.process_time()
        out = self.fn(x, t)
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0
        return out


@pytest.fixture(scope="module")
def model():
    """A random MLP eps-model on 64 dims (a realistic per-call cost for a cheap network), its calls timed."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(DIM + 1, HIDDEN), torch.nn.SiLU(), torch.nn.Linear(HIDDEN, HIDDEN),
                              torch.nn.SiLU(), torch.nn.Linear(HIDDEN, DIM)).eval()

    def fn(x, t):
        with torch.inference_mode():
            return net(torch.cat([x, t[:, None]], 1))

    return samplers.DiffusionModel(TimedNet(fn), samplers.VPLinear(), "eps", data_shape=(DIM,), name="mlp64")


@pytest.mark.parametrize("side", ["ours", "diffusers"])
@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_overhead(benchmark, model, pair, side):
    ours, ours_opts, theirs, theirs_opts, nfe = pair
    name, options = (ours, ours_opts) if side == "ours" else (theirs, theirs_opts)
    if name not in samplers.available():
        pytest.skip(f"{name} is not registered")
    sampler, net = samplers.get(name, **options), model.fn
    x_T = samplers.initial_noise(0, range(BATCH), (DIM,))
    sampler.sample(model, x_T, nfe)  # warm-up (and diffusers' import)
    ratios = {"wall": [], "cpu": []}
    for _ in range(ROUNDS_MLP):  # per round: the sample's time over the time of the n evaluations it made
        net.wall = net.cpu = 0.0
        w0, c0 = time.perf_counter(), time.process_time()
        sampler.sample(model, x_T, nfe)
        ratios["wall"].append((time.perf_counter() - w0) / net.wall)
        ratios["cpu"].append((time.process_time() - c0) / net.cpu)
        eval_s = {"wall": net.wall / nfe, "cpu": net.cpu / nfe}
    benchmark.pedantic(sampler.sample, args=(model, x_T, nfe), rounds=3, iterations=1)
    info = {"nfe": nfe}
    for clock in ("wall", "cpu"):
        overhead = statistics.median(ratios[clock])
        info.update({f"eval_ms_{clock}": 1e3 * eval_s[clock], f"overhead_{clock}": overhead,
                     f"solver_ms_per_call_{clock}": 1e3 * (overhead - 1.0) * eval_s[clock]})
    benchmark.extra_info.update(info)
    print(f"\n{name}: overhead {info['overhead_wall']:.3f} wall / {info['overhead_cpu']:.3f} CPU, solver "
          f"{info['solver_ms_per_call_cpu']:.2f} ms CPU per call (eval {info['eval_ms_cpu']:.2f} ms CPU)")


# -- per-step overhead with a near-free model ---------------------------------------------------------------------
SHAPE = (BATCH, 1, 8, 8)  # the digits checkpoint's state
ROUNDS = 25
FLOOR_RATIO_TARGET = 1.5
# Coefficients of the floors: their values do not change the cost (no denormals, no overflow in 20 steps).
C = (0.9, -0.05, 0.03, -0.02, 0.01)


def _fused(first, *terms):
    """c0 t0 + sum c_j t_j: one new tensor, then one fused multiply-add per further term."""
    c, t = first
    out = torch.mul(t, c)
    for c, t in terms:
        out.add_(t, alpha=c)
    return out


def _same_rounding(first, *terms):
    """The same sum with a separate multiply and add per term, as our solvers round it."""
    return lincomb(first, *terms)


def _x0(comb, x, e):
    """x0 = (x - sigma eps) / alpha: fused as (1/alpha) x - (sigma/alpha) eps; else as the model boundary rounds it."""
    if comb is _fused:
        return comb((C[0], x), (C[1], e))
    r = torch.mul(e, C[1])
    return torch.sub(x, r, out=r).div_(C[0])


def _step(comb, x, terms, nested: bool):
    """x' = R x + sum of the model terms; UniPC rounds R x + (the sum), which ``nested`` keeps for same rounding."""
    if nested and comb is _same_rounding:
        return comb((C[0], x), comb(*terms))
    return comb((C[0], x), *terms)


def _multistep_floor(comb, x, orders, *, x0: bool, corrector: bool = False):
    """Per step: x = R x + sum over the last k model values; UniPC also corrects with the new value's term."""
    free = lambda x: x  # the near-free model
    m = lambda x: _x0(comb, x, free(x)) if x0 else free(x)
    ms = [m(x)]
    for i, k in enumerate(orders, start=1):
        terms = [(C[1 + j], ms[-1 - j]) for j in range(min(k, len(ms)))]
        x_s, x = x, _step(comb, x, terms, corrector)
        if i == len(orders):
            break
        m_t = m(x)
        if corrector:
            x = _step(comb, x_s, [terms[0], (C[1], m_t), *terms[1:]], True)
        ms = (ms + [m_t])[-max(orders):]
    return x


def _heun_floor(comb, x, nfe):
    """EDM Heun with a final Euler step (NFE 2N - 1): model inputs x-bar alpha, the Euler and the trapezoid updates."""
    steps = (nfe + 1) // 2
    xb = x * C[0]
    for i in range(steps):
        d = xb * C[0]
        x_next = comb(xb, (C[1], d)) if comb is _same_rounding else torch.add(xb, d, alpha=C[1])
        if i == steps - 1:
            xb = x_next
            break
        d_next = x_next * C[0]
        if comb is _same_rounding:
            xb = torch.add(d, d_next).mul_(C[2]).add_(xb)
        else:
            xb = torch.add(xb, d, alpha=C[2]).add_(d_next, alpha=C[2])
    return xb * C[0]


def _orders_multistep(nfe, order, lower_final_below):
    """Orders per step: warm-up min(i, order); lowered at the end when nfe < lower_final_below."""
    out = []
    for i in range(1, nfe + 1):
        k = min(i, order)
        if nfe < lower_final_below:
            k = min(k, nfe + 1 - i)
        out.append(k)
    return out


def _floor(kind, comb, x, nfe):
    if kind == "ddim":
        return _multistep_floor(comb, x, [1] * nfe, x0=False)
    if kind == "heun":
        return _heun_floor(comb, x, nfe)
    if kind == "dpm++2m":  # DPM-Solver++(2M): lower_order_final only below 10 steps
        return _multistep_floor(comb, x, _orders_multistep(nfe, 2, 10), x0=True)
    if kind.startswith("unipc"):  # UniPC-p: lower_order_final always
        return _multistep_floor(comb, x, _orders_multistep(nfe, int(kind[-1]), nfe + 1), x0=True, corrector=True)
    if kind == "deis3":  # eps terms min(i, 3) + 1, no lower final orders
        return _multistep_floor(comb, x, [min(i, 3) + 1 for i in range(nfe)], x0=False)
    raise ValueError(kind)


# (label, our sampler, its options, diffusers scheduler, its options, NFE, floor kind)
STEP_CASES = [
    ("DDIM", "ddim", {}, "diffusers:DDIMScheduler", {"clip_sample": False}, NFE, "ddim"),
    ("Euler (EDM)", "euler", {"space": "rho"}, "diffusers:EulerDiscreteScheduler", {}, NFE, "ddim"),
    ("Heun (EDM)", "heun", {"final_euler": True}, "diffusers:HeunDiscreteScheduler", {}, NFE + 1, "heun"),
    ("DPM-Solver++(2M)", "dpm_solver++_2m", {}, "diffusers:DPMSolverMultistepScheduler", {}, NFE, "dpm++2m"),
    ("UniPC bh2 order 2", "unipc_bh2_2", {}, "diffusers:UniPCMultistepScheduler", {}, NFE, "unipc2"),
    ("UniPC bh1 order 3", "unipc", {}, "diffusers:UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"},
     NFE, "unipc3"),
    # diffusers' DEIS is its log-rho variant, the closest to our tAB-DEIS(3)
    ("DEIS tAB(3)", "deis_tab3", {}, "diffusers:DEISMultistepScheduler", {"solver_order": 3}, NFE, "deis3"),
]
STEP_COLUMNS = ["solver", "nfe", "ours_ms", "floor_ms", "floor_same_rounding_ms", "diffusers_loop_ms", "diffusers_ms",
                "ours/floor", "ours/same_rounding", "ours/diffusers_loop"]


@pytest.fixture(scope="module")
def step_rows():
    """The rows of test_step_overhead, printed as one table when the module is done."""
    rows = []
    yield rows
    if rows:
        print("\n" + table(rows, STEP_COLUMNS, "ms per NFE (CPU time, median of interleaved rounds), near-free model, "
                                              "1000x1x8x8 float64"))


@pytest.fixture(scope="module")
def free_model():
    """eps(x, t) = x in float64: the boundary casts nothing, so what remains is the solver's own cost."""
    return samplers.DiffusionModel(lambda x, t: x, samplers.VPLinear(), "eps", data_shape=SHAPE[1:],
                                   net_dtype=torch.float64, name="free")


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("case", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_overhead(benchmark, free_model, step_rows, case):
    from samplers import diffusers_adapter as adapter

    label, ours, ours_opts, theirs, theirs_opts, nfe, kind = case
    x_T = samplers.initial_noise(0, range(SHAPE[0]), SHAPE[1:])
    ours_s, theirs_s = samplers.get(ours, **ours_opts), samplers.get(theirs, **theirs_opts)
    cls, options = theirs.split(":", 1)[1], dict(theirs_s.options)
    steps = adapter._steps_for(cls, tuple(sorted(options.items())), nfe)

    def build():  # what the adapter does before its loop
        adapter._set_timesteps(adapter._build(cls, free_model.schedule, options), steps, free_model.schedule)

    fns = {"ours": lambda: ours_s.sample(free_model, x_T, nfe),
           "floor": lambda: _floor(kind, _fused, x_T, nfe),
           "floor_same_rounding": lambda: _floor(kind, _same_rounding, x_T, nfe),
           "diffusers": lambda: theirs_s.sample(free_model, x_T, nfe),
           "diffusers_build": build}
    med = {k: v["cpu"] / nfe * 1e3 for k, v in interleaved(fns, ROUNDS).items()}  # ms per NFE
    med["diffusers_loop"] = med["diffusers"] - med.pop("diffusers_build")
    row = {"solver": label, "nfe": nfe, **{f"{k}_ms": v for k, v in med.items()},
           "ours/floor": med["ours"] / med["floor"], "ours/same_rounding": med["ours"] / med["floor_same_rounding"],
           "ours/diffusers_loop": med["ours"] / med["diffusers_loop"]}
    row["floor_target_met"] = row["ours/floor"] <= FLOOR_RATIO_TARGET
    row["diffusers_target_met"] = row["ours/diffusers_loop"] <= 1.0
    benchmark.extra_info.update(row)
    step_rows.append(row)
    benchmark.pedantic(ours_s.sample, args=(free_model, x_T, nfe), rounds=5, iterations=1)
