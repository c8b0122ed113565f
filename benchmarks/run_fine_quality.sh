#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Quality study of the deep multi-task fine ranker (issue 5), one command:
#
#   benchmarks/run_fine_quality.sh            # full study, writes docs/fine-ranker-quality.md
#   SEEDS="1" RHOS="0.3" benchmarks/run_fine_quality.sh   # a quicker partial run
#
# For every seed s and task correlation rho it generates a shop
# (funnel-gen-shop --seed s --task-correlation rho), holds out its last
# HOLDOUT_DAYS days by time, and trains on the rest:
#   * funnel's own trainer, MMoE body     (funnel train --body mmoe --export-examples X)
#   * the PyTorch trainer on the same exported examples and hyperparameters
#     (tools/deep_ranker/train_torch.py X), only for the rho values in TORCH_RHOS
#   * funnel's own trainer, shared-bottom body (funnel train --body shared_bottom)
#   * the first fine ranker               (funnel train --ranker logistic)
# then evaluates every model directory with `funnel eval --json` on the same
# held-out period, and writes the tables and the PASS/SHORT verdicts of the
# three claims to docs/fine-ranker-quality.md (the method is described there).
#
# Environment (defaults in brackets):
#   BUILD [build-quality]  build directory (Release; configured if missing)
#   WORK  [$BUILD/fine-quality]  scratch space (shops, models, logs; ~0.5 GB at peak)
#   SEEDS ["1 2 3"]  shop and training seeds (one replicate per seed)
#   RHOS  ["0.3 0 -0.5"]  --task-correlation values; TORCH_RHOS ["0.3"] get the PyTorch run
#                 (TORCH_RHOS="" for none)
#   ITEMS [3000] USERS [8000] DAYS [30] HOLDOUT_DAYS [6]
#   THREADS [2]  trainer threads (funnel and torch)
#   REFERENCE [0]  1: also train funnel's MMoE on every unclicked impression
#                  (negative_keep 1) on the TORCH_RHOS shops, as a reference row
#   NICE ["nice -n 19"]  prefix of every heavy command
#   REPORT [docs/fine-ranker-quality.md for a run with every default above, else $WORK/report.md]
#   REPORT_ONLY  set: rewrite the report from an earlier run's $WORK, train nothing
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build-quality}
SEEDS=${SEEDS:-"1 2 3"}
RHOS=${RHOS:-"0.3 0 -0.5"}
TORCH_RHOS=${TORCH_RHOS-"0.3"}
ITEMS=${ITEMS:-3000}
USERS=${USERS:-8000}
DAYS=${DAYS:-30}
HOLDOUT_DAYS=${HOLDOUT_DAYS:-6}
THREADS=${THREADS:-2}
REFERENCE=${REFERENCE:-0}
WORK=${WORK:-$BUILD/fine-quality}
read -ra NICE_CMD <<<"${NICE-nice -n 19}"
# Only a run with every default rewrites the page in docs/.
if [[ -z ${REPORT:-} ]]; then
  if [[ "$SEEDS|$RHOS|$TORCH_RHOS|$ITEMS|$USERS|$DAYS|$HOLDOUT_DAYS|$THREADS|$REFERENCE" == \
    "1 2 3|0.3 0 -0.5|0.3|3000|8000|30|6|2|0" ]]; then
    REPORT=docs/fine-ranker-quality.md
  else
    REPORT=$WORK/report.md
  fi
fi
PY=/usr/bin/python3  # Debian's python: torch 1.13 and numpy
START_TS=1767225600  # funnel-gen-shop's default first day (2026-01-01 UTC)
UNTIL=$((START_TS + (DAYS - HOLDOUT_DAYS) * 86400))

# The study's network and training settings, identical for both trainers.
# A network smaller than the library's default and a quarter of the
# unclicked impressions keep a full run near 40 minutes on 2 cores (most of
# it the PyTorch trainer); every deep model (both trainers, both bodies)
# gets exactly these settings. 8,000 users, not fewer: see SHOP_SIZE_NOTE.
HASH_DIM=64
NEGATIVE_KEEP=0.25
OPTIMIZER=adam
LR=0.001
WEIGHT_DECAY=0.00001
BATCH=512
MAX_EPOCHS=20
PATIENCE=3

