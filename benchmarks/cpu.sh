#!/usr/bin/env bash
# Every CPU figure of docs/performance.md, one JSON line each, into benchmarks/results-cpu.jsonl.
#   bash benchmarks/cpu.sh [NANOGPT_DIR]      (run from the repository root, on an idle machine)
# ROUNDS (default 3) sets how many alternating nanoGPT/gptdist pairs run: more on a noisy machine.
# Needs data/verdict (python -m gptdist.prepare --dataset verdict --out data/verdict).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
NANOGPT_DIR=${1:-}
[ -z "$NANOGPT_DIR" ] || require_nanogpt "$NANOGPT_DIR"
require_data data/verdict
require_count ROUNDS "${ROUNDS:-3}"
OUT=benchmarks/results-cpu.jsonl
CFG=configs/bench-cpu-small.yaml
: >"$OUT"  # rewritten, once every input is known good
record() { local label=$1; shift; "$@" 2>/dev/null | grep '^{' | sed "s/^{/{\"label\": \"$label\", /" | tee -a "$OUT"; }

for round in $(seq "${ROUNDS:-3}"); do  # alternate, so that drift in the machine hits both alike
  [ -z "$NANOGPT_DIR" ] || record "nanogpt" python benchmarks/nanogpt_compare.py --nanogpt-dir "$NANOGPT_DIR" --data data/verdict --steps 10
  record "gptdist" python -m gptdist.bench train --config $CFG --steps 10
done
record "off: reuse_host_memory" python -m gptdist.bench train --config $CFG --steps 10 train.reuse_host_memory=false
record "off: vocab padding" python -m gptdist.bench train --config $CFG --steps 10 model.vocab_multiple=1
record "on: compile" python -m gptdist.bench train --config $CFG --steps 10 --warmup 3 --eval train.compile=true
record "ddp 2 processes" torchrun --standalone --nproc_per_node=2 -m gptdist.bench train --config $CFG --steps 10
record "ddp 2 processes, 25 MB buckets" torchrun --standalone --nproc_per_node=2 -m gptdist.bench train --config $CFG --steps 10 train.ddp_bucket_mb=25

TMP=$(own_temporary gptdist-cpu)
trap 'rm -rf "$TMP"' EXIT
python benchmarks/synthetic_shards.py --tokens 1000000 --out "$TMP/1m"
python benchmarks/synthetic_shards.py --tokens 100000000 --out "$TMP/100m"
record "memory, 1M-token corpus" python -m gptdist.bench train --config $CFG --steps 30 data.dir="$TMP/1m"
record "memory, 100M-token corpus" python -m gptdist.bench train --config $CFG --steps 30 data.dir="$TMP/100m"
record "data loader, 100M-token corpus" python -m gptdist.bench data --config $CFG data.dir="$TMP/100m"
record "prepare 64 MB" python -m gptdist.bench prepare --megabytes 64 --workers 2
