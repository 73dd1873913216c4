#!/usr/bin/env bash
# The README's first command: prepare The Verdict, train verdict-tiny on 2 CPU processes, print a sample.
# Usage: bash launch/quickstart.sh [NPROC]   (run from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC="${1:-2}"
if [ ! -f data/verdict/manifest.json ]; then
  python -m gptdist.prepare --dataset verdict --out data/verdict
fi
torchrun --standalone --nproc_per_node="$NPROC" -m gptdist.train --config configs/verdict-tiny.yaml
python -m gptdist.generate --checkpoint runs/verdict-tiny --prompt "Every effort moves you" \
  --max-new-tokens 30 --temperature 0.7 --top-k 20 --seed 123
