#!/usr/bin/env bash
# Time to a loss on this machine: gptdist's GPT-2 recipe, gptdist's modern recipe and nanoGPT, each
# trained for the same budget of seconds on the same model size and data (benchmarks/time_to_loss.py).
#   bash benchmarks/time_to_loss.sh NANOGPT_DIR [--data DIR] [--budget SECONDS] [--sweep] [--device cuda]
# Appends to benchmarks/results-time-to-loss.jsonl, draws docs/time-to-loss.png; the last line printed
# is the JSON summary (time_to_target_ratio: the modern recipe's seconds to the GPT-2 recipe's final
# validation loss over the GPT-2 recipe's). Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
[ $# -ge 1 ] || fail "usage: bash benchmarks/time_to_loss.sh NANOGPT_DIR [--data DIR] [--budget SECONDS] [--sweep]"
NANOGPT_DIR=$1
shift
exec python3 benchmarks/time_to_loss.py --nanogpt-dir "$NANOGPT_DIR" "$@"
