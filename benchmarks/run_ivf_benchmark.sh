#!/usr/bin/env bash
# The coarse-ranking benchmark in one command: builds bench_ivf_search in
# Release (build-bench/), prepares the data, runs funnel's IvfCoarseRanker,
# FAISS IndexIVFFlat and hnswlib on Fashion-MNIST, the generated clustered
# set and the generated catalogue, draws the recall-QPS curves with gnuplot
# and writes docs/coarse-benchmark.md (+ .csv, docs/img/*.png).
#
#   benchmarks/run_ivf_benchmark.sh             # full run (the documented one)
#   benchmarks/run_ivf_benchmark.sh --quick     # 1/20 of the data, a few minutes
#
# Options:
#   --quick                 --scale 0.05, 100 single queries, shorter sweeps, no FAISS
#                           k-means timing; results go to build-bench/ivf-results only
#                           (docs/ untouched unless --docs)
#   --scale X               data size factor (1 = full)
#   --datasets a,b,c        subset of fashion-mnist,clustered,catalog
#   --runs N                timed repetitions per setting, best kept (full: 2, quick: 1)
#   --docs | --no-docs      write docs/ (default: full runs yes, quick runs no)
#   -- ARGS...              passed to every bench_ivf_search call
# Environment: FUNNEL_BENCH_BUILD (build-bench), FUNNEL_BENCH_DATA (BUILD/data),
#              FASHION_MNIST_DIR (/usr/share/datasets/fashion-mnist).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
build=${FUNNEL_BENCH_BUILD:-build-bench}
data=${FUNNEL_BENCH_DATA:-$build/data}
fashion_src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
out=$build/ivf-results

scale=1
runs=2
single_nq=1000
faiss_train=1
docs=""
datasets="fashion-mnist,clustered,catalog"
extra=()
sweep=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) scale=0.05; runs=1; single_nq=100; faiss_train=0; docs=${docs:-0}
             sweep=(--nprobe 1,2,4,8,16,32,64 --ef 10,20,40,80,200) ;;
    --scale) scale=$2; shift ;;
    --datasets) datasets=$2; shift ;;
    --runs) runs=$2; shift ;;
    --docs) docs=1 ;;
    --no-docs) docs=0 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run_ivf_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
docs=${docs:-1}

for tool in cmake ninja gnuplot gzip; do
  command -v "$tool" >/dev/null || { echo "run_ivf_benchmark.sh: $tool is required" >&2; exit 1; }
done

started=$(date +%s)
echo "== building bench_ivf_search (Release, $build)"
# Warnings are not errors here: a measuring build should not fail on a new
# compiler warning elsewhere; the CI builds enforce -Werror.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUNNEL_BUILD_BENCHMARKS=ON \
  -DFUNNEL_BUILD_TESTS=OFF -DFUNNEL_BUILD_EXAMPLES=OFF -DFUNNEL_WERROR=OFF >/dev/null
cmake --build "$build" --target bench_ivf_search
bench=$build/benchmarks/bench_ivf_search

mkdir -p "$data" "$out"
if [[ ,$datasets, == *,fashion-mnist,* ]]; then
  mkdir -p "$data/fashion-mnist"
  for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
    if [[ ! -s $data/fashion-mnist/$f ]]; then
      [[ -f $fashion_src/$f.gz ]] || {
        echo "run_ivf_benchmark.sh: $fashion_src/$f.gz missing (Debian package dataset-fashion-mnist)" >&2
        exit 1
      }
      gzip -dc "$fashion_src/$f.gz" >"$data/fashion-mnist/$f.tmp" && mv "$data/fashion-mnist/$f.tmp" "$data/fashion-mnist/$f"
    fi
  done
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
IFS=, read -r -a sets <<<"$datasets"
for set in "${sets[@]}"; do
  echo "== $set"
  t0=$(date +%s)
  "$bench" --dataset "$set" --cache "$data" --out "$out" --scale "$scale" --runs "$runs" \
    --single-nq "$single_nq" --time-faiss-train "$faiss_train" "${sweep[@]}" "${extra[@]}" |
    tee "$out/$set.log"
  echo "   ($set took $(( $(date +%s) - t0 )) s)"
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

img=$out
[[ $docs == 1 ]] && img=docs/img
mkdir -p "$img"
declare -A titles=(
  [fashion-mnist]="Fashion-MNIST (784-d, L2)"
  [clustered]="clustered (128-d, L2, generated)"
  [catalog]="catalogue titles (HashingEncoder 256-d, inner product)"
)
for set in "${sets[@]}"; do
  gnuplot -e "datafile='$out/$set.dat'; outfile='$img/ivf-recall-qps-$set.png'; plottitle='${titles[$set]}: recall@10 vs QPS, 2 threads'" \
    benchmarks/plot_recall_qps.gp
