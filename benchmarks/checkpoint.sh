#!/usr/bin/env bash
# What checkpoints cost training, one JSON line each, into benchmarks/results-checkpoint.jsonl:
#   bash benchmarks/checkpoint.sh [CONFIG]     (default configs/bench-cpu-small.yaml; on an idle machine)
# 1. gptdist.bench checkpoint: the blocking save against the background save's stall, and PAIRS
#    (default 3) pairs of EVERY-step blocks of training, with a background save and without,
#    alternating in one process (the figure least moved by drift in the machine).
# 2. STEPS (default 200) training steps with a checkpoint every EVERY (default 20) steps against the
#    same run with one every 1,000 steps (that is: the final one only), ROUNDS (default 2) pairs, the
#    order alternating; `overhead` is the ratio of their wall times minus one.
# Needs the config's data (the default's: python -m gptdist.prepare --dataset verdict --out data/verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
CFG=${1:-configs/bench-cpu-small.yaml}
[ -f "$CFG" ] || fail "config $CFG is not a file: give a YAML config (configs/ holds examples)"
STEPS=${STEPS:-200}
EVERY=${EVERY:-20}
for name in STEPS EVERY; do require_count "$name" "${!name}"; done
require_count PAIRS "${PAIRS:-3}"
require_count ROUNDS "${ROUNDS:-2}"
OUT=benchmarks/results-checkpoint.jsonl
# the config and its data are checked by the first command, before the results are rewritten
saves=$(python -m gptdist.bench checkpoint --config "$CFG" --pairs "${PAIRS:-3}" --interval "$EVERY" | grep '^{')
echo "$saves" | tee "$OUT"

TMP=$(own_temporary gptdist-checkpoint)
trap 'rm -rf "$TMP"' EXIT
run() {  # seconds of one whole training run with a checkpoint every $1 steps
  rm -rf "$TMP/run"
  local start end
  start=$(date +%s.%N)
  python -m gptdist.train --config "$CFG" run.out_dir="$TMP/run" train.max_steps="$STEPS" checkpoint.interval="$1" \
    checkpoint.keep=2 eval.interval=100000 logging.interval=100000 sample.max_new_tokens=1 >/dev/null
  end=$(date +%s.%N)
  python -c "print(round($end - $start, 2))"
}
for round in $(seq "${ROUNDS:-2}"); do  # alternate which runs first, so that drift hits both alike
  if [ $((round % 2)) = 1 ]; then often=$(run "$EVERY"); rarely=$(run 1000)
  else rarely=$(run 1000); often=$(run "$EVERY"); fi
  echo "{\"benchmark\": \"checkpoint_overhead\", \"config\": \"$CFG\", \"steps\": $STEPS, \"round\": $round," \
       "\"seconds_every_$EVERY\": $often, \"seconds_every_1000\": $rarely," \
       "\"overhead\": $(python -c "print(round($often / $rarely - 1, 4))")}" | tee -a "$OUT"
done
