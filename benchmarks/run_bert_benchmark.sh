#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# The BERT encoder benchmark in one command: funnel's BertEncoder (fp32, bf16,
# int8) against ONNX Runtime (onnxruntime-node, CPU EP, fp32) and PyTorch
# (Debian's python3-torch, fp32) on the same random-weight models and the same
# token ids. See docs/encoder-benchmark.md for the method and the results.
#
#   benchmarks/run_bert_benchmark.sh            # full run; rewrites the results in
#                                               # docs/encoder-benchmark.md
#   benchmarks/run_bert_benchmark.sh --quick    # MiniLM-L6 only, few runs; writes
#                                               # build-bench/bert-results/report.md
# Only a full run with the default models, shapes and threads, PyTorch
# included, rewrites docs/; any other run writes build-bench/bert-results/report.md.
#
# Options: --quick, --models minilm-l6,bert-base, --threads 1,2,
#          --shapes 1x16,1x128,32x128 (batch x sequence; each must be one that
#          make_models.py writes),
#          --rounds N (the least number of rounds in which ONNX Runtime and
#          funnel take turns, default 5, quick 2), --no-torch (skip PyTorch),
#          --no-build (use the existing build-bench),
#          --report-only (rewrite the report from the last run's raw results,
#          build-bench/bert-results/results.jsonl).
# Steps: installs onnxruntime-node into benchmarks/bert/node_modules if it is
# missing (npm ci --ignore-scripts: the CPU binding ships in the package; the
# install script would only fetch GPU binaries), builds bench_bert_encoder in
# Release in build-bench/, writes the models to build-bench/bert-models/ (kept
# between runs), runs every runtime in its own process per model, ONNX Runtime
# and funnel all loaded at once and taking turns burst by burst of calls
# (benchmarks/bert/interleave.py, so that a slow minute of a shared machine
# falls on all of them and does not decide a ratio), PyTorch after them,
# prints the tables and writes the report. Run it on a quiet machine: every
# figure is a wall-clock time.

set -euo pipefail
args="$*"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-bench"
models_dir="$build/bert-models"
results_dir="$build/bert-results"
python=/usr/bin/python3  # Debian's python, with python3-torch and python3-numpy

quick=0
models=""
threads="1,2"
shapes="1x16,1x128,32x128"
run_torch=1
do_build=1
report_only=0
rounds=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --models) models="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --shapes) shapes="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --no-torch) run_torch=0 ;;
    --no-build) do_build=0 ;;
    --report-only) report_only=1 ;;
    -h|--help) sed -n '3,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run_bert_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [[ $quick == 1 ]]; then
  models=${models:-minilm-l6}
  rounds=${rounds:-2}
  timing=(--warmup 1 --min-runs 3 --min-seconds 0.5 --max-runs 20)
  torch_timing=("${timing[@]}")
  burst_ms=200
  burst_calls=10
else
  models=${models:-minilm-l6,bert-base}
  rounds=${rounds:-5}
  # Each cell: one warm-up call beyond the untimed accuracy call, then at
  # least 7 timed calls and at least 3 s of them (at most 1,000) over at
  # least 5 turns of each runtime, at most 40 calls a turn (so a row of short
  # calls takes some 15-25 turns: its paired ratio is a median of many
  # rounds); PyTorch, far slower, runs on its own after them with at least
  # 3 s per cell.
  timing=(--warmup 1 --min-runs 7 --min-seconds 3 --max-runs 1000)
  burst_ms=200
  burst_calls=40
  torch_timing=(--warmup 1 --min-runs 7 --min-seconds 3 --max-runs 200)
fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "run_bert_benchmark.sh: --rounds wants a positive integer" >&2; exit 2; }
official=0
if [[ $quick == 0 && $models == minilm-l6,bert-base && $shapes == 1x16,1x128,32x128 &&
      $threads == 1,2 && $run_torch == 1 && $rounds == 5 ]]; then
  official=1
fi