FUNNEL=$BUILD/tools/funnel
GEN=$BUILD/tools/funnel-gen-shop

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Runs a command, its output to a log file; on failure shows the log's tail.
# Wall and CPU seconds (user + system, children included) go to
# $WORK/times.tsv: on a shared machine CPU time / THREADS is the better guide
# to what the step costs on idle cores.
step() {
  local label=$1 logfile=$2
  shift 2
  if ! /usr/bin/time -f '%e %U %S' -o "$WORK/.time" "$@" >"$logfile" 2>&1; then
    log "FAILED: $*"
    tail -n 20 "$logfile" >&2
    exit 1
  fi
  local wall user sys
  read -r wall user sys <"$WORK/.time"
  printf '%s\t%s\t%s\n' "$label" "$wall" "$(echo "$user + $sys" | bc)" >>"$WORK/times.tsv"
}

if [[ -z ${REPORT_ONLY:-} ]]; then
if [[ ! -f $BUILD/build.ninja ]]; then
  "${NICE_CMD[@]}" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
log "building funnel_cli and funnel-gen-shop in $BUILD"
"${NICE_CMD[@]}" cmake --build "$BUILD" --target funnel_cli funnel-gen-shop -j"$THREADS" >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"
: >"$WORK/times.tsv"
# What was built: the commit and how many tracked sources differed from it.
git rev-parse --short=12 HEAD >"$WORK/commit"
git status --porcelain --untracked-files=no -- src include tools CMakeLists.txt | wc -l >"$WORK/dirty"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/load_start"
STUDY_T0=$(date +%s)

write_config() {  # $1 = negative_keep
  cat <<EOF
{"model": {"history_length": 20, "attention_dim": 16, "experts": 4,
           "expert_hidden": [64, 32], "tower_hidden": [16], "dropout": 0.1},
 "features": {"embedding_dim": 8},
 "examples": {"negative_keep": $1},
 "train": {"optimizer": "$OPTIMIZER", "learning_rate": $LR, "weight_decay": $WEIGHT_DECAY,
           "batch_size": $BATCH, "max_epochs": $MAX_EPOCHS, "patience": $PATIENCE}}
EOF
}
write_config "$NEGATIVE_KEEP" >"$WORK/deep.json"
write_config 1 >"$WORK/deep-all-negatives.json"

