#!/usr/bin/env bash
# Scale by simulation (benchmarks/scale.py): the tiny model trained by 2, 4, 8, 16 and 32 gloo processes on
# this machine, each a torchrun job, then a resume from 16 processes onto 4:
#   bash benchmarks/scale.sh [SIZES]       (default 2,4,8,16,32; on an idle machine: it takes minutes)
# Rows into benchmarks/results-scale.jsonl, the table on stdout, the plot into docs/scale.png.
# Needs The Verdict prepared: python -m gptdist.prepare --dataset verdict --out data/verdict
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
require_data data/verdict
python benchmarks/scale.py --data data/verdict --sizes "${1:-2,4,8,16,32}" \
  --results benchmarks/results-scale.jsonl --plot docs/scale.png
