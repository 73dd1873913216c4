#!/usr/bin/env bash
# Train on this machine: one process per GPU (NPROC_PER_NODE overrides; 1 without GPUs).
#   bash launch/single-node.sh --config configs/gutenberg-gpt2-124m.yaml [section.key=value ...]
# MAX_RESTARTS=K restarts failed workers up to K times; they resume from the newest checkpoint.
set -euo pipefail
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NPROC_PER_NODE:-0}" -gt 0 ] || NPROC_PER_NODE=1
fi
exec torchrun --standalone --nproc_per_node="$NPROC_PER_NODE" --max-restarts="${MAX_RESTARTS:-0}" \
  -m gptdist.train "$@"
