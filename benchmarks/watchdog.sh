#!/usr/bin/env bash
# What the stall machinery costs a step, one JSON line per run into benchmarks/results-watchdog.jsonl:
#   bash benchmarks/watchdog.sh [CONFIG]     (default configs/bench-cpu-small.yaml; on an idle machine)
# NPROC (default 2) processes under torchrun train STEPS (default 100) steps three ways, ROUNDS (default 3)
# times, the order rotating so that drift in the machine hits each alike:
#   off       train.watchdog=false: no watchdog thread, no phase clock's straggler gather, DDP's own reduction
#   watchdog  the default: the watchdog and its heartbeats, phases, the timed reduction, a gather per log
#   spikes    the default plus train.spike_zscore=6 (an all-reduce of the loss and a few kernels a step)
# ms_per_step is taken from metrics.jsonl between the first logged step after step 10 and the last one
# (start-up and compilation left out); the last lines give each way's median ratio to off.
# Needs the config's data (the default's: python -m gptdist.prepare --dataset verdict --out data/verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
CFG=${1:-configs/bench-cpu-small.yaml}
[ -f "$CFG" ] || fail "config $CFG is not a file: give a YAML config (configs/ holds examples)"
STEPS=${STEPS:-100}
for name in STEPS; do require_count "$name" "${!name}"; done
require_count ROUNDS "${ROUNDS:-3}"
require_count NPROC "${NPROC:-2}"
[ "$STEPS" -gt 20 ] || fail "STEPS is $STEPS; it must be above 20 (the first 10 steps are not timed)"
OUT=benchmarks/results-watchdog.jsonl
TMP=$(own_temporary gptdist-watchdog)
trap 'rm -rf "$TMP"' EXIT
declare -A SETTINGS=([off]="train.watchdog=false" [watchdog]="train.watchdog=true"
                     [spikes]="train.watchdog=true train.spike_zscore=6")
run() {  # ms per step of one run the way $1 says
  rm -rf "$TMP/run"
  # shellcheck disable=SC2086
  torchrun --standalone --nproc_per_node="${NPROC:-2}" -m gptdist.train --config "$CFG" run.out_dir="$TMP/run" \
    train.max_steps="$STEPS" checkpoint.interval=100000 eval.interval=100000 eval.at_start=false \
    logging.interval=10 sample.max_new_tokens=1 ${SETTINGS[$1]} >/dev/null
  python - "$TMP/run/metrics.jsonl" <<'PY'
import json, sys
rows = [row for row in map(json.loads, open(sys.argv[1])) if "loss" in row and row["step"] > 10]
print(round(1000 * (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"]), 2))
PY
}
ways=(off watchdog spikes)
: > "$TMP/rows"
for round in $(seq "${ROUNDS:-3}"); do
  for i in 0 1 2; do
    way=${ways[$(((i + round) % 3))]}
    ms=$(run "$way")
    echo "{\"benchmark\": \"watchdog_overhead\", \"config\": \"$CFG\", \"nproc\": ${NPROC:-2}, \"steps\": $STEPS," \
         "\"round\": $round, \"way\": \"$way\", \"ms_per_step\": $ms}" | tee -a "$TMP/rows"
  done
done
python - "$TMP/rows" <<'PY' | tee -a "$TMP/rows"
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by_round = {}
for row in rows:
    by_round.setdefault(row["round"], {})[row["way"]] = row["ms_per_step"]
for way in ("watchdog", "spikes"):
    ratios = [r[way] / r["off"] for r in by_round.values()]
    print(json.dumps({"benchmark": "watchdog_overhead", "way": way, "median_ratio_to_off": round(statistics.median(ratios), 4),
                      "ratios": [round(x, 4) for x in ratios]}))
PY
cp "$TMP/rows" "$OUT"
