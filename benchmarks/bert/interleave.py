#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs several benchmark processes side by side, alternating their timed calls.

The BERT encoder benchmark (benchmarks/run_bert_benchmark.sh) compares
runtimes whose speed differs by a few tens of percent on a shared machine whose
own speed drifts by as much within minutes. Measuring one runtime after the
other lets that drift decide ratios; this driver keeps every runtime loaded at
once (bench_ort.js and bench_bert_encoder with --serve 1) and hands the
machine to one of them at a time for a short burst of calls, in rotating
order, until each has enough calls. A slow minute then falls on all of them.

Protocol (see --serve in bench_bert_encoder.cpp and bench_ort.js): each process
walks through the same rows (thread counts, then shapes) in the same order;
for each row it prints "ready <row>", the driver sends "burst <min_ms>
<max_calls> <untimed>" and reads "done <ms>,<ms>,...", and "end" closes the
row. Other
lines a process prints are passed through with its label.

Between two bursts the driver waits until the process that just ran has gone
quiet (its threads' CPU time, from /proc/<pid>/task/*/schedstat, stops
growing), so that a thread pool spinning after its last call (OpenMP's,
ONNX Runtime's) does not take a core from the next runtime.

  interleave.py --rows N [--min-rounds 5] [--burst-ms 200] [--burst-max-calls 40]
                [--min-runs 7] [--min-seconds 1] [--max-runs 200]
                [--bursts-out FILE [--tag TAG]]
                --proc LABEL 'COMMAND ...' --proc LABEL 'COMMAND ...' ...
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


class Proc:
    def __init__(self, label, command):
        self.label = label
        self.popen = subprocess.Popen(shlex.split(command), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self.times = []
        self.last_burst = []
        self.alive = True

    def read_until(self, prefix):
        """The first stdout line starting with prefix (other lines are echoed), or None at EOF."""
        for line in self.popen.stdout:
            line = line.rstrip("\n")
            if line.startswith(prefix):
                return line[len(prefix):]
            print(f"[{self.label}] {line}", flush=True)
        return None

    def send(self, command):
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def cpu_ns(self):
        """CPU time of all the process's threads so far, in ns."""
        total = 0
        task_dir = f"/proc/{self.popen.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat", encoding="ascii") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that ended meanwhile
        return total

    def wait_quiet(self, window_s=0.005, max_s=1.0):
        """Waits until the process used under 10% of a core over window_s (at most max_s)."""
        deadline = time.monotonic() + max_s
        before = self.cpu_ns()
        while time.monotonic() < deadline:
            time.sleep(window_s)
            after = self.cpu_ns()
            if after - before < 0.1 * window_s * 1e9:
                return
            before = after


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, required=True, help="rows every process walks through")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--burst-ms", type=float, default=200.0)
    ap.add_argument("--min-runs", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-runs", type=int, default=200)
    ap.add_argument("--burst-max-calls", type=int, default=40, help="timed calls per burst, at most")
    ap.add_argument("--bursts-out", help="append every burst's times here (JSON lines)")
    ap.add_argument("--tag", default="", help="written into every line of --bursts-out")
    ap.add_argument("--proc", nargs=2, action="append", metavar=("LABEL", "COMMAND"),
                    required=True)
    args = ap.parse_args()

    procs = [Proc(label, command) for label, command in args.proc]
    bursts_out = open(args.bursts_out, "a", encoding="utf-8") if args.bursts_out else None
    per_burst = max(1, args.burst_max_calls)
    for row_index in range(args.rows):
        rows = {}
        for p in procs:
            if not p.alive:
                continue
            row = p.read_until("ready ")
            if row is None:  # e.g. a compute type this CPU lacks: it wrote its line and left
                print(f"[{p.label}] ended before row {row_index + 1}; left out", flush=True)
                p.alive = False
                continue
            rows[p.label] = row
            p.times = []
            p.last_burst = []
        live = [p for p in procs if p.alive]
        if len(set(rows.values())) > 1:
            sys.exit(f"interleave.py: the processes are at different rows: {rows}")
        if not live:
            break
        row = next(iter(rows.values()))
        for rnd in range(10**9):
            order = live[rnd % len(live):] + live[:rnd % len(live)]
            for p in order:
                if len(p.times) >= args.max_runs:
                    continue
                # A burst of short calls starts with one untimed call, which
                # pulls back into the caches what the other runtimes evicted:
                # the timed calls are then the steady state of a process that
                # serves calls back to back. A burst of one or two long calls
                # has no room for it (and the refill is a small part of a call).
                short = not p.last_burst or len(p.last_burst) >= 4
                p.send(f"burst {args.burst_ms} {min(per_burst, args.max_runs - len(p.times))} "
                       f"{1 if short else 0}")
                answer = p.read_until("done ")
                if answer is None:
                    sys.exit(f"interleave.py: {p.label} ended in the middle of row {row}")
                times = [float(t) for t in answer.split(",")]
                p.times += times
                p.last_burst = times
                if bursts_out:
                    bursts_out.write(json.dumps({"tag": args.tag, "row": row, "label": p.label, "round": rnd,
                                                 "times_ms": times}) + "\n")
                p.wait_quiet()
            enough = all(len(p.times) >= args.max_runs or
                         (len(p.times) >= args.min_runs and
                          sum(p.times) >= 1e3 * args.min_seconds) for p in live)
            if rnd + 1 >= args.min_rounds and enough:
                break
        for p in live:
            p.send("end")
        print(f"== {row}: " + ", ".join(
            f"{p.label} {statistics.median(p.times):.2f} ms ({len(p.times)} calls)" for p in live),
            flush=True)
    status = 0
    for p in procs:
        p.popen.stdin.close()
        for line in p.popen.stdout:
            print(f"[{p.label}] {line.rstrip()}", flush=True)
        if p.popen.wait() != 0:
            print(f"interleave.py: {p.label} exited with {p.popen.returncode}", file=sys.stderr)
            status = 1
    if bursts_out:
        bursts_out.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
