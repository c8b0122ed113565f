#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The fine-ranker benchmark's report (run_deep_ranker_benchmark.sh calls it).

Reads the raw results (JSON lines: RESULTS), the run's facts (RUN_INFO), the
models' configs (MODELS_DIR/<model>/config.json) and every runtime's outputs
(OUTPUTS_DIR/*.npy); prints the tables and the targets (PASS / SHORT), and
writes them to REPORT: between the results markers of
docs/fine-ranker-benchmark.md for an official (full, default) run, as a page
of its own otherwise.

FLOPs per request are counted from the shapes (a multiply-add is 2 FLOPs;
embedding gathers, activations and softmax exponentials not counted), for
the work the network needs when each user's side is computed once: the
user's part of the first expert and gate layers and the history keys and
values once per request; per candidate the query, the attention scores and
pooling over the history, the candidate's part of the first expert and gate
layers, the later expert layers, the gate mixtures and the towers.
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys

import numpy as np

env = os.environ
ROOT = env["ROOT"]
sys.path.insert(0, os.path.join(ROOT, "tools", "deep_ranker"))
import deep_ranker as dr  # noqa: E402

FP32_MAX_ABS = 1e-4  # peers against funnel fp32
BF16_MAX_ABS = 1e-3  # funnel bf16 against funnel fp32
HOT_CANDIDATES = 1000  # the FLOP-rate target's rows

info = json.load(open(env["RUN_INFO"], encoding="utf-8"))
rows = [json.loads(line) for line in open(env["RESULTS"], encoding="utf-8") if line.strip()]

cells = {}  # (model, nc) -> {key: row}
gemm = []
train = {}
unsupported = []
versions = {}
for r in rows:
    if r["runtime"] == "gemm":
        gemm.append(r)
    elif r.get("variant") == "train":
        train[r["runtime"]] = r
    elif r.get("unsupported"):
        unsupported.append(f"{r['model']}: funnel {r['variant']}")
    else:
        cells.setdefault((r["model"], r["candidates"]), {})[f"{r['runtime']} {r['variant']}"] = r
        if "version" in r:
            versions[r["runtime"]] = r["version"]
models = []
for m, _ in sorted(cells):
    if m not in models:
        models.append(m)
models.sort(key=lambda m: ["default", "large"].index(m) if m in ("default", "large") else 9)

configs = {m: dr.load_config(os.path.join(env["MODELS_DIR"], m, "config.json")) for m in models}


def flops_per_request(cfg, nc, events):
    u, c, hd, _ = dr.widths(cfg)
    a, e, t = cfg["attention_dim"], cfg["experts"], len(cfg["tasks"])
    hidden = cfg["expert_hidden"]
    first = e * hidden[0] + t * e  # first expert layers and gates, side by side
    once = 2 * u * first + 2 * 2 * events * hd * a
    per = 2 * hd * a + 2 * 2 * events * a + 2 * (c + a) * first
    per += e * sum(2 * hidden[i - 1] * hidden[i] for i in range(1, len(hidden)))
    tower = 0
    fan_in = hidden[-1]
    for w in list(cfg["tower_hidden"]) + [1]:
        tower += 2 * fan_in * w
        fan_in = w
    per += t * (2 * e * hidden[-1] + tower)
    return once + nc * per


def describe(m):
    cfg = configs[m]
    u, c, hd, x = dr.widths(cfg)
    return (f"{m}: {cfg['experts']} experts {' -> '.join(str(w) for w in [x] + cfg['expert_hidden'])}, "
            f"towers {cfg['tower_hidden']} -> 1 per task ({len(cfg['tasks'])} tasks: "
            f"{', '.join(t['name'] for t in cfg['tasks'])}), history {cfg['history_length']} "
            f"events, D {cfg['item_vector_dim']}, A {cfg['attention_dim']}; widths U {u}, C {c}, "
            f"Hd {hd}, X {x}")


def load_out(name):
    path = os.path.join(env["OUTPUTS_DIR"], name)
    return np.load(path) if os.path.exists(path) else None


def max_diff(a, b):
    if a is None or b is None:
        return None
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


PEERS = [("ort usual", "ORT usual", "ort-usual"), ("ort careful", "ORT careful", "ort-careful"),
         ("torch eager", "PyTorch", "torch")]
FUNNEL = [("funnel fp32", "funnel fp32", "funnel-fp32"), ("funnel bf16", "funnel bf16", "funnel-bf16")]
gemm_rate = max((g["gflops"] for g in gemm), default=None)

tally = {}
shorts = []


def verdict(name, ok, text, where):
    p, s = tally.get(name, (0, 0))
    tally[name] = (p + (1 if ok else 0), s + (0 if ok else 1))
    if not ok:
        shorts.append(f"{where}: {name}: {text}")
    return f"{text} {'PASS' if ok else 'SHORT'}"


def fmt_rate(r):
    return f"{r['candidates_per_s']:,.0f}" if r else "-"


def fmt_lat(r):
    return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}" if r else "-"


def ratio(a, b):
    return a["candidates_per_s"] / b["candidates_per_s"] if a and b else None


out = []
for m in models:
    cfg = configs[m]
    keys = sorted(k for k in cells if k[0] == m)
    out.append(f"### {describe(m)}\n")
    out.append("Throughput in candidates/s (candidates / median latency of one request) and "
               "funnel's ratio to each peer; targets: fp32 >= 4x ORT usual, fp32 >= 1.0x ORT "
               "careful, bf16 >= 1.6x ORT careful:\n")
    out.append("| candidates | ORT usual | ORT careful | PyTorch | funnel fp32 | funnel bf16 "
               "| fp32 / usual | fp32 / careful | fp32 / PyTorch | bf16 / usual | bf16 / careful "
               "| bf16 / PyTorch |")
    out.append("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        c = cells[k]
        f32, b16 = c.get("funnel fp32"), c.get("funnel bf16")
        usual, careful, torch_ = c.get("ort usual"), c.get("ort careful"), c.get("torch eager")
        where = f"{m} nc={k[1]}"
        ref = load_out(f"funnel-fp32_{m}_nc{k[1]}.npy")
        b16_diff = max_diff(load_out(f"funnel-bf16_{m}_nc{k[1]}.npy"), ref)
        cols = []
        for num, den, need, target in ((f32, usual, 4.0, "fp32 >= 4x ORT usual"),
                                       (f32, careful, 1.0, "fp32 >= 1.0x ORT careful"),
                                       (f32, torch_, None, None),
                                       (b16, usual, None, None),
                                       (b16, careful, 1.6, "bf16 >= 1.6x ORT careful"),
                                       (b16, torch_, None, None)):
            q = ratio(num, den)
            if q is None:
                cols.append("-")
            elif need is None:
                cols.append(f"{q:.2f}")
            elif num is b16 and (b16_diff is None or b16_diff > BF16_MAX_ABS):
                cols.append(verdict(target, False, f"{q:.2f} (bf16 max diff {b16_diff})", where))
            else:
                cols.append(verdict(target, q >= need, f"{q:.2f}", where))
        out.append(f"| {k[1]:,} | {fmt_rate(usual)} | {fmt_rate(careful)} | {fmt_rate(torch_)} | "
                   f"{fmt_rate(f32)} | {fmt_rate(b16)} | " + " | ".join(cols) + " |")

    out.append("\nLatency of one request in ms, p50 / p99 (nearest rank; calls per cell in the "
               "raw results), and funnel's p99 / p50 (target <= 1.3):\n")
    out.append("| candidates | ORT usual | ORT careful | PyTorch | funnel fp32 | funnel bf16 "
               "| fp32 p99 / p50 | bf16 p99 / p50 |")
    out.append("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        c = cells[k]
        tails = []
        for key in ("funnel fp32", "funnel bf16"):
            r = c.get(key)
            if not r:
                tails.append("-")
                continue
            q = r["p99_ms"] / r["p50_ms"]
            tails.append(verdict("p99 <= 1.3x p50", q <= 1.3, f"{q:.2f}",
                                 f"{m} nc={k[1]} {key}"))
        out.append(f"| {k[1]:,} | " + " | ".join(fmt_lat(c.get(v)) for v in
                                                  ("ort usual", "ort careful", "torch eager",
                                                   "funnel fp32", "funnel bf16"))
                   + " | " + " | ".join(tails) + " |")

    out.append(f"\nFLOP rate: the network's FLOPs per request (see below) over funnel's median "
               f"latency, against one 1024^3 dnnl_sgemm on 1 thread in the same run "
               f"({gemm_rate:.1f} GFLOP/s; target: fp32 >= 60% at {HOT_CANDIDATES:,} candidates); "
               "cpu / wall is the process CPU time over the wall time of funnel's timed calls "
               "(1.0 = one busy thread):\n" if gemm_rate else "\nFLOP rate: no GEMM reference "
               "in this run.\n")
    out.append("| candidates | MFLOP / request | funnel fp32 GFLOP/s | fp32 % of sgemm "
               "| funnel bf16 GFLOP/s | bf16 % of sgemm | cpu / wall fp32, bf16 |")
    out.append("|--:|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        c = cells[k]
        fl = flops_per_request(cfg, k[1], cfg["history_length"])
        cols = []
        for key in ("funnel fp32", "funnel bf16"):
            r = c.get(key)
            if not r:
                cols += ["-", "-"]
                continue
            rate = fl / (r["p50_ms"] / 1e3) / 1e9
            share = rate / gemm_rate if gemm_rate else None
            cols.append(f"{rate:.1f}")
            if share is None:
                cols.append("-")
            elif key == "funnel fp32" and k[1] == HOT_CANDIDATES:
                cols.append(verdict("fp32 FLOP rate >= 60% of sgemm", share >= 0.6,
                                    f"{100 * share:.0f}%", f"{m} nc={k[1]}"))
            else:
                cols.append(f"{100 * share:.0f}%")
        cpw = ", ".join(f"{c[v]['cpu_per_wall']:.2f}" if c.get(v) else "-"
                        for v in ("funnel fp32", "funnel bf16"))
        out.append(f"| {k[1]:,} | {fl / 1e6:,.2f} | " + " | ".join(cols) + f" | {cpw} |")

    out.append(f"\nAccuracy: largest absolute difference of each runtime's outputs (ctr, cvr "
               f"probabilities, dwell log-seconds) from funnel fp32's on the same request "
               f"(bounds: {FP32_MAX_ABS:g} for fp32 runtimes, {BF16_MAX_ABS:g} for funnel bf16):\n")
    out.append("| candidates | ORT usual | ORT careful | PyTorch | funnel bf16 "
               "| funnel bf16: ctr, cvr / dwell |")
    out.append("|--:|--:|--:|--:|--:|--:|")
    for k in keys:
        ref = load_out(f"funnel-fp32_{m}_nc{k[1]}.npy")
        cols = []
        for _, _, stem in PEERS + FUNNEL[1:]:
            d = max_diff(load_out(f"{stem}_{m}_nc{k[1]}.npy"), ref)
            bound = BF16_MAX_ABS if stem == "funnel-bf16" else FP32_MAX_ABS
            cols.append("-" if d is None else f"{d:.2e}" + ("" if d <= bound else " (out of bound)"))
        # Which outputs the bf16 difference comes from: probabilities or the
        # regression outputs (log-space values, not bounded by 1).
        b16 = load_out(f"funnel-bf16_{m}_nc{k[1]}.npy")
        if b16 is not None and ref is not None and b16.shape == ref.shape:
            reg = [i for i, t in enumerate(cfg["tasks"]) if t["kind"] == "regression"]
            prob = [i for i in range(len(cfg["tasks"])) if i not in reg]
            parts = [max_diff(b16[:, cols_], ref[:, cols_]) if cols_ else None
                     for cols_ in (prob, reg)]
            cols.append(" / ".join("-" if d is None else f"{d:.2e}" for d in parts))
        else:
            cols.append("-")
        out.append(f"| {k[1]:,} | " + " | ".join(cols) + " |")
    out.append("")

if train:
    f, t = train.get("funnel"), train.get("torch")
    any_row = f or t
    out.append(f"### Training throughput ({any_row['model']} model, {any_row['threads']} threads)\n")
    out.append(f"One epoch of {any_row['examples']:,} synthetic labelled examples in "
               f"{any_row['steps']} steps of {any_row['batch_size']} (forward with dropout, "
               "backward, Adam step; the same examples and batch size for both):\n")
    out.append("| trainer | examples/s | epoch wall time (s) | notes |")
    out.append("|---|--:|--:|---|")
    if f:
        out.append(f"| funnel train_deep_ranker | {f['examples_per_s']:,.0f} | {f['seconds']:.2f} | "
                   f"examples/s from DeepTrainReport; whole call (incl. validation, setup) "
                   f"{f['examples_per_s_whole_call']:,.0f}/s |")
    if t:
        out.append(f"| PyTorch (twin, Adam) | {t['examples_per_s']:,.0f} | {t['seconds']:.2f} | "
                   f"without the first step {t['examples_per_s_after_first_step']:,.0f}/s |")
    if f and t:
        q = f["examples_per_s"] / t["examples_per_s"]
        out.append(f"\nfunnel / PyTorch: "
                   + verdict("training >= 1.0x PyTorch (2 threads)", q >= 1.0, f"{q:.2f}",
                             "training") + "\n")
    out.append("")

summary = ["Targets (rows passing / rows measured):", ""]
for name, (p, s) in tally.items():
    summary.append(f"- {name}: {p} / {p + s} PASS" + ("" if s == 0 else f", {s} SHORT"))
if unsupported:
    summary.append(f"- not supported by this CPU (no rows): {', '.join(unsupported)}")
if shorts:
    summary += ["", "Short of a target:", ""] + [f"- {s}" for s in shorts]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT,
                              check=False).stdout.strip()
    except OSError:
        return "?"


report_rel = os.path.relpath(os.path.abspath(env["REPORT"]), ROOT)
status_cmd = ("git status --porcelain --untracked-files=no -- . "
              f"':(exclude){report_rel}'" if not report_rel.startswith("..")
              else "git status --porcelain --untracked-files=no")
cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1")
flags = open("/proc/cpuinfo", encoding="ascii").read()
isa = ", ".join(f for f in ["avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
                if re.search(rf"\b{f}\b", flags))
gemm_txt = ", ".join(f"{g['gflops']:.1f}" for g in gemm)
env_lines = [
    f"Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
    f"`benchmarks/run_deep_ranker_benchmark.sh{'' if info['official'] else ' ' + info['args']}` "
    f"({info['elapsed_s'] // 60} min {info['elapsed_s'] % 60} s), funnel at "
    f"{sh('git rev-parse --short HEAD')}"
    # The report page itself does not count as a local change.
    f"{' (with local changes)' if sh(status_cmd) else ''}.",
    f"CPU: {cpu}, {os.cpu_count()} logical cores ({isa}); {platform.system()} "
    f"{platform.release()}. Load average (1/5/15 min) before the runs {info['load_before']}, "
    f"after {info['load_after']}"
    + (f"; the run's session had autogroup nice {info['autogroup_nice']} (see How it measures)"
       if info.get("autogroup_nice") not in (None, "", "?") else "") + ".",
    f"ONNX Runtime {versions.get('ort', '?')} (onnxruntime-node, CPU EP); PyTorch "
    f"{versions.get('torch', 'not run')} (Debian); {sh('c++ --version | head -1')}; "
    f"dnnl_sgemm 1024^3 on 1 thread, before and after the rows: {gemm_txt} GFLOP/s (the "
    f"higher is the reference); timing options `{info['timing']}`.",
]
text = "\n".join(env_lines + [""] + summary + [""] + out)
print(text)

marker_begin, marker_end = "<!-- results: begin -->", "<!-- results: end -->"
report = env["REPORT"]
block = f"{marker_begin}\n{text}\n{marker_end}"
if info["official"]:
    doc = open(report, encoding="utf-8").read() if os.path.exists(report) else ""
    if marker_begin in doc and marker_end in doc:
        doc = doc[:doc.index(marker_begin)] + block + doc[doc.index(marker_end) + len(marker_end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
else:
    kind = "quick" if info["quick"] else "partial"
    doc = f"# Fine-ranker benchmark ({kind} run; not in docs/)\n\n" + block + "\n"
with open(report + ".tmp", "w", encoding="utf-8") as fh:
    fh.write(doc)
os.replace(report + ".tmp", report)
print(f"\nwritten: {report}")
