#!/usr/bin/env bash
# Second half of docs/reproduction.md: a TNet search (Optuna + ASHA) on CBSD432 at the grids'
# budget, then its best configuration against the report's TNet setting, same data, same 5 seeds.
set -euo pipefail
S=runs/repro
CBSD=folder:../shared/data/CBSD432
DATA=(--data $CBSD --train-size 3000 --val-size 500 --epochs 8)

t() { local s=$SECONDS; "$@"; echo "wall $((SECONDS - s)) s: $*"; }

t python search/run.py --space tnet "${DATA[@]}" --num-samples 16 --seeds 1 --storage $S --name tnet-cbsd432
t python analysis/report.py $S/tnet-cbsd432 --out docs/reproduction/tnet-cbsd432
t python search/run.py --configs docs/reproduction/report-tnet.json \
    --configs docs/reproduction/tnet-cbsd432/best_config.json "${DATA[@]}" --seeds 5 --storage $S --name compare-cbsd432
