#!/usr/bin/env bash
# The funnel on real purchases in one command: builds funnel-retail-convert and
# bench_online_retail in Release (build-retail-rel/), converts the UCI Online
# Retail transactions into build-retail-rel/data, runs the benchmark and
# writes docs/online-retail-benchmark.md (table, command, date, machine).
#
#   benchmarks/run_online_retail_benchmark.sh              # the documented run
#   benchmarks/run_online_retail_benchmark.sh --no-docs    # results in BUILD only
#   benchmarks/run_online_retail_benchmark.sh -- --fine none --coarse-k 500
#
# Options:
#   --no-docs     do not write docs/online-retail-benchmark.md
#   -- ARGS...    passed to bench_online_retail (see its --help)
# Environment: FUNNEL_RETAIL_BUILD (build-retail-rel), FUNNEL_RETAIL_CSV
#              (../shared/data/online-retail/online-retail.csv.gz),
#              FUNNEL_RETAIL_JOBS (parallel build jobs, 2).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
build=${FUNNEL_RETAIL_BUILD:-build-retail-rel}
csv=${FUNNEL_RETAIL_CSV:-$root/../shared/data/online-retail/online-retail.csv.gz}
jobs=${FUNNEL_RETAIL_JOBS:-2}
docs=1
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-docs) docs=0 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_online_retail_benchmark.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for tool in cmake ninja gzip; do
  command -v "$tool" >/dev/null || {
    echo "run_online_retail_benchmark.sh: $tool is required" >&2
    exit 1
  }
done
[[ -f "$csv" ]] || {
  echo "run_online_retail_benchmark.sh: the data '$csv' does not exist (set FUNNEL_RETAIL_CSV)" >&2
  exit 1
}

started=$(date +%s)
echo "== build ($build, Release)"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUNNEL_BUILD_BENCHMARKS=ON \
    -DFUNNEL_BUILD_TESTS=OFF -DFUNNEL_BUILD_EXAMPLES=OFF >/dev/null
fi
cmake --build "$build" --target funnel-retail-convert bench_online_retail -j "$jobs"

echo "== convert $csv"
data=$build/data
mkdir -p "$data"
gzip -dc "$csv" | "$build/tools/online_retail/funnel-retail-convert" --out "$data" |
  tee "$build/online-retail-convert.txt"

echo "== bench_online_retail"
results=$build/online-retail-results.txt
bench_args=(--data "$data" "${extra[@]}")
"$build/benchmarks/bench_online_retail" "${bench_args[@]}" | tee "$results"
elapsed=$(($(date +%s) - started))
echo "== done in ${elapsed} s"
[[ "$docs" == 1 ]] || exit 0

# The machine, for the record.
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
cores=$(nproc)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src include 2>/dev/null; then
  commit="$commit (library sources with uncommitted changes)"
