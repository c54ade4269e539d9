#!/usr/bin/env bash
# The cells of reports/students/README.md: bash reports/students/run.sh RESULTS (then table.py RESULTS).
# 5 seeds, 500 samples per cell, one thread; a rerun skips finished cells.
set -euo pipefail
RESULTS=${1:?usage: run.sh RESULTS}
COMMON=(--checkpoint digits --seeds 0 1 2 3 4 --n-samples 500 --threads 1 --quiet --results "$RESULTS")
# training-free solvers (the teacher) at the students' budgets and at 10 and 20 NFE
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 10 20 \
    --sampler ddim dpm_solver++_2m dpm_solver++_3m ddim,grid=time_quadratic dpm_solver
# the students at the budgets they were trained for (cd also at 8 and 20), GENIE at 10 and 20
python -m bench run "${COMMON[@]}" --nfe 1 --sampler kd
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 --sampler pd
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 20 --sampler cd
python -m bench run "${COMMON[@]}" --nfe 10 20 --sampler genie
