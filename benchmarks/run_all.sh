#!/usr/bin/env bash
# Run every benchmark alone, in sequence, then fill BENCHMARKS.md with the tables (issue 9).
#
#   bash benchmarks/run_all.sh            # full run: about 50-60 minutes on 2 cores; nothing else may run
#   bash benchmarks/run_all.sh --quick    # smoke run of every script (tables are NOT copied into BENCHMARKS.md)
#   JSL_MODEL=outputs/jsl_seq2seq bash benchmarks/run_all.sh   # generation bench on a trained JSL folder
#
# Results (.md, .json, .png per benchmark) go to benchmarks/results/ (BENCH_OUT to change).
# Thread count: all cores by default (BENCH_THREADS to change); common.py pins OMP/MKL/torch to it.
set -euo pipefail

cd "$(dirname "$0")/.."
out="${BENCH_OUT:-benchmarks/results}"
extra=("$@")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average before start: $load (should be well under 1: benchmarks must run alone)"

jsl_args=()
if [[ -n "${JSL_MODEL:-}" ]]; then jsl_args=(--model "$JSL_MODEL"); fi

run() {
  local name=$1; shift
  echo "=== $name: $*"
  local started=$SECONDS
  python "benchmarks/bench_$name.py" --output_dir "$out" "$@" "${extra[@]}"
  echo "=== $name took $((SECONDS - started)) s"
}

run data_pipeline
run instruction_tuning
run flops
run memory
run jsl_generation "${jsl_args[@]}"
run jsl_web "${jsl_args[@]}"
run training_speed

python benchmarks/common.py assemble "$out" BENCHMARKS.md
