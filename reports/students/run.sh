#!/usr/bin/env bash
# The cells of reports/students/README.md: bash reports/students/run.sh RESULTS (then table.py RESULTS).
# 5 seeds, 500 samples per cell, one thread; a rerun skips finished cells.
set -euo pipefail
RESULTS=${1:?usage: run.sh RESULTS}
COMMON=(--checkpoint digits --seeds 0 1 2 3 4 --n-samples 500 --threads 1 --quiet --results "$RESULTS")
# training-free solvers (the teacher): DDIM and DPM-Solver++(2M) at the students' budgets, the teacher at 20 NFE,
# DPM-Solver (singlestep, order 3) and DDIM on GENIE's time-quadratic grid at 10 and 20
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 --sampler ddim dpm_solver++_2m
python -m bench run "${COMMON[@]}" --nfe 20 --sampler ddim dpm_solver++_3m
python -m bench run "${COMMON[@]}" --nfe 10 20 --sampler dpm_solver ddim,grid=time_quadratic
# the students at the budgets they were trained for (cd also at 8), GENIE at 10 and 20
python -m bench run "${COMMON[@]}" --nfe 1 --sampler kd
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 --sampler pd
python -m bench run "${COMMON[@]}" --nfe 1 2 4 8 --sampler cd
python -m bench run "${COMMON[@]}" --nfe 10 20 --sampler genie
