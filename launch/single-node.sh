#!/usr/bin/env bash
# Train on this machine: one process per GPU (NPROC_PER_NODE overrides; 1 without GPUs).
#   bash launch/single-node.sh --config configs/gutenberg-gpt2-124m.yaml [section.key=value ...]
# MAX_RESTARTS=K restarts failed workers up to K times (a named hang exits 75 for this); they resume from
# the newest checkpoint. Exit status 79: the run failed at the same step three attempts in a row with no
# new checkpoint ("no progress"): do not run it again before mending the cause.
set -euo pipefail
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
export GPTDIST_OUTCOME_FILE="${GPTDIST_OUTCOME_FILE:-$PWD/.gptdist-outcome-$$}"
rm -f "$GPTDIST_OUTCOME_FILE"
STATUS=0
torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
  -m gptdist.train "$@" || STATUS=$?
OUTCOME=$(cat "$GPTDIST_OUTCOME_FILE" 2>/dev/null || true)
rm -f "$GPTDIST_OUTCOME_FILE"
if [[ "$OUTCOME" == *'"no progress"'* ]]; then
  echo "gptdist: training makes no progress ($OUTCOME); see the run's hangs/ and failures.jsonl" >&2
  exit 79
fi
exit "$STATUS"