done

elapsed=$(( $(date +%s) - started ))
report=$out/coarse-benchmark.md
csv=$out/coarse-benchmark.csv
head -n1 "$out/${sets[0]}.csv" >"$csv"
for set in "${sets[@]}"; do tail -n +2 "$out/$set.csv" >>"$csv"; done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa="no AVX-512"
[[ $flags == *avx512f* ]] && isa="AVX-512 (F, BW, VL$([[ $flags == *avx512_vnni* ]] && echo ", VNNI")$([[ $flags == *avx512_bf16* ]] && echo ", BF16"))"
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
gcc_version=$(c++ --version | head -n1)
faiss_version=$(dpkg-query -W -f '${Version}' libfaiss-dev 2>/dev/null || echo unknown)
hnsw_version=$(dpkg-query -W -f '${Version}' libhnswlib-dev 2>/dev/null || echo unknown)
blas_version=$(dpkg-query -W -f '${Version}' libopenblas0-pthread 2>/dev/null || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain -- src include 2>/dev/null) ]] && commit="$commit (with uncommitted changes in src/ or include/)"
command="benchmarks/run_ivf_benchmark.sh"
[[ $scale != 1 ]] && command="$command --scale $scale"
[[ $datasets != "fashion-mnist,clustered,catalog" ]] && command="$command --datasets $datasets"
[[ ${#extra[@]} -gt 0 ]] && command="$command -- ${extra[*]}"

{
  cat <<EOF
# Coarse ranking: funnel's IVF against FAISS IVF-Flat and hnswlib

This file is written by \`benchmarks/run_ivf_benchmark.sh\`; do not edit it by
hand, rerun the script. It measures issue 4's "Speed and quality" targets:
funnel's \`IvfCoarseRanker\` (IVF-Flat and IVF-SQ8 lists) against FAISS's
\`IndexIVFFlat\` and hnswlib on the same data in the same process.

Reproduce: \`$command\` (took $((elapsed / 60)) min $((elapsed % 60)) s here).

Machine: $cpu, $(nproc) cores, $isa, $mem; load average $load_start at the
start and $load_end at the end (1, 5, 15 min). $gcc_version, Release build;
FAISS $faiss_version (Debian, generic build without AVX-512 code) with OpenBLAS
$blas_version; hnswlib $hnsw_version (header-only, compiled with -march=native
in the benchmark so that it gets its AVX-512 distance code); funnel at commit
$commit. Scale $scale; best of $runs timed run(s) per setting.

## How it is measured

- **Same lists.** The IVF centroids are trained once (funnel's
  \`IvfCoarseRanker::train\`, k-means, 64 training vectors per list) and the
  same centroids are loaded into FAISS's quantizer and into funnel's SQ8 index
  (\`IvfCoarseRanker::with_centroids\`), so every IVF index has the same lists
  and the same nprobe probes the same lists. funnel IVF-Flat and FAISS
  therefore return the same neighbours (the log prints the share of equal ids
  per nprobe).
- **Recall@10** against exact search (funnel's \`ExactCoarseRanker\`, cached as
  .npy next to the data), over all queries of the batched run. A result counts
  when it is one of the exact ten, or when its exact distance ties with the
  tenth (within 1e-5 relative).
- **Threads: 2 for everybody.** funnel: \`config.threads = 2\`. FAISS:
  \`omp_set_num_threads(2)\` and \`openblas_set_num_threads(2)\` in the benchmark
  process (the library never changes them). hnswlib: batched queries are
  spread over 2 std::threads, as its Python binding's ParallelFor does; its
  index is built with 2 threads the same way.
- **QPS 1-query**: the first 1,000 queries (100 with --quick), one search call
  each. funnel may spread one query's lists over its 2 threads; FAISS is
  measured with parallel_mode 0 (one thread per query) and 1 (the query's
  lists over the OpenMP threads) and the faster is reported; hnswlib runs a
  query on one thread, as a service calls it (a graph search does not split).
- **QPS batched**: all queries in calls of 1,000 queries. funnel's default
  batch mode groups the queries by list and scores each list against its
  queries with one GEMM.
- **x FAISS**: the index's QPS divided by FAISS IVF-Flat's QPS at the same
  recall, interpolated on FAISS's Pareto curve (log QPS linear in recall);
  "—" where FAISS does not cover that recall.
- **Build s**: funnel IVF-Flat includes training the shared centroids; FAISS
  and funnel SQ8 get them and count adding the vectors (SQ8 also trains its
  ranges); the log also times FAISS's own k-means on the same sample for
  comparison. hnswlib: inserting every vector with 2 threads.
- **Memory MB**: funnel's \`memory_bytes()\` (codes, ids, centroids, id map);
  FAISS: its inverted lists' codes and ids plus the centroids; hnswlib: its
  own structures sized from its fields (level-0 block with links, vector and
  label per element, upper-level links, levels, per-element locks, label map),
  not an RSS delta.
- **Targets** (issue 4, at recall@10 >= 0.95, each index at its fastest
  setting that reaches 0.95): single-query QPS >= 2x FAISS IVF-Flat; batched
  QPS >= 3x FAISS IVF-Flat and >= hnswlib; SQ8 lists <= 0.3x the memory of
  fp32 lists (whole index compared) with a recall loss <= 0.01 at every nprobe
  where IVF-Flat reaches 0.95.
- Timings on a shared machine are noisy; compare within a table, and rerun
  when the load average above is not near zero.

## The clustered set and its calibration

The issue asks for a set hard enough that FAISS IVF4096,Flat needs nprobe >= 32
to reach recall@10 = 0.95 (well-separated clusters reach 1.0 at nprobe 4). The
generator (\`bench::make_clustered\`) draws a mixture of 16,384 Gaussian clusters
(4x the lists) whose within-cluster spread equals the spread of the centres,
so they overlap, in a low-dimensional latent space, maps it to 128 dimensions
with a random linear map and adds isotropic noise (0.1). The latent dimension
sets the difficulty. Calibration runs (bench_ivf_search --methods
faiss-ivf-flat, 2,000 queries, 64 training vectors per list; FAISS's own
k-means at reduced scale, funnel's centroids at full scale), recall@10 of
FAISS IVF-Flat:

| vectors | lists | latent dim | nprobe 8 | 16 | 24 | 32 | 48 | 64 |
|--:|--:|--:|--:|--:|--:|--:|--:|--:|
| 250k | 1024 | 10 | 0.830 | 0.946 | | 0.991 | 0.999 | 1.000 |
| 250k | 1024 | 12 | 0.744 | 0.887 | | 0.972 | 0.991 | 0.997 |
| 250k | 1024 | 14 | 0.680 | 0.835 | | 0.943 | 0.977 | 0.989 |
| 250k | 1024 | 16 | 0.617 | 0.775 | | 0.905 | 0.954 | 0.975 |
| 500k | 2048 | 10 | | 0.929 | 0.972 | 0.987 | 0.997 | 0.999 |
| 500k | 2048 | 12 | | 0.862 | 0.926 | 0.958 | 0.984 | 0.993 |
| **1M** | **4096** | **12** | 0.695 | 0.845 | 0.911 | 0.947 | 0.978 | 0.990 |

At a constant number of vectors per list, recall at a fixed nprobe drops as
the set grows (about 0.014 at nprobe 32 per doubling for latent dimension 12),
so the calibration was extrapolated from 250k and 500k and then checked once
at full scale: with latent dimension 12 (the default), FAISS IVF4096,Flat on
1M vectors reaches recall@10 0.947 at nprobe 32 and 0.978 at nprobe 48, so it
needs nprobe > 32 for 0.95 (the issue asks for >= 32). For contrast, the same
generator with a within-cluster spread of 0.5 instead of 1 (separated
clusters) and latent dimension 8 reaches 0.97 at nprobe 8 already (50k
vectors, 205 lists). The quick run (--scale 0.05: 50k vectors, 256 lists) is
therefore easier than the full one. The "first reaches" line of the
clustered section below repeats the check on every run.

## Targets at a glance

EOF
  for set in "${sets[@]}"; do
    echo "**$set**"
    echo
    grep -E '^- (PASS|SHORT)' "$out/$set.md" || echo "- (no target lines: a method was left out)"
    echo
  done
  for set in "${sets[@]}"; do
    cat "$out/$set.md"
    echo "![recall-QPS curves, $set]($( [[ $docs == 1 ]] && echo "img" || echo "." )/ivf-recall-qps-$set.png)"
    echo
  done
  echo "All rows: [coarse-benchmark.csv](coarse-benchmark.csv)."
} >"$report"

if [[ $docs == 1 ]]; then
  cp "$report" docs/coarse-benchmark.md
  cp "$csv" docs/coarse-benchmark.csv
  echo "== wrote docs/coarse-benchmark.md, docs/coarse-benchmark.csv, docs/img/ivf-recall-qps-*.png"
else
  echo "== wrote $report, $csv and the curves in $out (docs/ untouched)"
fi
echo "== total $((elapsed / 60)) min $((elapsed % 60)) s"
