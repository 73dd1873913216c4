#!/usr/bin/env bash
# The GPU figures of docs/performance.md: gptdist and nanoGPT's model side by side on one GPU.
#   bash benchmarks/gpu.sh NANOGPT_DIR [PART ...]      (from the repository root; default: compare shipped)
# NANOGPT_DIR is a nanoGPT checkout (its model.py is imported). PARTs, each a few minutes (every run
# compiles for 20-40 s); a session with a 10-minute limit runs them one call each:
#   quick    for a short loan (<= 6 minutes with compiles, 10 timed steps a run): gptdist and nanoGPT at
#            124M micro-batch 16 and 64 and 355M at 16, the modern recipe (configs/gutenberg-gpt2-124m-modern.yaml)
#            at 124M micro-batch 16 and 64, one checkpoint save's stall, and generation at batch 1
#   compare  GPT-2 124M at micro-batch 16, 32 and 64, 355M at 16: nanoGPT and gptdist alternating
#   shipped  configs/gutenberg-gpt2-124m.yaml as shipped, under torchrun --nproc_per_node=1
#   modes    torch.compile modes (max-autotune, CUDA graphs) and no compile, 124M at micro-batch 32
#   model    model options, 124M at micro-batch 32: biases on, padded logits sliced, no padding, tied head;
#            the modern recipe with model.document_mask (FlexAttention) and with data.windows documents
#   fp8      FP8 matmuls (torchao) on 355M at micro-batch 16: speed, and a loss curve beside bf16 where
#            a corpus can be prepared (The Verdict in $GPTDIST_CACHE, tiktoken's files in $TIKTOKEN_CACHE_DIR)
#   checkpoint  what a save of 124M costs training: blocking vs background (gptdist.bench checkpoint)
#   fsdp     124M at micro-batch 32 under torchrun on this GPU, ddp then fsdp; then gpt2-large and gpt2-xl
#            with fsdp and activation checkpointing as configs/gutenberg-gpt2-{large,xl}.yaml ship them:
#            memory per rank (gptdist.bench memory) and time per step on this one GPU
#   generate gptdist.bench generate: 512 greedy tokens after 64 at 124M (GPT-2's shape and the modern recipe's),
#            batch 1 and 8: gptdist's cached, compiled generation beside transformers' generate() on the
#            same weights exported, and beside the book's loop that recomputes the window
#   plan     gptdist.plan against the real step (benchmarks/plan_vs_run.py), uncompiled: 124M at micro-batch 8,
#            16 and 32 and 355M at 4, 8 and 16, ddp and fsdp: planned vs measured peak memory and step time
#   all      every part
# Every run appends one JSON row to benchmarks/results-gpu.jsonl (RESULTS overrides): label, shape,
# tokens_per_sec, mfu, peak_memory_mb, gpu, torch (or the error it ended with). Then
# benchmarks/gpu_report.py adds a ratio row per shape and prints the table. The timing data are
# 50M random token ids (benchmarks/synthetic_shards.py): no network needed.
# GPTDIST_ARGS and NANOGPT_ARGS are appended to every gptdist and nanoGPT run, GENERATE_ARGS to every
# generation benchmark, BENCH_STEPS replaces
# "--steps 30 --warmup 8", TOKENS the 50M timing tokens, CURVE_STEPS the 150 steps of the loss curves,
# CORPUS_MB the 32 MB of The Verdict's paragraphs they train on: tests/test_benchmarks.py runs the
# script on a CPU with tiny models this way.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
KNOWN="quick compare shipped modes model fp8 checkpoint fsdp generate plan"
[ $# -ge 1 ] || fail "usage: bash benchmarks/gpu.sh NANOGPT_DIR [${KNOWN// /|}|all ...]"
NANOGPT_DIR=$1
shift
require_nanogpt "$NANOGPT_DIR"
PARTS=${*:-compare shipped}
[ "$PARTS" = all ] && PARTS=${KNOWN#quick }
for part in $PARTS; do
  [[ " $KNOWN " == *" $part "* ]] || fail "unknown part $part (${KNOWN// /, }, all)"
done
for name in TOKENS CURVE_STEPS CORPUS_MB; do
  [ -z "${!name:-}" ] || require_count "$name" "${!name}"
done
OUT=${RESULTS:-benchmarks/results-gpu.jsonl}
[ -d "$(dirname "$OUT")" ] || fail "RESULTS $OUT: the folder $(dirname "$OUT") does not exist"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
TMP=$(own_temporary gptdist-gpu)
trap 'rm -rf "$TMP"' EXIT
python3 benchmarks/synthetic_shards.py --tokens "${TOKENS:-50000000}" --out "$TMP/tokens"
SMALL=configs/gutenberg-gpt2-124m.yaml
MEDIUM=configs/gutenberg-gpt2-medium.yaml
MODERN=configs/gutenberg-gpt2-124m-modern.yaml
[ "$PARTS" = quick ] && BENCH_STEPS=${BENCH_STEPS:---steps 10 --warmup 3}
read -r -a STEPS <<<"${BENCH_STEPS:---steps 30 --warmup 8}"
read -r -a GPTDIST_EXTRA <<<"${GPTDIST_ARGS:-}"
read -r -a NANOGPT_EXTRA <<<"${NANOGPT_ARGS:-}"
read -r -a GENERATE_EXTRA <<<"${GENERATE_ARGS:-}"

# record SHAPE LABEL COMMAND...: run it; append its JSON line tagged with shape and label, or its error
record() {
  local shape=$1 label=$2
  shift 2
  echo "== $shape: $label" >&2
  if "$@" >"$TMP/log" 2>&1; then
    grep '^{' "$TMP/log" | tail -1 | python3 benchmarks/gpu_report.py --tag "$shape" "$label" | tee -a "$OUT"
  else
    tail -c 600 "$TMP/log" | python3 benchmarks/gpu_report.py --error "$shape" "$label" | tee -a "$OUT"
  fi
}
gptdist() {
  python3 -m gptdist.bench train --config "$1" "${STEPS[@]}" data.dir="$TMP/tokens" train.grad_accum_steps=1 "${@:2}" \
    "${GPTDIST_EXTRA[@]}"
}
nanogpt() {
  python3 benchmarks/nanogpt_compare.py --nanogpt-dir "$NANOGPT_DIR" --data "$TMP/tokens" --device cuda --compile \
    --block-size 1024 --log-interval 10 "${STEPS[@]}" "$@" "${NANOGPT_EXTRA[@]}"
}
NANO_124M=(--n-layer 12 --n-head 12 --n-embd 768)
NANO_355M=(--n-layer 24 --n-head 16 --n-embd 1024)
generation() {
  python3 -m gptdist.bench generate --prompt-tokens 64 --new-tokens 512 --recompute "$@" "${GENERATE_EXTRA[@]}"
}

for part in $PARTS; do
  case $part in
    quick)  # each row is appended as soon as it is measured: a loan cut short keeps what it measured
      record "124M mb16" gptdist gptdist $SMALL train.micro_batch_size=16
      record "124M mb16" nanogpt nanogpt "${NANO_124M[@]}" --batch-size 16
      record "124M mb16" "gptdist modern" gptdist $MODERN train.micro_batch_size=16
      record "124M mb64" nanogpt nanogpt "${NANO_124M[@]}" --batch-size 64
      record "124M mb64" gptdist gptdist $SMALL train.micro_batch_size=64
      record "124M mb64" "gptdist modern" gptdist $MODERN train.micro_batch_size=64
      record "355M mb16" gptdist gptdist $MEDIUM train.micro_batch_size=16
      record "355M mb16" nanogpt nanogpt "${NANO_355M[@]}" --batch-size 16
      record "124M checkpoint" "gptdist save" python3 -m gptdist.bench checkpoint --config $SMALL --rounds 1 \
        data.dir="$TMP/tokens" "${GPTDIST_EXTRA[@]}"
      record "124M generate b1" "gptdist vs transformers" generation ;;
    compare)  # the order flips from shape to shape, so that drift in the machine hits both alike
      record "124M mb16" nanogpt nanogpt "${NANO_124M[@]}" --batch-size 16
      record "124M mb16" gptdist gptdist $SMALL train.micro_batch_size=16
      record "124M mb32" gptdist gptdist $SMALL train.micro_batch_size=32
      record "124M mb32" nanogpt nanogpt "${NANO_124M[@]}" --batch-size 32
      record "124M mb64" nanogpt nanogpt "${NANO_124M[@]}" --batch-size 64
      record "124M mb64" gptdist gptdist $SMALL train.micro_batch_size=64
      record "355M mb16" gptdist gptdist $MEDIUM train.micro_batch_size=16
      record "355M mb16" nanogpt nanogpt "${NANO_355M[@]}" --batch-size 16 ;;
    shipped)
      record "shipped 124M" "gptdist torchrun" torchrun --standalone --nproc_per_node=1 -m gptdist.bench train \
        --config $SMALL "${STEPS[@]}" data.dir="$TMP/tokens" "${GPTDIST_EXTRA[@]}" ;;
    modes)
      record "124M mb32" gptdist gptdist $SMALL train.micro_batch_size=32
      for mode in max-autotune-no-cudagraphs reduce-overhead max-autotune; do
        record "124M mb32" "gptdist compile_mode=$mode" gptdist $SMALL train.micro_batch_size=32 train.compile_mode=$mode
      done
      record "124M mb32" "gptdist compile=false" gptdist $SMALL train.micro_batch_size=32 train.compile=false ;;
    model)
      record "124M mb32" gptdist gptdist $SMALL train.micro_batch_size=32
      for option in model.bias=true model.vocab_padding=slice model.vocab_multiple=1 model.tie_embeddings=true; do
        record "124M mb32" "gptdist $option" gptdist $SMALL train.micro_batch_size=32 $option
      done
      # the document options' cost on the modern recipe: FlexAttention under the block-causal mask, and
      # the packing of document-aligned windows (the timing tokens hold an <|endoftext|> every ~50k)
      record "124M mb32 modern" "gptdist modern" gptdist $MODERN train.micro_batch_size=32
      record "124M mb32 modern" "gptdist modern model.document_mask=true" gptdist $MODERN \
        train.micro_batch_size=32 model.document_mask=true
      record "124M mb32 modern" "gptdist modern data.windows=documents" gptdist $MODERN \
        train.micro_batch_size=32 data.windows=documents ;;
    fp8)
      record "355M mb16" gptdist gptdist $MEDIUM train.micro_batch_size=16
      for recipe in tensorwise rowwise; do
        record "355M mb16" "gptdist float8=$recipe" gptdist $MEDIUM train.micro_batch_size=16 train.float8=$recipe
      done
      if python3 benchmarks/text_corpus.py --megabytes "${CORPUS_MB:-32}" --out "$TMP/text" 2>/dev/null; then
        python3 -m gptdist.prepare --input "$TMP/text" --out "$TMP/corpus" >/dev/null 2>&1
        for recipe in null tensorwise; do
          python3 -m gptdist.train --config $MEDIUM data.dir="$TMP/corpus" run.out_dir="$TMP/curve-$recipe" \
            train.micro_batch_size=16 train.grad_accum_steps=1 train.max_steps="${CURVE_STEPS:-150}" \
            eval.at_start=false eval.batches=1 sample.max_new_tokens=1 \
            logging.interval=10 eval.interval=1000 checkpoint.interval=1000 schedule.warmup_steps=20 \
            train.float8=$recipe "${GPTDIST_EXTRA[@]}" >/dev/null 2>&1
        done
        python3 benchmarks/gpu_report.py --curves "355M mb16" "$TMP/curve-null" "$TMP/curve-tensorwise" | tee -a "$OUT"
      else
        echo "fp8: no loss curve: The Verdict or tiktoken's files are not cached here" >&2
      fi ;;
    checkpoint)
      record "124M checkpoint" "gptdist save" python3 -m gptdist.bench checkpoint --config $SMALL data.dir="$TMP/tokens" \
        "${GPTDIST_EXTRA[@]}" ;;
    fsdp)
      for parallel in ddp fsdp; do
        label=gptdist; [ $parallel = fsdp ] && label="gptdist parallel=fsdp"
        record "124M mb32 torchrun" "$label" torchrun --standalone --nproc_per_node=1 -m gptdist.bench train \
          --config $SMALL "${STEPS[@]}" data.dir="$TMP/tokens" train.grad_accum_steps=1 train.micro_batch_size=32 \
          train.parallel=$parallel "${GPTDIST_EXTRA[@]}"
      done
      for size in large xl; do
        record "gpt2-$size fsdp" "gptdist memory" torchrun --standalone --nproc_per_node=1 -m gptdist.bench memory \
          --config configs/gutenberg-gpt2-$size.yaml data.dir="$TMP/tokens" train.grad_accum_steps=1 "${GPTDIST_EXTRA[@]}"
      done ;;
    plan)
      for parallel in ddp fsdp; do
        for run in "124M $SMALL 8 16 32" "355M $MEDIUM 4 8 16"; do
          read -r name config sizes <<<"$run"
          for mb in $sizes; do
            record "$name mb$mb $parallel" "plan vs run" python3 benchmarks/plan_vs_run.py --config "$config" \
              --steps 5 data.dir="$TMP/tokens" train.micro_batch_size="$mb" train.grad_accum_steps=1 \
              train.parallel=$parallel "${GPTDIST_EXTRA[@]}"
          done
        done
      done ;;
    generate)
      for batch in 1 8; do
        record "124M generate b$batch" "gptdist vs transformers" generation --batch-size $batch
        record "124M modern generate b$batch" "gptdist vs transformers" generation --batch-size $batch \
          --config $MODERN
      done ;;
  esac
done
python3 benchmarks/gpu_report.py --results "$OUT"
