#!/usr/bin/env bash
# Regenerates reports/tune/ from scratch: every number in reports/tune/README.md comes from the files these commands
# write (tune.json / tune.md / transfer-*.json / transfer-*.md, copied here with the presets). Resumable: rerunning
# reads every finished trial back from the results folders' stores and computes nothing again.
# Cost on the shared 2-core CPU, one thread: see README.md (cells, seconds are in each JSON's "search"/"transfer").
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=reports/tune
GMM=${GMM_RESULTS:-results/tune}
DIG=${DIGITS_RESULTS:-results/tune-digits}

# 1. gmm-16d: the search (exact oracle), NFE 5 10 20, defaults; then its presets on gmm-16d-flow.
python -m bench tune --checkpoint gmm-16d --nfe 5 10 20 --threads 1 --quiet --results "$GMM"
python -m bench tune --checkpoint gmm-16d-flow --transfer 'gmm-16d-*' --threads 1 --quiet --results "$GMM"

# 2. digits (VP): the search by solver error (the 1000-NFE Heun reference on the first 200 samples of a cell), FID
#    against the shipped reference set on the same held-out cells (4 seeds x 500 samples): FID confirms, never selects.
python -m bench tune --checkpoint digits --nfe 5 10 --sampler unipc_bh1_3 dpm_solver++_3m --tune-samples 128 \
    --val-seeds 4 --val-samples 500 --threads 1 --quiet --results "$DIG"

# 3. the digits presets on digits-lw (same VP schedule: fitted times unchanged) and on the other families (fitted
#    times mapped by log-SNR fraction), on 3 of the same held-out seeds (the first 3 drawn) x 500 samples.
for ck in digits-lw digits-edm digits-flow; do
    python -m bench tune --checkpoint "$ck" --transfer 'digits-*' --val-seeds 3 --val-samples 500 --threads 1 \
        --quiet --results "$DIG"
done

mkdir -p "$OUT/presets" "$OUT/digits/presets"
cp "$GMM"/tune.json "$GMM"/tune.md "$GMM"/transfer-gmm-16d-flow.json "$GMM"/transfer-gmm-16d-flow.md "$OUT"/
cp "$GMM"/presets/gmm-16d-*.json "$OUT"/presets/
cp "$DIG"/tune.json "$DIG"/tune.md "$DIG"/transfer-*.json "$DIG"/transfer-*.md "$OUT"/digits/
cp "$DIG"/presets/digits-*.json "$OUT"/digits/presets/