step() { printf '\n== %s\n' "$*"; }
started=$(date +%s)
# The code the run measures (a --report-only redraw later must not stamp the
# checkout of its own time): the commit, and whether funnel had local changes
# (the page the report rewrites is not one).
commit=$(git -C "$root" rev-parse --short HEAD)
dirty=$(git -C "$root" status --porcelain --untracked-files=no -- . ':!docs/encoder-benchmark.md' | wc -l)
results="$results_dir/results.jsonl"
run_info="$results_dir/run-info.json"

if [[ $report_only == 0 ]]; then

step "ONNX Runtime (npm onnxruntime-node)"
if [[ ! -d "$root/benchmarks/bert/node_modules/onnxruntime-node" ]]; then
  (cd "$root/benchmarks/bert" && npm ci --ignore-scripts --no-audit --no-fund)
fi
(cd "$root/benchmarks/bert" &&
  node -e "const o=require('onnxruntime-node'); console.log('onnxruntime-node', o.env.versions.node, 'loads')")

if [[ $do_build == 1 ]]; then
  step "Release build of bench_bert_encoder in build-bench/"
  # Warnings are not errors here: the benchmark measures, CI enforces warnings
  # (and some compilers warn on code that others accept).
  generator=()
  [[ -f "$build/CMakeCache.txt" ]] || generator=(-G Ninja)
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DFUNNEL_BUILD_BENCHMARKS=ON -DFUNNEL_WERROR=OFF >/dev/null
  cmake --build "$build" --target bench_bert_encoder -j"$(nproc)"
fi
bench_funnel="$build/benchmarks/bench_bert_encoder"
[[ -x "$bench_funnel" ]] || { echo "missing $bench_funnel (build it, or drop --no-build)" >&2; exit 1; }

step "Models and inputs in $models_dir"
"$python" "$root/benchmarks/bert/make_models.py" --out "$models_dir" --models "$models"

mkdir -p "$results_dir"
rm -f "$results" "$run_info" "$results_dir"/ort_*.npy "$results_dir"/bursts.jsonl \
  "$results_dir"/reference-run.jsonl
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

common=(--models-dir "$models_dir" --out "$results" --ref-dir "$results_dir"
        --threads "$threads" --shapes "$shapes")
IFS=, read -r -a shape_list <<< "$shapes"
IFS=, read -r -a thread_list <<< "$threads"
# interleave.py's options from the timing options (the processes keep --warmup)
burst_opts=(--min-rounds "$rounds" --min-runs "${timing[3]}" --min-seconds "${timing[5]}"
            --max-runs "${timing[7]}" --burst-ms "$burst_ms" --burst-max-calls "$burst_calls")
