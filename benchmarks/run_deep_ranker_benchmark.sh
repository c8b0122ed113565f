#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The fine-ranker benchmark in one command: funnel's DeepRankerModel (fp32,
# bf16) against the same network exported to ONNX and run in ONNX Runtime
# (onnxruntime-node, CPU EP; a per-example "usual" export and a per-request
# "careful" one) and in PyTorch (Debian's python3-torch, the twin in
# tools/deep_ranker/), on the same weights and the same requests, 1 thread;
# plus funnel's trainer against PyTorch on 2 threads. See
# docs/fine-ranker-benchmark.md for the method and the results.
#
#   benchmarks/run_deep_ranker_benchmark.sh          # full run; rewrites the results in
#                                                    # docs/fine-ranker-benchmark.md
#   benchmarks/run_deep_ranker_benchmark.sh --quick  # few runs per row; writes
#                                                    # build-bench-deep/deep-ranker-results/report.md
# Only a full run with the defaults rewrites docs/; any other run writes
# build-bench-deep/deep-ranker-results/report.md.
#
# Options: --quick, --models default,large, --candidates 1,100,1000,
#          --no-torch (skip PyTorch), --no-train (skip the training rows),
#          --no-build (use the existing build-bench-deep),
#          --report-only (rewrite the report from the last run's raw results,
#          build-bench-deep/deep-ranker-results/results.jsonl).
# Steps: installs onnxruntime-node into benchmarks/bert/node_modules if it is
# missing (the encoder benchmark's copy, shared; npm ci --ignore-scripts),
# builds bench_deep_ranker in Release in build-bench-deep/, writes the models,
# exports and requests to build-bench-deep/deep-ranker-models/ (kept between
# runs), measures the reference GEMM rate, runs every runtime in its own
# process per model, then the training rows, prints the tables and writes the
# report. Run it on a quiet machine: every figure is a wall-clock time.

set -euo pipefail
args="$*"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-bench-deep"
models_dir="$build/deep-ranker-models"
results_dir="$build/deep-ranker-results"
outputs_dir="$results_dir/outputs"
python=/usr/bin/python3  # Debian's python, with python3-torch and python3-numpy

quick=0
models="default,large"
candidates="1,100,1000"
run_torch=1
run_train=1
do_build=1
report_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --models) models="$2"; shift ;;
    --candidates) candidates="$2"; shift ;;
    --no-torch) run_torch=0 ;;
    --no-train) run_train=0 ;;
    --no-build) do_build=0 ;;
    --report-only) report_only=1 ;;
    -h|--help) sed -n '3,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run_deep_ranker_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $quick == 1 ]]; then
  timing=(--warmup 2 --min-runs 20 --min-seconds 0.3 --max-seconds 2 --max-runs 500)
else
  # Each row: an untimed call (its outputs are the accuracy sample), three
  # warm-up calls, then timed calls until at least 100 calls and 2 s, or
  # 10 s (at least 10 calls), at most 2000.
  timing=(--warmup 3 --min-runs 100 --min-seconds 2 --max-seconds 10 --max-runs 2000)
fi
official=0
if [[ $quick == 0 && $models == default,large && $candidates == 1,100,1000 &&
      $run_torch == 1 && $run_train == 1 ]]; then
  official=1
fi

step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
results="$results_dir/results.jsonl"
run_info="$results_dir/run-info.json"

if [[ $report_only == 0 ]]; then

step "ONNX Runtime (npm onnxruntime-node, shared with benchmarks/bert)"
if [[ ! -d "$root/benchmarks/bert/node_modules/onnxruntime-node" ]]; then
  (cd "$root/benchmarks/bert" && npm ci --ignore-scripts --no-audit --no-fund)
fi
(cd "$root/benchmarks/bert" &&
  node -e "const o=require('onnxruntime-node'); console.log('onnxruntime-node', o.env.versions.node, 'loads')")

