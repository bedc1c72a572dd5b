#!/usr/bin/env bash
# The reproduction runs of docs/reproduction.md, in order. Run from the repository root with the
# project installed; each line prints its own progress and wall time. Results go to runs/repro/,
# the generated reports to docs/reproduction/<name>/.
set -euo pipefail
S=runs/repro
CBSD=folder:../shared/data/CBSD432
BUDGET=(--train-size 3000 --val-size 500 --epochs 8 --seeds 5)

t() { local s=$SECONDS; "$@"; echo "wall $((SECONDS - s)) s: $*"; }

t python search/run.py --space lr-grid --data photos "${BUDGET[@]}" --storage $S --name lr-grid-photos
t python search/run.py --space models  --data photos "${BUDGET[@]}" --storage $S --name models-photos
t python search/run.py --space lr-grid --data $CBSD  "${BUDGET[@]}" --storage $S --name lr-grid-cbsd432
t python search/run.py --space models  --data $CBSD  "${BUDGET[@]}" --storage $S --name models-cbsd432