q() { printf '%q ' "$@"; }
for model in ${models//,/ }; do
  # The opset 14 export's outputs are the reference for everyone's accuracy:
  # written first, by a run of its own (one call per shape, not timed), since
  # the interleaved processes below compute their accuracy concurrently.
  step "$model: reference outputs (ONNX Runtime fp32, opset 14)"
  node "$root/benchmarks/bert/bench_ort.js" --model "$model" --onnx model.onnx --write-ref 1 \
    --models-dir "$models_dir" --out "$results_dir/reference-run.jsonl" --ref-dir "$results_dir" \
    --threads "${thread_list[0]}" --shapes "$shapes" --warmup 0 --min-runs 1 --min-seconds 0 --max-runs 1 \
    > /dev/null
  step "$model: ONNX Runtime fp32 (opset 14; opset 12, fused attention) and funnel fp32, bf16, int8, taking turns"
  procs=(--proc "ort-o14" "$(q node "$root/benchmarks/bert/bench_ort.js" --model "$model" --onnx model.onnx \
                              "${common[@]}" --warmup "${timing[1]}" --serve 1)"
         --proc "ort-o12" "$(q node "$root/benchmarks/bert/bench_ort.js" --model "$model" \
                              --onnx model-opset12.onnx "${common[@]}" --warmup "${timing[1]}" --serve 1)")
  for compute in fp32 bf16 int8; do
    procs+=(--proc "funnel-$compute" "$(q "$bench_funnel" --model "$model" --compute "$compute" \
                                        "${common[@]}" --warmup "${timing[1]}" --serve 1)")
  done
  "$python" "$root/benchmarks/bert/interleave.py" --rows $(( ${#shape_list[@]} * ${#thread_list[@]} )) \
    "${burst_opts[@]}" --bursts-out "$results_dir/bursts.jsonl" --tag "$model" "${procs[@]}"
  if [[ $run_torch == 1 ]]; then
    # Each compute type funnel has, as PyTorch runs it (bench_torch.py's doc);
    # int8 in the eager model only (the nn fast path takes no quantized layers).
    for run in fp32:hf fp32:nn bf16:hf bf16:nn int8:hf; do
      step "$model: PyTorch ${run%%:*} (${run##*:})"
      "$python" -W ignore "$root/benchmarks/bert/bench_torch.py" --model "$model" \
        --dtype "${run%%:*}" --impl "${run##*:}" "${common[@]}" "${torch_timing[@]}"
    done
  fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
printf '{"quick": %s, "official": %s, "load_before": "%s", "load_after": "%s", "elapsed_s": %s, "timing": "%s", "torch_timing": "%s", "rounds": %s, "burst_ms": %s, "burst_calls": %s, "commit": "%s", "dirty": %s, "args": "%s"}\n' \
  "$quick" "$official" "$load_before" "$load_after" "$(( $(date +%s) - started ))" "${timing[*]}" "${torch_timing[*]}" "$rounds" "$burst_ms" "$burst_calls" "$commit" "$((dirty > 0))" "$args" > "$run_info"
fi  # report_only

step "Report"
[[ -f "$results" && -f "$run_info" ]] || { echo "no results in $results_dir" >&2; exit 1; }
# The report follows the kind of run that made the results.
if [[ $(sed -n 's/.*"official": \([01]\).*/\1/p' "$run_info") == 1 ]]; then
  report="$root/docs/encoder-benchmark.md"
else
  report="$results_dir/report.md"
fi
RESULTS="$results" BURSTS="$results_dir/bursts.jsonl" RUN_INFO="$run_info" REPORT="$report" ROOT="$root" "$python" - <<'PY'
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
from collections import defaultdict

env = os.environ
info = json.load(open(env["RUN_INFO"], encoding="utf-8"))
rows = [json.loads(line) for line in open(env["RESULTS"], encoding="utf-8")]
# One process per runtime (and variant) and model, each writing one line per
# row and one memory line: a second line for the same key would mean results
# of two runs mixed in one file.
speed = {}  # (model, b, s, t) -> {variant key: row}
memory = {}  # (model, runtime, variant) -> memory line
unsupported = []
for r in rows:
    key = f"{r['runtime']} {r['variant']}"
    if r.get("memory"):
        mk = (r["model"], r["runtime"], r["variant"])
        if mk in memory:
            raise SystemExit(f"{env['RESULTS']}: two memory lines for {mk}")
        memory[mk] = r
    elif r.get("unsupported"):
        if f"{r['model']}: funnel {r['variant']}" not in unsupported:
            unsupported.append(f"{r['model']}: funnel {r['variant']}")
    else:
        cell = speed.setdefault((r["model"], r["batch"], r["seq"], r["threads"]), {})
        if key in cell:
            raise SystemExit(f"{env['RESULTS']}: two lines for {key} at {r['model']} "
                             f"{r['batch']}x{r['seq']} t={r['threads']}")
        cell[key] = r
memory = list(memory.values())

# funnel / ONNX Runtime in each round of turns (interleave.py's bursts): the
# ratio of the two bursts' medians, against the faster export in that round.
# Bursts of one round are seconds apart, so the machine's drift moves both
# alike; a row's ratio to ONNX Runtime is the median of these paired ratios.
# (The tokens/s columns are each runtime's median over all its calls: a fast
# minute gives a runtime of short calls more calls, so their quotient leans
# towards whichever runtime had more calls in the fast minutes.)
round_ratios = {}  # (model, b, s, t) -> {"funnel fp32": [ratio per round], ...}
if os.path.exists(env["BURSTS"]):
    by_round = defaultdict(dict)
    for line in open(env["BURSTS"], encoding="utf-8"):
        x = json.loads(line)
        m = re.match(r"(\d+)x(\d+) t=(\d+)$", x["row"])
        key = (x["tag"], int(m[1]), int(m[2]), int(m[3]))
        by_round[key + (x["round"],)][x["label"]] = statistics.median(x["times_ms"])
    for (model, b, s_, t, rnd), med in sorted(by_round.items()):
        ort_ms = min((v for k, v in med.items() if k.startswith("ort-")), default=None)
        for label, ms in med.items():
            if ort_ms and label.startswith("funnel-"):
                variant = "funnel " + label[len("funnel-"):]
                round_ratios.setdefault((model, b, s_, t), {}).setdefault(variant, []).append(
                    ort_ms / ms)

MODEL_NAMES = {"minilm-l6": "MiniLM-L6 (6 x 384, 12 heads, FFN 1536)",
               "bert-base": "BERT-base (12 x 768, 12 heads, FFN 3072)"}
# target name, numerator, denominator, minimum ratio, accuracy field and bound
TARGETS = [
    ("fp32 >= 1.0x ORT", "funnel fp32", "ort fp32", 1.0, None, None),
    ("bf16 >= 1.6x ORT fp32", "funnel bf16", "ort fp32", 1.6, "mean_cosine", 0.999),
    ("int8 >= 2x ORT fp32", "funnel int8", "ort fp32", 2.0, "mean_cosine", 0.99),
    ("fp32 >= 2x PyTorch", "funnel fp32", "torch fp32", 2.0, None, None),
]
FP32_MAX_ABS = 1e-4
# Accuracy bounds of the reduced-precision compute types (mean cosine to ORT fp32).
COSINE_MIN = {"bf16": 0.999, "int8": 0.99}


def best(cell, prefix):
    """The fastest variant of a peer in this row: prefix "ort fp32" (two exports),
    "torch fp32" / "torch bf16" (two models) or "torch int8" (one)."""
    cands = [r for k, r in cell.items() if k.startswith(prefix + "-")]
    return min(cands, key=lambda r: r["median_ms"]) if cands else None


def peer(cell, name):
    return best(cell, name)


def tag(r):
    """o14 / o12 for the ONNX exports, hf / nn for the PyTorch models."""
    return {"opset14": "o14", "opset12": "o12"}.get(r["variant"].split("-")[1],
                                                    r["variant"].split("-")[1])


def tagged(r):
    return f"{fmt_tps(r)} ({tag(r)})" if r else "-"


def tagged_lat(r):
    return f"{fmt_lat(r)} ({tag(r)})" if r else "-"


def within_bounds(r, dtype):
    """Whether a run's accuracy meets its compute type's bound (fp32 always counts)."""
    return dtype == "fp32" or (r.get("mean_cosine") is not None
                               and r["mean_cosine"] >= COSINE_MIN[dtype])


def fastest(cell, runtime):
    """(row, compute type) of a runtime's fastest compute type within its accuracy bound."""
    cands = []
    for dtype in ("fp32", "bf16", "int8"):
        r = cell.get(f"funnel {dtype}") if runtime == "funnel" else best(cell, f"torch {dtype}")
        if r and within_bounds(r, dtype):
            cands.append((r, dtype))
    return min(cands, key=lambda c: c[0]["median_ms"]) if cands else (None, None)


def quotient(a, b):
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}" if a and b else "-"


def fmt_tps(r):
    return f"{r['tokens_per_s']:,.0f}" if r else "-"


def fmt_lat(r):
    return f"{r['median_ms']:.1f} / {r['p90_ms']:.1f}" if r else "-"


def verdict(cell, target, paired):
    _, num, den, need, acc_field, acc_min = target
    a, b = cell.get(num), peer(cell, den)
    if not a or not b:
        return None, "-"
    if den.startswith("ort") and paired.get(num):
        ratio = statistics.median(paired[num])  # taking turns: paired by round
    else:
        ratio = a["tokens_per_s"] / b["tokens_per_s"]
    ok = ratio >= need
    if acc_field and (a.get(acc_field) is None or a[acc_field] < acc_min):
        return False, f"{ratio:.2f} SHORT (accuracy {a.get(acc_field, float('nan')):.4f} < {acc_min})"
    return ok, f"{ratio:.2f} {'PASS' if ok else 'SHORT'}"


out = []
tally = defaultdict(lambda: [0, 0])
shorts = []
for model in [m for m in MODEL_NAMES if any(k[0] == m for k in speed)]:
    keys = sorted(k for k in speed if k[0] == model)
    out.append(f"### {MODEL_NAMES[model]}\n")
    out.append("Throughput in tokens/s (batch x sequence tokens / median latency) and "
               "funnel's ratio to each peer (PASS / SHORT against the target). Ratios to ONNX "
               "Runtime are paired: in each round of turns, the ratio of the two runtimes' "
               "burst medians (against the faster export), and the row's ratio is the median "
               "over the rounds; 'fp32 / ORT per round' gives their lowest and highest and "
               "the number of rounds. Ratios to PyTorch, which ran on its own, are the "
               "quotient of the tokens/s:\n")
    out.append("| batch x seq | threads | ORT fp32 | PyTorch fp32 | funnel fp32 | funnel bf16 "
               "| funnel int8 | fp32 / ORT | fp32 / ORT per round | bf16 / ORT | int8 / ORT "
               "| fp32 / PyTorch |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        cell = speed[k]
        paired = round_ratios.get(k, {})
        rr = paired.get("funnel fp32")
        spread = f"{min(rr):.2f}-{max(rr):.2f} ({len(rr)})" if rr else "-"
        verdicts = []
        for target in TARGETS:
            ok, txt = verdict(cell, target, paired)
            verdicts.append(txt)
            if ok is not None:
                tally[target[0]][0 if ok else 1] += 1
                if not ok:
                    shorts.append(f"{model} {k[1]}x{k[2]} t={k[3]}: {target[0]}: {txt}")
        out.append(f"| {k[1]} x {k[2]} | {k[3]} | {tagged(best(cell, 'ort fp32'))} | "
                   f"{tagged(best(cell, 'torch fp32'))} | "
                   f"{fmt_tps(cell.get('funnel fp32'))} | {fmt_tps(cell.get('funnel bf16'))} | "
                   f"{fmt_tps(cell.get('funnel int8'))} | {verdicts[0]} | {spread} | "
                   + " | ".join(verdicts[1:]) + " |")
    if any(k.startswith("torch ") for kk in keys for k in speed[kk]):
        out.append("\nfunnel against PyTorch at each compute type (tokens/s, and funnel's "
                   "tokens/s over PyTorch's; PyTorch bf16 is the model cast to bfloat16, int8 "
                   "dynamic quantization of its linear layers, see bench_torch.py), and the "
                   "fastest compute type of each within its accuracy bound:\n")
        out.append("| batch x seq | threads | PyTorch fp32 | PyTorch bf16 | PyTorch int8 "
                   "| fp32 / PyTorch fp32 | bf16 / PyTorch bf16 | int8 / PyTorch int8 "
                   "| fastest funnel / fastest PyTorch |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for k in keys:
            cell = speed[k]
            torch_by = {d: best(cell, f"torch {d}") for d in ("fp32", "bf16", "int8")}
            ratios = [quotient(cell.get(f"funnel {d}"), torch_by[d]) for d in torch_by]
            (fr, fd), (tr, td) = fastest(cell, "funnel"), fastest(cell, "torch")
            top = f"{quotient(fr, tr)} ({fd} / {td})" if fr and tr else "-"
            out.append(f"| {k[1]} x {k[2]} | {k[3]} | "
                       + " | ".join(tagged(torch_by[d]) for d in torch_by) + " | "
                       + " | ".join(ratios) + f" | {top} |")
    out.append("\nLatency per call in ms, median / p90 over all timed calls (ONNX Runtime and "
               "funnel loaded together and taking turns in bursts of calls, at least "
               f"{info.get('rounds', 1)} turns each; PyTorch on its own after them):\n")
    out.append("| batch x seq | threads | ORT opset 14 | ORT opset 12 | PyTorch HF eager "
               "| PyTorch nn fast path | PyTorch bf16 | PyTorch int8 | funnel fp32 | funnel bf16 "
               "| funnel int8 |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        cell = speed[k]
        out.append(f"| {k[1]} x {k[2]} | {k[3]} | " + " | ".join(
            [fmt_lat(cell.get(v)) for v in ["ort fp32-opset14", "ort fp32-opset12",
                                            "torch fp32-hf", "torch fp32-nn"]]
            + [tagged_lat(best(cell, "torch bf16")), tagged_lat(best(cell, "torch int8"))]
            + [fmt_lat(cell.get(v)) for v in ["funnel fp32", "funnel bf16", "funnel int8"]])
                   + " |")
    out.append("\nAccuracy of the last hidden states against ONNX Runtime fp32 (opset 14) on the same "
               f"input (fp32: max |diff|, bound {FP32_MAX_ABS:g}; bf16 / int8: mean cosine over "
               "tokens, bounds 0.999 / 0.99):\n")
    out.append("| batch x seq | ORT opset 12 max abs diff | PyTorch fp32 max abs diff "
               "| funnel fp32 max abs diff | PyTorch bf16 mean cosine | funnel bf16 mean cosine "
               "| PyTorch int8 mean cosine | funnel int8 mean cosine |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        if k[3] != min(kk[3] for kk in keys):
            continue
        cell = speed[k]
        tb = cell.get("torch fp32-hf") or best(cell, "torch fp32")
        o12 = cell.get("ort fp32-opset12")
        f32, b16, i8 = cell.get("funnel fp32"), cell.get("funnel bf16"), cell.get("funnel int8")

        def acc(r, field, fmt, bound, higher):
            if not r or r.get(field) is None:
                return "-"
            ok = r[field] >= bound if higher else r[field] <= bound
            return format(r[field], fmt) + ("" if ok else " (out of bound)")

        out.append(f"| {k[1]} x {k[2]} | {acc(o12, 'max_abs_diff', '.2e', FP32_MAX_ABS, False)} | "
                   f"{acc(tb, 'max_abs_diff', '.2e', FP32_MAX_ABS, False)} | "
                   f"{acc(f32, 'max_abs_diff', '.2e', FP32_MAX_ABS, False)} | "
                   f"{acc(cell.get('torch bf16-hf'), 'mean_cosine', '.6f', 0.999, True)} | "
                   f"{acc(b16, 'mean_cosine', '.6f', 0.999, True)} | "
                   f"{acc(cell.get('torch int8-hf'), 'mean_cosine', '.6f', 0.99, True)} | "
                   f"{acc(i8, 'mean_cosine', '.6f', 0.99, True)} |")
    out.append("\nPeak memory of each runtime's process (MiB; VmHWM over all rows of the model; "
               "'start' is the process after loading the runtime, before the model):\n")
    out.append("| runtime | start RSS | peak RSS | peak - start | notes |")
    out.append("|---|--:|--:|--:|---|")
    for m in memory:
        if m["model"] != model:
            continue
        note = ""
        if m["runtime"] == "funnel":
            note = (f"resident at the end: {m['rss_anon_mib']:.0f} anonymous + "
                    f"{m['rss_file_mib']:.0f} file-backed (mapped weights, binary)")
        name = {"ort": "ONNX Runtime", "torch": "PyTorch", "funnel": "funnel"}[m["runtime"]]
        out.append(f"| {name} {m['variant']} | {m['start_rss_mib']:.0f} | {m['peak_rss_mib']:.0f} "
                   f"| {m['peak_rss_mib'] - m['start_rss_mib']:.0f} | {note} |")
    out.append("")

summary = ["Targets (rows passing / rows measured):", ""]
for target in TARGETS:
    p, s = tally[target[0]]
    if p + s:
        summary.append(f"- {target[0]}: {p} / {p + s} PASS" + ("" if s == 0 else f", {s} SHORT"))
if unsupported:
    summary.append(f"- not supported by this CPU (no rows): {', '.join(unsupported)}")
if shorts:
    summary += ["", "Rows short of a target:", ""] + [f"- {s}" for s in shorts]

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=env["ROOT"],
                              check=False).stdout.strip()
    except OSError:
        return "?"

cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
flags = open("/proc/cpuinfo", encoding="ascii").read()
isa = ", ".join(f for f in ["avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
                if re.search(rf"\b{f}\b", flags))
ort_ver = next((m.get("version") for m in memory if m["runtime"] == "ort"), "?")
torch_ver = next((m.get("version") for m in memory if m["runtime"] == "torch"), "not run")
torch_blas = next((m.get("blas") for m in memory if m["runtime"] == "torch" and m.get("blas")), None)
# The measured code, as the run recorded it (runs before 2026-11-28 did not:
# then the checkout of the redraw).
commit = info.get("commit") or sh("git rev-parse --short HEAD")
dirty = info["dirty"] if "dirty" in info else bool(
    sh("git status --porcelain --untracked-files=no -- . ':!docs/encoder-benchmark.md'"))
env_lines = [
    # the end of the run (run-info.json is written then), also for --report-only
    f"Measured {datetime.datetime.fromtimestamp(os.path.getmtime(env['RUN_INFO'])).strftime('%Y-%m-%d %H:%M')} by "
    f"`benchmarks/run_bert_benchmark.sh{'' if info['official'] else ' ' + info['args']}` "
    f"({info['elapsed_s'] // 60} min {info['elapsed_s'] % 60} s), funnel at "
    f"{commit}{' (with local changes)' if dirty else ''}.",
    f"CPU: {cpu}, {os.cpu_count()} logical cores ({isa}); {platform.system()} "
    f"{platform.release()}. Load average (1/5/15 min) before the runs {info['load_before']}, "
    f"after {info['load_after']}.",
    f"ONNX Runtime {ort_ver} (onnxruntime-node, CPU EP); PyTorch {torch_ver} (Debian"
    f"{', GEMMs in ' + torch_blas if torch_blas else ''}); "
    f"{sh('c++ --version | head -1')}; timing options `{info['timing']}`, ONNX Runtime "
    f"and funnel taking turns in bursts of at least {info.get('burst_ms', 200)} ms and at most "
    f"{info.get('burst_calls', 40)} "
    f"calls (`benchmarks/bert/interleave.py`, at least {info.get('rounds', 1)} rounds); "
    f"PyTorch on its own after them, "
    f"`{info.get('torch_timing', info['timing'])}`.",
]
text = "\n".join(env_lines + [""] + summary + [""] + out)
print(text)

marker_begin, marker_end = "<!-- results: begin -->", "<!-- results: end -->"
report = env["REPORT"]
block = f"{marker_begin}\n{text}\n{marker_end}"
if info["official"]:
    doc = open(report, encoding="utf-8").read()
    if marker_begin in doc and marker_end in doc:
        doc = doc[:doc.index(marker_begin)] + block + doc[doc.index(marker_end) + len(marker_end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
else:
    kind = "quick" if info["quick"] else "partial"
    doc = f"# BERT encoder benchmark ({kind} run; not in docs/)\n\n" + block + "\n"
with open(report + ".tmp", "w", encoding="utf-8") as f:
    f.write(doc)
os.replace(report + ".tmp", report)
print(f"\nwritten: {report}")
PY
