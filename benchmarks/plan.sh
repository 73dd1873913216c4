#!/usr/bin/env bash
# gptdist.plan for every shipped config on 1 GPU, a node of 8 and 8 nodes of 8 (GPU: $GPU, default h100),
# one JSON row each into benchmarks/results-plan.jsonl and a table on stdout:
#   bash benchmarks/plan.sh [CONFIG ...]      (default configs/*.yaml; minutes: gpt2-xl's memory takes a minute)
# A config whose run would stop at that world size gets a row with its error. No GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
OUT=benchmarks/results-plan.jsonl
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(configs/*.yaml)
for config in "${CONFIGS[@]}"; do
  [ -f "$config" ] || fail "config $config is not a file: give a YAML config (configs/ holds examples)"
done
: > "$OUT"
for config in "${CONFIGS[@]}"; do
  for layout in "1 1" "1 8" "8 8"; do
    read -r nodes per_node <<<"$layout"
    if row=$(python3 -m gptdist.plan --config "$config" --nodes "$nodes" --gpus-per-node "$per_node" \
               --gpu "${GPU:-h100}" --json 2>"$OUT.err"); then
      echo "$row" >>"$OUT"
    else
      python3 -c 'import json, sys; print(json.dumps({"config": sys.argv[1], "world_size": int(sys.argv[2]),
                                                      "error": open(sys.argv[3]).read().strip()}))' \
        "$config" "$((nodes * per_node))" "$OUT.err" >>"$OUT"
    fi
  done
done
rm -f "$OUT.err"
python3 - "$OUT" <<'PY'
import json, sys
print("| config | GPUs | micro-batch x accumulation | peak per GPU | fits | largest micro-batch | step | run | GPU-hours |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for row in map(json.loads, open(sys.argv[1])):
    name = row["config"].removeprefix("configs/").removesuffix(".yaml")
    if "error" in row:
        print(f"| {name} | {row['world_size']} | {row['error'].removeprefix('gptdist.plan: error: ')} | | | | | | |")
        continue
    hours = "?" if row["hours"] is None else (f"{row['hours'] * 60:.1f} min" if row["hours"] < 1 else f"{row['hours']:.1f} h")
    gpu_hours = "?" if row["gpu_hours"] is None else f"{row['gpu_hours']:.1f}"
    print(f"| {name} | {row['world_size']} | {row['micro_batch_size']} x {row['grad_accum_steps']} | "
          f"{row['memory_gib']['peak']:.1f} GiB | {'yes' if row['fits'] else 'no'} | "
          f"{row['max_micro_batch']} x {row['max_micro_batch_grad_accum']} | {row['step_s']:.3f} s | {hours} | {gpu_hours} |")
PY