fi
doc=docs/online-retail-benchmark.md
{
  cat <<'EOF'
# The funnel on real purchases: UCI Online Retail

This benchmark runs funnel's whole recommendation funnel on the real transactions of
a UK online gift shop (UCI "Online Retail", 2010-12-01 to 2011-12-09, CC BY 4.0,
doi:10.24432/C5BW33; Chen, Sain and Guo 2012) and compares it with the two baselines
every shop has: what sells most, and what is bought together. The data has
purchases only: no impressions, no clicks, no dwell time, no categories, no brands.

## Data

`funnel-retail-convert` (tools/online_retail/README.md has every rule) turns the CSV
into funnel's catalog / users / events files: one item per product stock code
(title = its most frequent description, price = median unit price, category = a
word of the title: the data has no category column), one user per CustomerID
(location = country), one `purchase` event per (invoice, customer, item) at the
invoice time, cancellations subtracted from the customer's earlier purchases;
rows without a customer, postage/fee/voucher codes and zero prices dropped. Its
summary for this run:

```
EOF
  cat "$build/online-retail-convert.txt"
  cat <<'EOF'
```

## Protocol

- **Split by time.** Purchases before the cut (default 2011-10-09 00:00 UTC, the
  last two months as test) train everything: the fine ranker, the popularity
  counts, the co-purchase counts. Purchases from the cut on are the test period.
- **Who is asked.** Every customer with a purchase before the cut and one in the
  test period, once, at the cut, with the whole history before the cut.
- **Two variants.** *all*: relevant = the distinct items the customer bought in the
  test period, and items bought before may be recommended (repeat purchases are
  common in this shop: the benchmark prints their share among the test
  customers' test purchases below). *new*: relevant = the test items the customer had not bought before
  the cut; items bought before are never recommended (the pipeline's
  `exclude_purchased`, a deny-list filter for the baselines); customers without
  such items are left out of this variant.
- **Metrics** per customer, averaged: recall@50, NDCG@10 and recall@10 (binary
  relevance, recall's denominator min(k, relevant); funnel/metrics.hpp).
- **Coarse stage.** `HashingEncoder` vectors of the titles, `ExactCoarseRanker`
  (inner product); the query is `Pipeline::user_vectors` (multi-interest: the
  history is clustered into up to 4 interests, recency half-life 30 days, merged
  round robin). The "coarse stage alone" row is its own top 50.
- **Funnel.** `Pipeline::recommend`: the coarse stage's candidates ->
  `DeepFineRanker` -> fusion on its single task -> top 50. The fine ranker is
  trained on the purchases before the cut with `examples.sampled_negatives` (the
  log has no impressions: each purchase is a positive impression and that many
  uniformly drawn catalogue items the customer never bought are negative
  impressions at the same time), one task `{"name": "purchase", "kind": "binary",
  "label": "purchase"}`, fusion weight purchase = 1; features: location,
  log history length; the item's category and price band; coarse score, log price,
  log popularity; target attention over the last history purchases.
- **Popularity**: items by purchase events in the training period.
  **Co-purchase** (item-to-item): baskets = a customer's purchases with one
  timestamp (one invoice); an item scores the sum, over the customer's distinct
  past items, of the number of training baskets that hold both; ties and unscored
  items in popularity order. **Repeat** (a reference for the *all* variant): the
  customer's own past items by purchase count (then recency), then popularity.

## Results

EOF
  echo '```'
  sed -n '1,/^$/p' "$results" | sed '/^$/d'
  echo '```'
  echo
  sed -n '/^| method/,/^$/p' "$results" | sed '/^$/d'
  echo
  echo '```'
  sed -n '/^funnel \/ baseline/,$p' "$results"
  echo '```'
  cat <<EOF

Command: \`benchmarks/run_online_retail_benchmark.sh${extra[*]:+ -- ${extra[*]}}\`
(bench_online_retail ${bench_args[*]}), run on $(date -u +%Y-%m-%d) at commit $commit,
in ${elapsed} s including the build and the conversion.
Machine: ${cpu:-unknown CPU}, ${cores} cores, ${mem} of memory (shared with other work:
the times are indicative). Training and evaluation are deterministic for a given
seed and thread count: a rerun gives the same table.
EOF
  cat <<'EOF'

## Reading the results

(Written for the default settings; the table above is the authority.)

- **The fine stage earns its place.** The funnel row beats the coarse stage alone
  on every column: the same candidates, re-ranked by `DeepFineRanker`, put more of
  the customer's next purchases in the top 10 and top 50.
- **Against popularity** the funnel wins clearly in both variants.
- **Against co-purchase** it wins clearly when repeat purchases count (*all*) and
  is on par for items new to the customer (*new*): item-to-item co-purchase is a
  collaborative signal that the funnel does not have (its coarse stage is text
  similarity, and the fine ranker's features are the customer's location and
  history, the item's text vector, category, price and popularity).
- **Repeat purchases dominate this shop.** Simply re-offering the customer's own
  most-bought items ("repeat") beats every other method in the *all* variant,
  the funnel included: the funnel re-ranks text-similar candidates and has no
  "bought this n times" feature. A host serving a re-ordering shop should blend
  a "buy again" list in, or recommend with `exclude_purchased` and show past
  purchases separately.
- **The coarse stage bounds the funnel**: the "candidate recall" line is the
  share of relevant items anywhere in the coarse stage's candidates; a larger
  `--coarse-k` raises it (500: about +0.06 in *all*, +0.07 in *new*) at the
  cost of fine-stage time.

Settings were chosen on this split (so the numbers are optimistic by the usual
amount of tuning on the test period): the HashingEncoder dimension (256 over
128), four interests and a 30-day half-life for the coarse stage (coarse
recall@50 in *all* 0.18 with one interest, 7 days and 128 dimensions; 0.24 with
the defaults), and one epoch with 2 sampled negatives for the fine ranker (a run
with `--epochs 2 --item-id on`, the stock code as an extra item feature, made
before commit 37e8e77 changed the training coarse score, reached a higher
validation AUC, 0.801 against 0.794, but no better ranking: every column within
0.007 of the table's, at about twice the training time).

Ideas not tried: co-purchase counts with the history as a fine-ranker feature,
harder negatives (drawn from the coarse stage's candidates instead of the whole
catalogue), a "times this customer bought this item" feature for the *all*
variant.
EOF
} >"$doc"
echo "wrote $doc"
