#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a synthetic examples directory in the layout `funnel train
--export-examples DIR` writes, for trying train_torch.py without funnel:

  DIR/config.json              the untrained model config (vocabularies,
                               numeric standardisation, network shape, tasks)
  DIR/train.safetensors        DeepRankerExamples layout, labels included
  DIR/validation.safetensors   the same for the latest examples (by ts)

The labels follow a hidden rule the network can learn: a click is likelier
when the candidate's category is the user's favourite (which the user's
history reveals through attention), for some user groups and brands, and
with the coarse score; a purchase after a click depends on the price and the
user's age band; dwell (log(1 + seconds)) on the category match. Seeded and
deterministic.

    nice -n 19 /usr/bin/python3 tools/deep_ranker/make_synthetic_examples.py --out /tmp/dr_examples
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deep_ranker as dr  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--impressions", type=int, default=20, help="per user")
    ap.add_argument("--dim", type=int, default=16, help="item vector dim D")
    ap.add_argument("--history-length", type=int, default=20)
    ap.add_argument("--validation-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    n_cat, n_brand, d = 8, 6, args.dim
    cats = ["c%d" % i for i in range(n_cat)]
    brands = ["b%d" % i for i in range(n_brand)]
    genders = ["f", "m"]
    ages = ["18-24", "25-34", "35-44", "45-54"]

    # Items: category centroid + noise as the text vector, brand, price.
    centroids = rng.normal(0, 1, size=(n_cat, d))
    item_cat = rng.integers(0, n_cat, size=args.items)
    item_brand = rng.integers(0, n_brand, size=args.items)
    item_vec = (centroids[item_cat] + 0.5 * rng.normal(0, 1, size=(args.items, d))) / math.sqrt(d)
    item_logprice = rng.normal(3.0, 1.0, size=args.items)
    brand_bias = rng.normal(0, 0.7, size=n_brand)

    now0 = 1_700_000_000
    bounds = [3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400]
    ex = {k: [] for k in ("user_categorical", "user_numeric", "history_item",
                          "history_category", "history_type", "history_recency",
                          "candidate_user", "candidate_item", "candidate_categorical",
                          "candidate_numeric", "labels", "ts")}
    offsets = [0]
    for u in range(args.users):
        fav = rng.integers(0, n_cat)
        g = rng.integers(0, len(genders) + 1)  # 0 = unknown (out of vocabulary)
        a = rng.integers(0, len(ages) + 1)
        n_hist = int(rng.integers(0, args.history_length + 1))
        # History: mostly the favourite category.
        pool_fav = np.flatnonzero(item_cat == fav)
        hist_items = np.where(rng.random(n_hist) < 0.7, rng.choice(pool_fav, n_hist),
                              rng.integers(0, args.items, n_hist))
        ages_s = np.sort(rng.exponential(5 * 86400, size=n_hist))[::-1]
        for it, age in zip(hist_items, ages_s):
            ex["history_item"].append(it)
            ex["history_category"].append(item_cat[it] + 1)
            ex["history_type"].append(int(rng.choice(4, p=[0.5, 0.3, 0.1, 0.1])))
            ex["history_recency"].append(sum(1 for b in bounds if age >= b))
        offsets.append(offsets[-1] + n_hist)
        ex["user_categorical"].append([g, a])
        ex["user_numeric"].append([math.log1p(n_hist)])
        hist_signal = 1.0 if n_hist > 0 else 0.0  # the favourite is only knowable from history
        hist_mean = item_vec[hist_items].mean(axis=0) if n_hist else np.zeros(d)
        for k in range(args.impressions):
            it = int(rng.choice(pool_fav)) if rng.random() < 0.3 else int(rng.integers(args.items))
            coarse = float(item_vec[it].dot(hist_mean))
            match = float(item_cat[it] == fav)
            logit = (-1.5 + 2.0 * match * hist_signal + brand_bias[item_brand[it]]
                     + (0.6 if g == 1 else 0.0) + 1.0 * coarse)
            click = rng.random() < 1 / (1 + math.exp(-logit))
            buy_logit = -0.5 - 0.8 * (item_logprice[it] - 3.0) + (0.7 if a >= 3 else -0.3)
            buy = click and rng.random() < 1 / (1 + math.exp(-buy_logit))
            dwell = (math.log1p(math.exp(rng.normal(2.5 + 1.0 * match, 0.5))) if click
                     else float("nan"))
            ex["candidate_user"].append(u)
            ex["candidate_item"].append(it)
            ex["candidate_categorical"].append([item_cat[it] + 1, item_brand[it] + 1])
            ex["candidate_numeric"].append([coarse, item_logprice[it]])
            ex["labels"].append([float(click), float(buy), dwell])
            ex["ts"].append(now0 + int(rng.integers(0, 30 * 86400)))
    d_float = {"user_numeric", "candidate_numeric", "labels"}
    arrays = {}
    for k, v in ex.items():
        dt = np.float32 if k in d_float else np.int64 if k == "ts" else np.int32
        arrays[k] = np.asarray(v, dtype=dt)
    # Item vectors once; events and candidates refer to their rows.
    arrays["item_vectors"] = item_vec.astype(np.float32)
    arrays["history_offsets"] = np.asarray(offsets, dtype=np.int64)

    def stats(x):
        return float(np.float32(x.mean())), float(np.float32(max(x.std(), 1e-6)))

    um, us = stats(arrays["user_numeric"][:, 0])
    cm, cs = stats(arrays["candidate_numeric"][:, 0])
    pm, ps = stats(arrays["candidate_numeric"][:, 1])
    cfg = {
        "format": dr.FORMAT, "version": dr.VERSION, "body": "mmoe", "item_vector_dim": d,
        "user_categorical": [{"name": "gender", "vocab": genders, "dim": 4},
                             {"name": "age_band", "vocab": ages, "dim": 4}],
        "user_numeric": [{"name": "log_history_events", "mean": um, "std": us}],
        "item_categorical": [{"name": "category", "vocab": cats, "dim": 8},
                             {"name": "brand", "vocab": brands, "dim": 4}],
        "item_numeric": [{"name": "coarse_score", "mean": cm, "std": cs},
                         {"name": "log_price", "mean": pm, "std": ps}],
        "history_category_feature": 0, "history_length": args.history_length,
        "recency_bounds_s": bounds, "attention_dim": 16, "experts": 3,
        "expert_hidden": [64, 32], "tower_hidden": [16],
        "tasks": [
            {"name": "ctr", "kind": "binary", "parent": "", "loss_weight": 1.0, "label": "click"},
            {"name": "cvr", "kind": "ctcvr", "parent": "ctr", "loss_weight": 1.0,
             "label": "purchase"},
            {"name": "dwell", "kind": "regression", "parent": "", "loss_weight": 0.5,
             "label": "dwell"},
        ],
        "dropout": 0.1,
        "fusion": {"kind": "weighted_product",
                   "weights": [["ctr", 1.0], ["cvr", 1.0], ["dwell", 0.5]], "epsilon": 1e-06},
    }
    dr.validate_config(cfg)
    order = np.argsort(arrays["ts"], kind="stable")
    n_val = int(round(len(order) * args.validation_fraction))
    os.makedirs(args.out, exist_ok=True)
    dr.save_examples(os.path.join(args.out, "train.safetensors"),
                     dr.subset_examples(arrays, order[:len(order) - n_val]))
    dr.save_examples(os.path.join(args.out, "validation.safetensors"),
                     dr.subset_examples(arrays, order[len(order) - n_val:]))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        f.write(dr.config_to_json(cfg))
    print("%d users, %d events, %d candidates (%d validation), click rate %.3f"
          % (args.users, offsets[-1], len(order), n_val, arrays["labels"][:, 0].mean()))


if __name__ == "__main__":
    main()