for seed in $SEEDS; do
  for rho in $RHOS; do
    run="$WORK/rho${rho}_seed${seed}"
    shop="$run/shop"
    mkdir -p "$run"
    log "seed $seed, rho $rho: shop"
    step "gen rho=$rho seed=$seed" "$run/gen.log" \
      "${NICE_CMD[@]}" "$GEN" --out "$shop" --items "$ITEMS" --users "$USERS" --days "$DAYS" \
      --seed "$seed" --task-correlation "$rho"
    data=(--catalog "$shop/catalog.jsonl" --users "$shop/users.jsonl" --events "$shop/events.jsonl")

    torch=0
    for r in $TORCH_RHOS; do [[ $r == "$rho" ]] && torch=1; done
    export_args=()
    ((torch)) && export_args=(--export-examples "$run/examples")

    log "seed $seed, rho $rho: funnel train (mmoe)"
    step "funnel-mmoe rho=$rho seed=$seed" "$run/funnel-mmoe.train.log" \
      "${NICE_CMD[@]}" "$FUNNEL" train "${data[@]}" --until "$UNTIL" --hash-dim "$HASH_DIM" \
      --config "$WORK/deep.json" --body mmoe --seed "$seed" --threads "$THREADS" \
      --out "$run/funnel-mmoe" "${export_args[@]}"

    if ((torch)); then
      log "seed $seed, rho $rho: train_torch.py (mmoe, same examples)"
      step "torch-mmoe rho=$rho seed=$seed" "$run/torch-mmoe.train.log" \
        "${NICE_CMD[@]}" "$PY" tools/deep_ranker/train_torch.py "$run/examples" --out "$run/torch-mmoe" \
        --optimizer "$OPTIMIZER" --lr "$LR" --weight-decay "$WEIGHT_DECAY" \
        --batch-size "$BATCH" --max-epochs "$MAX_EPOCHS" --patience "$PATIENCE" \
        --seed "$seed" --threads "$THREADS" --report "$run/torch-mmoe.report.json"
      rm -rf "$run/examples"  # ~0.2 GB per run
    fi

    log "seed $seed, rho $rho: funnel train (shared_bottom)"
    step "funnel-sb rho=$rho seed=$seed" "$run/funnel-sb.train.log" \
      "${NICE_CMD[@]}" "$FUNNEL" train "${data[@]}" --until "$UNTIL" --hash-dim "$HASH_DIM" \
      --config "$WORK/deep.json" --body shared_bottom --seed "$seed" --threads "$THREADS" \
      --out "$run/funnel-sb"

    if [[ $REFERENCE == 1 ]] && ((torch)); then
      log "seed $seed, rho $rho: funnel train (mmoe, every negative: reference)"
      step "funnel-mmoe-all-negatives rho=$rho seed=$seed" "$run/funnel-mmoe-all.train.log" \
        "${NICE_CMD[@]}" "$FUNNEL" train "${data[@]}" --until "$UNTIL" --hash-dim "$HASH_DIM" \
        --config "$WORK/deep-all-negatives.json" --body mmoe --seed "$seed" \
        --threads "$THREADS" --out "$run/funnel-mmoe-all"
    fi

    log "seed $seed, rho $rho: funnel train (logistic)"
    step "logistic rho=$rho seed=$seed" "$run/logistic.train.log" \
      "${NICE_CMD[@]}" "$FUNNEL" train --ranker logistic "${data[@]}" --until "$UNTIL" \
      --hash-dim "$HASH_DIM" --seed "$seed" --out "$run/logistic"

    for model in funnel-mmoe torch-mmoe funnel-sb funnel-mmoe-all logistic; do
      [[ -d $run/$model ]] || continue
      # The inner shell expands its own arguments: the command, then '>' its first.
      # shellcheck disable=SC2016
      step "eval $model rho=$rho seed=$seed" "$run/$model.eval.log" \
        bash -c '"${@:2}" >"$1"' eval-json "$run/$model.eval.json" \
        "${NICE_CMD[@]}" "$FUNNEL" eval --model "$run/$model" "${data[@]}" --from "$UNTIL" --json
    done
    rm -rf "$shop"
  done
done
echo $(($(date +%s) - STUDY_T0)) >"$WORK/study_seconds"
fi  # REPORT_ONLY
STUDY_SECONDS=$(cat "$WORK/study_seconds")

# ---------------------------------------------------------------------------
# The report.
COMMIT=$(cat "$WORK/commit")
DIRTY=$(cat "$WORK/dirty")
CPU=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
export COMMIT DIRTY CPU STUDY_SECONDS WORK SEEDS RHOS TORCH_RHOS ITEMS USERS DAYS HOLDOUT_DAYS \
  REFERENCE UNTIL THREADS HASH_DIM NEGATIVE_KEEP OPTIMIZER LR WEIGHT_DECAY BATCH MAX_EPOCHS PATIENCE REPORT
LOADAVG="$(cat "$WORK/load_start" 2>/dev/null || echo '?') at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
NPROC=$(nproc)
DATE=$(date -u +%Y-%m-%dT%H:%MZ)
export LOADAVG NPROC DATE

"$PY" - <<'PYEOF'
import json
import math
import os
import re
import statistics

env = os.environ
work = env["WORK"]
seeds = env["SEEDS"].split()
rhos = env["RHOS"].split()
torch_rhos = env["TORCH_RHOS"].split()
TOL = 0.005
OBJ = ["ctr", "cvr", "ctcvr", "dwell"]


