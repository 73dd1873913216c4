#!/usr/bin/env bash
# Train on several machines without SLURM: run this once on every node, with the same settings.
#   NNODES=2 NPROC_PER_NODE=8 RDZV_ENDPOINT=node0.example.org:29500 \
#     bash launch/multi-node.sh --config configs/gutenberg-gpt2-124m.yaml
# RDZV_ENDPOINT is host:port of one of the nodes, reachable from all of them (c10d rendezvous).
# MAX_RESTARTS=K restarts failed workers up to K times (a named hang exits 75 for this); they resume from
# the newest checkpoint. Exit status 79: the run failed at the same step three attempts in a row with no
# new checkpoint ("no progress"): do not run it again before mending the cause.
set -euo pipefail
: "${NNODES:?set NNODES to the number of nodes}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT to host:port of a node that all nodes can reach}"
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
# Status 0 exactly when training finished: rank 0 writes GPTDIST_OUTCOME_FILE once every rank is done
# (on the node of rank 0; give a path on a shared filesystem to have every node see it), which settles
# the case where torchrun exits 1 after a successful run (an agent leaving before the rendezvous closed).
export GPTDIST_OUTCOME_FILE="${GPTDIST_OUTCOME_FILE:-$PWD/.gptdist-outcome-${RDZV_ID:-gptdist}-$(hostname)}"
rm -f "$GPTDIST_OUTCOME_FILE"
STATUS=0
torchrun --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
  --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-gptdist}" \
  -m gptdist.train "$@" || STATUS=$?
if grep -q '"no progress"' "$GPTDIST_OUTCOME_FILE" 2>/dev/null; then
  echo "gptdist: training makes no progress ($(cat "$GPTDIST_OUTCOME_FILE")); see the run's hangs/ and failures.jsonl" >&2
  exit 79
fi
if [ -s "$GPTDIST_OUTCOME_FILE" ]; then
  [ "$STATUS" = 0 ] || echo "gptdist: torchrun exited $STATUS after training finished: success"
  exit 0  # the file stays: the other nodes may read it too
fi
exit "$STATUS"
