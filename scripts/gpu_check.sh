#!/usr/bin/env bash
# One call on a CUDA machine answers issue 25's GPU questions: the default job, a 50,000-sample cell of an RGB
# stand-in (benchmarks/fid_memory.py) and the CUDA parity tests, each with its time, throughput and peak GPU memory.
#   bash scripts/gpu_check.sh [RESULTS_DIR]      (exits 2 at once, saying so, where no CUDA device is visible)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/gpu_check}
python - <<'PY' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
rm -rf "$out" && mkdir -p "$out"
peak() {  # run a python snippet under a peak-memory probe: prints seconds and peak GPU memory
  python - "$@" <<'PY'
import runpy, sys, time, torch
label, argv = sys.argv[1], sys.argv[2:]
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
sys.argv = argv
try:
    runpy.run_module(argv[0], run_name="__main__") if not argv[0].endswith(".py") else runpy.run_path(argv[0], run_name="__main__")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
torch.cuda.synchronize()
print(f"[{label}] {time.perf_counter() - start:.1f} s, peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
PY
}
# 1. The default job on the GPU (3 seeds x 500 samples, NFE 5 10 20), then throughput from its rows.
peak "default job" bench run --nfe 5 10 20 --device cuda --results "$out/default" --quiet
python - "$out/default" <<'PY'
import sys
from bench.store import ResultsStore
df = ResultsStore(sys.argv[1]).read()
ok = df[(df.status == "ok") & ~df.sampler.str.startswith("nll:")]
evals = (ok.nfe_counted * ok.n_samples).sum()
print(f"[default job] {len(df)} cells ({(df.status == 'ok').sum()} ok); sampling {ok.wall_clock_s.sum():.1f} s, "
      f"{ok.n_samples.sum() / ok.wall_clock_s.sum():.0f} samples/s, {evals / ok.wall_clock_s.sum():.0f} sample-NFE/s; "
      f"reference {df.drop_duplicates('seed').reference_s.sum():.1f} s over its seeds")
PY
# 2. A 50,000-sample cell of the RGB 3x32x32 stand-in (near-free network, stand-in Inception), streamed through FID.
peak "50k RGB cell" benchmarks/fid_memory.py 50000
# 3. The CUDA parity tests (device-aware samplers, checkpoints and the runner).
peak "CUDA tests" pytest -q -x tests/test_sampler_devices.py tests/test_pretrained_devices.py -k cuda