def load(rho, seed, model):
    path = os.path.join(work, "rho%s_seed%s" % (rho, seed), model + ".eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        doc = json.load(f)
    out = {o["objective"]: o["auc"] for o in doc["objectives"]}
    out["ndcg"] = doc["ndcg"]
    out["recall"] = doc["recall"]
    out["_doc"] = doc
    return out


def epochs(rho, seed, model):
    run = os.path.join(work, "rho%s_seed%s" % (rho, seed))
    if model == "torch-mmoe":
        path = os.path.join(run, "torch-mmoe.report.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            r = json.load(f)
        return "%d/%d" % (r["best_epoch"], r["epochs"])
    path = os.path.join(run, model + ".train.log")
    if not os.path.exists(path):
        return None
    m = re.search(r"(\d+) epochs \(best (\d+)", open(path).read())
    return "%s/%s" % (m.group(2), m.group(1)) if m else None


def hanley_mcneil(a, npos, nneg):
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    var = (a * (1 - a) + (npos - 1) * (q1 - a * a) + (nneg - 1) * (q2 - a * a)) / (npos * nneg)
    return math.sqrt(max(var, 0.0))


def num(v):
    return float("nan") if v is None else float(v)


def stats(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), float("nan"), float("nan")
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), sd, min(values), max(values)


def fmt(mean, sd, lo=None, hi=None, digits=4):
    if math.isnan(mean):
        return "-"
    text = "%.*f" % (digits, mean)
    if not math.isnan(sd):
        text += " ± %.*f" % (digits, sd)
    return text


def fmt_signed(mean, sd, lo, hi):
    if math.isnan(mean):
        return "-"
    text = "%+.4f" % mean
    if not math.isnan(sd):
        text += " ± %.4f [%+.4f, %+.4f]" % (sd, lo, hi)
    return text


def series(rho, model, key):
    return [num((load(rho, s, model) or {}).get(key)) for s in seeds]


def diff_series(rho, a, b, key):
    out = []
    for s in seeds:
        x, y = load(rho, s, a), load(rho, s, b)
        out.append(num(x.get(key)) - num(y.get(key)) if x and y else float("nan"))
    return out


MODELS = [("funnel-mmoe", "deep MMoE, funnel trainer"), ("torch-mmoe", "deep MMoE, PyTorch trainer"),
          ("funnel-sb", "deep shared-bottom, funnel trainer"),
          ("funnel-mmoe-all", "reference: deep MMoE, funnel trainer, every negative"),
          ("logistic", "logistic (first fine ranker)")]
METRICS = [("ctr", "ctr AUC"), ("cvr", "cvr AUC"), ("ctcvr", "ctcvr AUC"), ("dwell", "dwell AUC"),
           ("ndcg", "NDCG@10"), ("recall", "recall@10")]

lines = []
w = lines.append


def results_table(rho):
    w("| model | " + " | ".join(label for _, label in METRICS) + " | epochs (best/run) |")
    w("|---|" + "---|" * (len(METRICS) + 1))
    for key, label in MODELS:
        if all(load(rho, s, key) is None for s in seeds):
            continue
        cells = [fmt(*stats(series(rho, key, m))) for m, _ in METRICS]
        ep = ", ".join(e for e in (epochs(rho, s, key) for s in seeds) if e)
        w("| %s | %s | %s |" % (label, " | ".join(cells), ep))


def held_out_line(rho):
    docs = [load(rho, s, "funnel-mmoe") for s in seeds]
    docs = [d["_doc"] for d in docs if d]
    if not docs:
        return
    imp = [d["impressions"] for d in docs]
    clicks = [round(o["examples"]) for d in docs for o in d["objectives"] if o["objective"] == "cvr"]
    buys = [round(o["examples"] * o["positive_rate"]) for d in docs for o in d["objectives"]
            if o["objective"] == "cvr"]
    users = [d["ranking_users"] for d in docs]
    w("Held-out period per seed: %s impressions, %s clicked, %s clicked-and-bought, %s users "
      "with a held-out purchase (NDCG)." % ("/".join(map(str, imp)), "/".join(map(str, clicks)),
                                              "/".join(map(str, buys)), "/".join(map(str, users))))
    # Test-set resolution: Hanley-McNeil standard error of one model's AUC
    # at the MMoE model's AUC and the held-out class sizes (first replicate).
    d = docs[0]
    obj = {o["objective"]: o for o in d["objectives"]}
    parts = []
    for name in ("ctr", "cvr", "ctcvr"):
        o = obj.get(name)
        if not o or o["auc"] is None:
            continue
        npos = round(o["examples"] * o["positive_rate"])
        parts.append("%s %.4f" % (name, hanley_mcneil(o["auc"], npos, o["examples"] - npos)))
    w("Standard error of a single AUC on this held-out set (Hanley-McNeil, seed %s): %s; "
      "differences between models scored on the same impressions are paired and vary less."
      % (seeds[0], ", ".join(parts)))


verdicts = []

# Claim 1: funnel trainer vs PyTorch trainer on the same examples.
c1_rows = []
c1_ok = True
c1_any = False
for rho in torch_rhos:
    if rho not in rhos:
        continue
    for m in OBJ:
        d = diff_series(rho, "funnel-mmoe", "torch-mmoe", m)
        mean, sd, lo, hi = stats(d)
        if math.isnan(mean):
            continue
        c1_any = True
        ok = mean >= -TOL
        c1_ok &= ok
        c1_rows.append((rho, m, fmt(*stats(series(rho, "funnel-mmoe", m))),
                        fmt(*stats(series(rho, "torch-mmoe", m))), fmt_signed(mean, sd, lo, hi),
                        "yes" if ok else "no"))

# Claim 2: both deep models beat the logistic ranker.
c2_rows = []
c2_ok = True
c2_any = False
rho2 = torch_rhos[0] if torch_rhos and torch_rhos[0] in rhos else rhos[0]
for deep in ("funnel-mmoe", "torch-mmoe", "funnel-mmoe-all"):
    for m in ("ctr", "cvr", "ctcvr", "ndcg"):
        d = [x for x in diff_series(rho2, deep, "logistic", m) if not math.isnan(x)]
        mean, sd, lo, hi = stats(d)
        if math.isnan(mean):
            continue
        ok = mean > 0
        judged = deep != "funnel-mmoe-all"
        if judged:
            c2_any = True
            c2_ok &= ok
        wins = sum(1 for x in d if x > 0)
        c2_rows.append((deep, m, fmt_signed(mean, sd, lo, hi), "%d of %d" % (wins, len(d)),
                        ("yes" if ok else "no") if judged else "(reported)"))

# Claim 3: MMoE vs shared-bottom, per task, at every rho (the verdict at rho <= 0).
c3_rows = []
c3_ok = True
c3_any = False
for rho in rhos:
    for m in ("ctr", "cvr", "ctcvr", "dwell", "ndcg"):
        d = diff_series(rho, "funnel-mmoe", "funnel-sb", m)
        mean, sd, lo, hi = stats(d)
        if math.isnan(mean):
            continue
        judged = float(rho) <= 0 and m in ("ctr", "cvr")
        ok = mean > 0
        if judged:
            c3_any = True
            c3_ok &= ok
        wins = sum(1 for x in d if x > 0)
        c3_rows.append((rho, m, fmt(*stats(series(rho, "funnel-mmoe", m))),
                        fmt(*stats(series(rho, "funnel-sb", m))), fmt_signed(mean, sd, lo, hi),
                        "%d of %d" % (wins, len(d)), ("yes" if ok else "no") if judged else "(reported)"))


def verdict(any_, ok):
    return "NOT RUN" if not any_ else ("PASS" if ok else "SHORT")


times = []
with open(os.path.join(work, "times.tsv")) as f:
    for line in f:
        label, wall, cpu = line.rstrip("\n").split("\t")
        times.append((label, float(wall), float(cpu)))


def total(prefix, col=2):
    return sum(t[col] for t in times if t[0].startswith(prefix))


n = len(seeds)
w("# Fine-ranker quality study (issue 5)")
w("")
w("Generated by `benchmarks/run_fine_quality.sh` (do not edit by hand; rerun the script).")
w("")
w("| | |")
w("|---|---|")
w("| command | `benchmarks/run_fine_quality.sh`%s |" % (
    "" if (env["SEEDS"], env["RHOS"], env["TORCH_RHOS"]) == ("1 2 3", "0.3 0 -0.5", "0.3")
    else " with `SEEDS=\"%s\" RHOS=\"%s\" TORCH_RHOS=\"%s\"`" % (env["SEEDS"], env["RHOS"],
                                                               env["TORCH_RHOS"])))
w("| date | %s |" % env["DATE"])
w("| commit | `%s`%s |" % (env["COMMIT"], "" if env["DIRTY"] == "0" else
                            " plus %s uncommitted change(s) under src/include/tools" % env["DIRTY"]))
w("| machine | %s, %s CPUs visible, %s trainer threads; load average %s |" % (
    env["CPU"], env["NPROC"], env["THREADS"], env["LOADAVG"]))
w("| time | %.1f min wall; %.1f CPU-min (funnel deep training %.1f, PyTorch training %.1f, "
  "logistic %.1f, eval %.1f), i.e. about %.0f min on %s idle cores |" % (
    int(env["STUDY_SECONDS"]) / 60, total("") / 60, total("funnel-") / 60, total("torch-") / 60,
    total("logistic") / 60, total("eval") / 60, total("") / 60 / int(env["THREADS"]),
    env["THREADS"]))
w("")
w("## Verdicts")
w("")
w("| claim | verdict |")
w("|---|---|")
w("| 1. funnel's trainer reaches AUC within %.3f of the PyTorch trainer on every objective | **%s** |"
  % (TOL, verdict(c1_any, c1_ok)))
w("| 2. both deep models beat the logistic ranker on ctr, cvr and ctcvr AUC and NDCG@10 | **%s** |"
  % verdict(c2_any, c2_ok))
w("| 3. with low task correlation (rho <= 0) MMoE beats shared-bottom on the ctr and cvr AUC | **%s** |"
  % verdict(c3_any, c3_ok))
w("")
w("Figures are the mean ± sample standard deviation over %d replicate(s) (seeds %s; each seed is "
  "both the shop's seed and the trainers' seed); differences are paired per replicate, with "
  "[min, max]." % (n, ", ".join(seeds)))
w("")
w("## Method")
w("")
w("* Data: `funnel-gen-shop --items %s --users %s --days %s --seed S --task-correlation RHO` for "
  "RHO in {%s}. Training uses the events before ts %s (`funnel train --until`: the first %d days); "
  "every model is evaluated by `funnel eval --json --from %s` on the last %s days (impressions = the "
  "held-out views; ctr AUC over all of them, cvr AUC over the clicked ones, ctcvr = ctr x cvr over "
  "all of them against clicked-and-bought, dwell AUC = long vs short visits; NDCG@10 / recall@10 "
  "of the fused score, `funnel eval`'s default fusion ctr^1 x cvr^1 x dwell^0.5 for every model, "
  "against each user's held-out purchases)."
  % (env["ITEMS"], env["USERS"], env["DAYS"], ", ".join(rhos), env["UNTIL"],
     int(env["DAYS"]) - int(env["HOLDOUT_DAYS"]), env["UNTIL"], env["HOLDOUT_DAYS"]))
w("* Shop size: %s users, so that the held-out period has some hundreds of conversions per seed "
  "even at rho -0.5 (about 330; see the held-out lines below). Until 2026-11-27 the study used "
  "2,000 users: about 90 held-out conversions per seed at rho -0.5, a standard error of a single "
  "cvr AUC near 0.03, larger than the differences the claims are about; that run had MMoE below "
  "shared-bottom on cvr at rho -0.5 (-0.019, 3 of 3 seeds) and the MMoE dwell head 0.012-0.017 "
  "below the logistic ranker's (0.003-0.005 here). With four times the users, every verdict below comes "
  "from the same code and settings." % env["USERS"])
w("* Deep models (both trainers, both bodies) share one `--config`: history_length 20, "
  "attention_dim 16, 4 experts of [64, 32] (shared-bottom: one expert of [64, 32]), tower [16], "
  "dropout 0.1, embeddings of 8, hashed item vectors of %s dims (`--hash-dim`), negative_keep %s "
  "(a quarter of the unclicked training impressions; every click kept), %s, lr %s, weight decay %s, "
  "batch %s, at most %s epochs with patience %s on the mean validation AUC (the latest 10%% of the "
  "training examples). This is smaller than the library's default network and the negatives are "
  "subsampled so that the whole study fits in about 40 minutes on 2 cores; it is the same for every "
  "deep model. The logistic ranker gets its defaults (`funnel train --ranker logistic`, all "
  "examples, the same item vectors). With `REFERENCE=1` a reference row trains funnel's MMoE "
  "once more on every unclicked impression (negative_keep 1, the library's default; on the shops "
  "of claims 1 and 2, not part of any verdict), to show what the subsampling costs%s."
  % (env["HASH_DIM"], env["NEGATIVE_KEEP"], env["OPTIMIZER"], env["LR"], env["WEIGHT_DECAY"],
     env["BATCH"], env["MAX_EPOCHS"], env["PATIENCE"],
     "" if env["REFERENCE"] == "1" else " (not in this run)"))
w("* Claim 1: `funnel train --export-examples X` writes the examples funnel's trainer uses; "
  "`tools/deep_ranker/train_torch.py X` trains on them with the same hyperparameters and seed "
  "(its initialisation scheme, optimiser, dropout and early stopping follow funnel's trainer, but "
  "its random streams are torch's, so the two runs are two draws, not the same numbers). Both model "
  "directories go through the same `funnel eval`. Reading: funnel \"reaches within %.3f\" when the "
  "mean over replicates of (funnel AUC - PyTorch AUC) is at least -%.3f for every objective."
  % (TOL, TOL))
w("* Claim 2: the mean paired difference deep - logistic must be > 0 for ctr, cvr and ctcvr AUC "
  "and NDCG@10, for both deep models (shop rho = %s)." % rho2)
w("* Claim 3: the mean paired difference MMoE - shared-bottom (funnel's trainer) must be > 0 for "
  "the ctr and cvr AUC at every rho <= 0; the other tasks and rho = 0.3 are reported.")
w("")
for rho in rhos:
    w("## Results, task correlation %s" % rho)
    w("")
    held_out_line(rho)
    w("")
    results_table(rho)
    w("")
w("## Claim 1: funnel's trainer vs the PyTorch trainer (same examples)")
w("")
w("| rho | objective | funnel AUC | PyTorch AUC | funnel - PyTorch | within %.3f |" % TOL)
w("|---|---|---|---|---|---|")
for r in c1_rows:
    w("| %s | %s | %s | %s | %s | %s |" % r)
w("")
w("## Claim 2: deep vs logistic (rho = %s)" % rho2)
w("")
w("| deep model | metric | deep - logistic | replicates won | better |")
w("|---|---|---|---|---|")
names = dict(MODELS)
labels = dict(METRICS)
for deep, m, d, wins, ok in c2_rows:
    w("| %s | %s | %s | %s | %s |" % (names[deep], labels[m], d, wins, ok))
w("")
w("## Claim 3: MMoE vs shared-bottom (funnel's trainer)")
w("")
w("| rho | metric | MMoE | shared-bottom | MMoE - shared-bottom | replicates won | better |")
w("|---|---|---|---|---|---|---|")
for rho, m, a, b, d, wins, ok in c3_rows:
    w("| %s | %s | %s | %s | %s | %s | %s |" % (rho, labels[m], a, b, d, wins, ok))
w("")
w("## Step times")
w("")
w("| step | wall s | CPU s |")
w("|---|---|---|")
for label, wall, cpu in times:
    w("| %s | %.1f | %.1f |" % (label, wall, cpu))
w("")
with open(env["REPORT"], "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines[:30]))
PYEOF
log "wrote $REPORT (study took $((STUDY_SECONDS / 60)) min)"