bench_funnel="$build/benchmarks/bench_deep_ranker"
if [[ $do_build == 1 ]]; then
  step "Release build of bench_deep_ranker in build-bench-deep/"
  # Warnings are not errors here: the benchmark measures, CI enforces warnings.
  generator=()
  [[ -f "$build/CMakeCache.txt" ]] || generator=(-G Ninja)
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DFUNNEL_BUILD_BENCHMARKS=ON -DFUNNEL_WERROR=OFF >/dev/null
  cmake --build "$build" --target bench_deep_ranker -j"$(nproc)"
fi
[[ -x "$bench_funnel" ]] || { echo "missing $bench_funnel (build it, or drop --no-build)" >&2; exit 1; }

step "Models, ONNX exports and requests in $models_dir"
"$python" -W ignore "$root/benchmarks/deep_ranker/make_models.py" --out "$models_dir" \
  --models "$models"

mkdir -p "$results_dir" "$outputs_dir"
rm -f "$results" "$run_info" "$outputs_dir"/*.npy
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

step "Reference: one large oneDNN GEMM on 1 thread"
"$bench_funnel" --mode gemm --size 1024 --reps 10 --out "$results"

common=(--models-dir "$models_dir" --out "$results" --outputs-dir "$outputs_dir"
        --candidates "$candidates" "${timing[@]}")
for model in ${models//,/ }; do
  for export in usual careful; do
    step "$model: ONNX Runtime ($export export)"
    node "$root/benchmarks/deep_ranker/bench_ort.js" --model "$model" --export "$export" "${common[@]}"
  done
  if [[ $run_torch == 1 ]]; then
    step "$model: PyTorch (eager twin)"
    "$python" -W ignore "$root/benchmarks/deep_ranker/bench_torch.py" serve --model "$model" \
      "${common[@]}"
  fi
  for precision in fp32 bf16; do
    step "$model: funnel $precision"
    "$bench_funnel" --mode serve --model "$model" --precision "$precision" "${common[@]}"
  done
done

step "Reference again, after the rows"
"$bench_funnel" --mode gemm --size 1024 --reps 10 --out "$results"

if [[ $run_train == 1 ]]; then
  train_model=${models%%,*}
  step "$train_model: training throughput, 2 threads (funnel, then PyTorch)"
  "$bench_funnel" --mode train --models-dir "$models_dir" --model "$train_model" --threads 2 \
    --batch-size 512 --out "$results"
  if [[ $run_torch == 1 ]]; then
    "$python" -W ignore "$root/benchmarks/deep_ranker/bench_torch.py" train \
      --models-dir "$models_dir" --model "$train_model" --threads 2 --batch-size 512 \
      --out "$results"
  fi
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
# The scheduler's per-session share (autogroup): "nice" of processes does not
# weigh against other sessions, the session's autogroup nice does.
autogroup_nice=$(sed -n 's/.* nice \(-\{0,1\}[0-9]*\)$/\1/p' /proc/self/autogroup 2>/dev/null || true)
printf '{"quick": %s, "official": %s, "load_before": "%s", "load_after": "%s", "elapsed_s": %s, "timing": "%s", "args": "%s", "autogroup_nice": "%s"}\n' \
  "$quick" "$official" "$load_before" "$load_after" "$(( $(date +%s) - started ))" "${timing[*]}" "$args" "${autogroup_nice:-?}" > "$run_info"
fi  # report_only

step "Report"
[[ -f "$results" && -f "$run_info" ]] || { echo "no results in $results_dir" >&2; exit 1; }
if [[ $(sed -n 's/.*"official": \([01]\).*/\1/p' "$run_info") == 1 ]]; then
  report="$root/docs/fine-ranker-benchmark.md"
else
  report="$results_dir/report.md"
fi
RESULTS="$results" RUN_INFO="$run_info" REPORT="$report" ROOT="$root" MODELS_DIR="$models_dir" \
  OUTPUTS_DIR="$outputs_dir" "$python" "$root/benchmarks/deep_ranker/report.py"
