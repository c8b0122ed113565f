#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Where funnel's bf16 serving error comes from (docs/fine-ranker-benchmark.md).

funnel's bf16 precision rounds the inputs and the weights of every product
(attention projections, expert layers, gates, the hidden layers of the binary
tasks' towers) to bfloat16 and accumulates in fp32; the last tower layer and
the towers of regression tasks stay fp32. This script emulates that rounding
on the PyTorch twin (tools/deep_ranker/deep_ranker.py) in float64, on the
benchmark's models and 1,000-candidate requests, and reports the largest and
mean absolute difference of each output (ctr, cvr probabilities, dwell in log
space) from the float64 network when only some of the rounding is applied:
every source (what funnel does), only the inputs, only the weights, and
funnel's rounding with one group of products kept exact.

Run after benchmarks/run_deep_ranker_benchmark.sh has written the models:
    /usr/bin/python3 benchmarks/deep_ranker/bf16_error_sources.py
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "deep_ranker"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deep_ranker as dr  # noqa: E402
import make_models  # noqa: E402


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "build-bench-deep",
                                                         "deep-ranker-models"))
    ap.add_argument("--models", default="default,large")
    ap.add_argument("--candidates", type=int, default=1000)
    args = ap.parse_args()

    original = dr.DeepRanker._linear
    print("| model | rounding | max abs diff ctr, cvr, dwell | mean abs diff ctr, cvr, dwell |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        directory = os.path.join(args.models_dir, name)
        cfg, model = dr.load_model(directory, torch.float64)
        model.eval()
        request = os.path.join(directory, "requests", "nc%d.safetensors" % args.candidates)
        batch = make_models.torch_batch(make_models.read_request(request))
        batch = {k: (v.double() if v.dtype == torch.float32 else v) for k, v in batch.items()}
        regression = {t["name"] for t in cfg["tasks"] if t["kind"] == "regression"}
        tower_layers = len(cfg["tower_hidden"])

        def funnel_rounds(prefix):
            """Whether funnel's bf16 precision rounds this product."""
            if prefix.startswith("tower."):
                _, task, layer = prefix.split(".")
                return task not in regression and int(layer) < tower_layers
            return True

        def run(policy):
            def linear(self, x, prefix):
                w = self.p(prefix + ".weight")
                round_input, round_weight = policy(prefix)
                if round_input:
                    x = bf16(x)
                if round_weight:
                    w = bf16(w)
                return x @ w.t() + self.p(prefix + ".bias")
            dr.DeepRanker._linear = linear
            try:
                with torch.no_grad():
                    return model.outputs(model(batch))
            finally:
                dr.DeepRanker._linear = original

        def keep_exact(*groups):
            def policy(prefix):
                if any(prefix.startswith(g) for g in groups) or not funnel_rounds(prefix):
                    return (False, False)
                return (True, True)
            return policy

        experts = range(cfg["experts"])
        later = [("expert.%d.%d" % (e, l)) for e in experts
                 for l in range(1, len(cfg["expert_hidden"]))]
        variants = [
            ("every source (funnel bf16)", keep_exact()),
            ("inputs only", lambda p: (funnel_rounds(p), False)),
            ("weights only", lambda p: (False, funnel_rounds(p))),
            ("first expert and gate layers exact",
             keep_exact(*["expert.%d.0" % e for e in experts], "gate.")),
            ("later expert layers exact", keep_exact(*later) if later else None),
            ("attention exact", keep_exact("attention.")),
            ("every tower exact", keep_exact("tower.")),
        ]
        reference = run(lambda p: (False, False))
        for label, policy in variants:
            if policy is None:
                continue
            diff = (run(policy) - reference).abs()
            worst = ", ".join("%.2e" % v for v in diff.max(0).values.tolist())
            mean = ", ".join("%.2e" % v for v in diff.mean(0).tolist())
            print("| %s | %s | %s | %s |" % (name, label, worst, mean))


if __name__ == "__main__":
    main()
