#!/usr/bin/env bash
# The cells of reports/students/README.md: bash reports/students/run.sh RESULTS (then table.py RESULTS).
# One `bench run --config` per file in reports/students/configs/ (each sampler at its own budgets: 5 seeds, 500
# samples per cell), one thread; a rerun skips finished cells.
set -euo pipefail
RESULTS=${1:?usage: run.sh RESULTS}
for config in "$(dirname "$0")"/configs/*.toml; do
    python -m bench run --config "$config" --threads 1 --quiet --results "$RESULTS"
done
