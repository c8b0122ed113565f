#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""PyTorch side of the fine-ranker benchmark (see docs/fine-ranker-benchmark.md).

Two jobs, one per process:

serve: loads <models-dir>/<model> (a funnel model directory) into the
  PyTorch twin (tools/deep_ranker/deep_ranker.py, DeepRanker: the network of
  deep_ranker.hpp; it computes each user's history keys and values once and
  gathers the user rows per candidate) and times outputs(forward(batch)),
  fp32, eval mode, under torch.inference_mode(), on the request files
  <model>/requests/nc<n>.safetensors. The input tensors are built outside
  the timed region, as for the other runtimes. One JSON line per request
  size goes to --out; the outputs go to --outputs-dir as
  torch_<model>_nc<n>.npy for the report's accuracy check.

train: the training throughput on <model>/train/ (synthetic labelled
  examples, config.json): one epoch of mini-batches of --batch-size rows in a
  seeded shuffled order, each step building the batch (rows, their users and
  histories), forward in training mode (dropout on), the loss of
  deep_ranker.py (the trainer's definition), backward and an Adam step (L2
  weight decay 1e-5 on weights and embeddings, lr 1e-3: DeepTrainConfig's
  defaults), as tools/deep_ranker/train_torch.py's epoch does, with the
  trainer's initialisation. examples/s = training rows / epoch wall time.

Threads: torch.set_num_threads(t) (serve: 1; train: --threads), one inter-op
thread, and the same count for the OpenBLAS that Debian's torch calls for
GEMMs (openblas_set_num_threads), whose pool set_num_threads does not size.

    /usr/bin/python3 benchmarks/deep_ranker/bench_torch.py serve --models-dir DIR \\
        --model default --out results.jsonl --outputs-dir DIR
    /usr/bin/python3 benchmarks/deep_ranker/bench_torch.py train --models-dir DIR \\
        --model default --out results.jsonl --threads 2
"""

import argparse
import ctypes
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "deep_ranker"))
import deep_ranker as dr  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402  (the request files)


def set_threads(threads):
    torch.set_num_threads(threads)
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(threads)
    except (OSError, AttributeError):
        print("bench_torch.py: note: no libopenblas.so.0 in reach; BLAS threads not set",
              file=sys.stderr)


def percentile(sorted_times, p):
    """Nearest rank: the smallest value with at least p of the runs at or below it."""
    return sorted_times[max(0, math.ceil(p * len(sorted_times)) - 1)]


def time_call(call, args):
    for _ in range(args.warmup):
        call()
    times = []
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1e3)
        elapsed = t1 - begin
        if len(times) >= args.max_runs:
            break
        if len(times) >= args.min_runs and elapsed >= args.min_seconds:
            break
        if len(times) >= 10 and elapsed >= args.max_seconds:
            break
    mean = sum(times) / len(times)
    times.sort()
    return {"runs": len(times), "p50_ms": percentile(times, 0.5),
            "p99_ms": percentile(times, 0.99), "mean_ms": mean}


def serve(args):
    set_threads(1)
    model_dir = os.path.join(args.models_dir, args.model)
    cfg, model = dr.load_model(model_dir)
    model.eval()
    with open(args.out, "a", encoding="utf-8") as out, torch.inference_mode():
        for nc in (int(n) for n in args.candidates.split(",")):
            batch = make_models.torch_batch(make_models.read_request(
                os.path.join(model_dir, "requests", "nc%d.safetensors" % nc)))

            def call():
                return model.outputs(model(batch))

            got = call().numpy()
            np.save(os.path.join(args.outputs_dir, "torch_%s_nc%d.npy" % (args.model, nc)),
                    got.astype(np.float32))
            row = {"runtime": "torch", "variant": "eager", "model": args.model,
                   "candidates": nc, "threads": 1}
            row.update(time_call(call, args))
            row["candidates_per_s"] = nc / (row["p50_ms"] / 1e3)
            row["version"] = torch.__version__
            out.write(json.dumps(row) + "\n")
            out.flush()
            print("torch eager %s nc=%d: p50 %.3f ms, p99 %.3f ms, %.0f candidates/s (%d runs)"
                  % (args.model, nc, row["p50_ms"], row["p99_ms"], row["candidates_per_s"],
                     row["runs"]))


def train(args):
    set_threads(args.threads)
    train_dir = os.path.join(args.models_dir, args.model, "train")
    cfg = dr.load_config(os.path.join(train_dir, "config.json"))
    ex = dr.load_examples(os.path.join(train_dir, "train.safetensors"), cfg)
    n = ex["candidate_user"].shape[0]
    model = dr.DeepRanker(cfg, torch.float32)
    dr.init_parameters(model, args.seed)
    decay = [p for name, p in model.funnel_parameters() if not name.endswith(".bias")]
    no_decay = [p for name, p in model.funnel_parameters() if name.endswith(".bias")]
    opt = torch.optim.Adam([{"params": decay, "weight_decay": 1e-5},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    torch.manual_seed(args.seed)
    order = np.random.default_rng(args.seed).permutation(n)
    model.train()
    steps = 0
    step_times = []
    t_begin = time.perf_counter()
    for start in range(0, n, args.batch_size):
        t0 = time.perf_counter()
        b = dr.to_torch_batch(ex, torch.float32, order[start:start + args.batch_size])
        loss = model.loss(model(b), b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        step_times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_begin
    row = {"runtime": "torch", "variant": "train", "model": args.model, "threads": args.threads,
           "examples": n, "batch_size": args.batch_size, "steps": steps, "seconds": elapsed,
           "examples_per_s": n / elapsed, "final_loss": float(loss),
           "examples_per_s_after_first_step": (n - min(n, args.batch_size))
           / max(sum(step_times[1:]), 1e-9), "version": torch.__version__}
    with open(args.out, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
    print("torch train %s: %d examples in %d steps of %d, %d threads: %.2f s, %.0f examples/s"
          % (args.model, n, steps, args.batch_size, args.threads, elapsed, row["examples_per_s"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["serve", "train"])
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="JSON lines file to append to")
    ap.add_argument("--outputs-dir", help="serve: where the outputs go (.npy)")
    ap.add_argument("--candidates", default="1,100,1000")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-runs", type=int, default=100)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--max-runs", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2, help="train: torch and BLAS threads")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.set_num_interop_threads(1)
    if args.mode == "serve":
        if not args.outputs_dir:
            ap.error("serve needs --outputs-dir")
        serve(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
