#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the deep ranker fixtures tests/data/deep_ranker/{mmoe,shared_bottom}/.

Each case directory holds:
  config.json, model.safetensors  a funnel model directory (random seeded F32
                                  weights, non-zero biases), as in deep_ranker.hpp
  inputs.safetensors              a DeepRankerExamples file: 6 items (vectors stored
                                  once, rows repeated across events and candidates),
                                  3 users (one without history), ragged histories,
                                  7 candidates in mixed user order (users first used
                                  in the order 0, 2, 1), out-of-vocabulary (0) and
                                  last-index values, every event type and recency
                                  bucket, labels with NaN (dwell, and one cvr) and ts
  expected.safetensors            "outputs" [nc, T] (forward, no dropout),
                                  "loss" [1] (the training loss over all rows, no
                                  dropout, no weight decay) and "grad.<name>" for
                                  every parameter (d loss / d parameter)

The reference is computed in float64 from the float32 weights and inputs as
stored, by the PyTorch module of deep_ranker.py (autograd), and stored as F32.
It is trusted because an independent plain-numpy forward pass written here
(explicit per-candidate loops over the user's events) must agree with it to
1e-10 (outputs and loss), and central finite differences of that numpy loss
must agree with every autograd gradient entry (to 1e-7 absolute + 1e-6
relative). Every ReLU pre-activation and every softmax input is kept away
from kinks (|pre-activation| >= 1e-3) so finite differences are valid.

Run (deterministic for a given numpy version):
    nice -n 19 /usr/bin/python3 tools/deep_ranker/make_fixture.py --out tests/data/deep_ranker
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deep_ranker as dr  # noqa: E402

# ---------------------------------------------------------------------------
# Configs


def make_config(body):
    return {
        "format": dr.FORMAT,
        "version": dr.VERSION,
        "body": body,
        "item_vector_dim": 6,
        "user_categorical": [
            {"name": "gender", "vocab": ["f", "m"], "dim": 3},
            {"name": "age_band", "vocab": ["18-24", "25-34", "35-44"], "dim": 2},
        ],
        "user_numeric": [{"name": "log_history_events", "mean": 1.25, "std": 0.75}],
        "item_categorical": [
            {"name": "category", "vocab": ["books", "shoes", "toys", "tools"], "dim": 3},
            {"name": "brand", "vocab": ["acme", "globex", "initech"], "dim": 2},
        ],
        "item_numeric": [
            {"name": "coarse_score", "mean": 0.5, "std": 2.0},
            {"name": "log_price", "mean": 3.0, "std": 1.5},
        ],
        "history_category_feature": 0,
        "history_length": 5,
        "recency_bounds_s": [3600, 86400, 604800],
        "attention_dim": 4,
        "experts": 3 if body == "mmoe" else 1,
        "expert_hidden": [8, 5],
        "tower_hidden": [4],
        "tasks": [
            {"name": "ctr", "kind": "binary", "parent": "", "loss_weight": 1.0, "label": "click"},
            {"name": "cvr", "kind": "ctcvr", "parent": "ctr", "loss_weight": 0.75,
             "label": "purchase"},
            {"name": "dwell", "kind": "regression", "parent": "", "loss_weight": 0.5,
             "label": "dwell"},
        ],
        "dropout": 0.25,
        "fusion": {"kind": "weighted_product",
                   "weights": [["ctr", 1.0], ["cvr", 1.0], ["dwell", 0.5]], "epsilon": 1e-06},
    }


# ---------------------------------------------------------------------------
# Inputs


def make_inputs(cfg, rng):
    d = cfg["item_vector_dim"]
    now = 1_700_000_000
    bounds = cfg["recency_bounds_s"]
    # Users: 0 has 5 events (= history_length), 1 none, 2 has 3.
    counts = [5, 0, 3]
    nu = len(counts)
    user_categorical = np.array([[1, 3], [0, 2], [2, 0]], dtype=np.int32)  # OOV and last index
    user_numeric = np.array([[1.9], [0.0], [1.4]], dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ne = int(offsets[-1])
    # Item table: events and candidates refer to its rows; item 3 appears in
    # both users' histories, item 0 twice in one history.
    n_items = 6
    item_vectors = rng.normal(0, 0.6, size=(n_items, d)).astype(np.float32)
    history_item = np.array([0, 3, 1, 0, 5, 3, 2, 4], dtype=np.int32)
    assert len(history_item) == ne
    n_cat = len(cfg["item_categorical"][cfg["history_category_feature"]]["vocab"])
    history_category = np.array([1, 4, 0, 2, 4, 3, 0, 1], dtype=np.int32)
    history_type = np.array([0, 1, 2, 3, 1, 0, 3, 2], dtype=np.int32)
    ages = np.array([30, 7200, 200000, 1000000, 50, 90000, 3599, 3600], dtype=np.int64)
    history_recency = np.array([sum(1 for b in bounds if a >= b) for a in ages], dtype=np.int32)
    assert history_category.max() == n_cat and set(history_recency) == set(range(len(bounds) + 1))
    assert set(history_type) == set(range(dr.EVENT_TYPES))
    candidate_user = np.array([0, 2, 1, 0, 2, 1, 0], dtype=np.int32)
    nc = len(candidate_user)
    candidate_item = np.array([1, 3, 4, 2, 3, 0, 5], dtype=np.int32)
    candidate_categorical = np.array(
        [[1, 1], [4, 3], [0, 2], [2, 0], [3, 1], [4, 0], [0, 3]], dtype=np.int32)
    candidate_numeric = np.array(
        [[0.3, 2.5], [1.7, 4.1], [-0.8, 3.0], [2.2, 0.0], [0.1, 5.2], [0.9, 2.2], [-1.5, 3.6]],
        dtype=np.float32)
    nan = np.nan
    labels = np.array([
        [1, 1, math.log1p(35.0)],
        [0, 0, nan],
        [1, 0, math.log1p(4.0)],
        [0, 0, nan],
        [1, nan, math.log1p(120.0)],
        [0, 0, nan],
        [1, 0, math.log1p(12.0)],
    ], dtype=np.float32)
    ts = np.array([now + 10 * i for i in range(nc)], dtype=np.int64)
    return {
        "item_vectors": item_vectors,
        "user_categorical": user_categorical, "user_numeric": user_numeric,
        "history_offsets": offsets, "history_item": history_item,
        "history_category": history_category, "history_type": history_type,
        "history_recency": history_recency, "candidate_user": candidate_user,
        "candidate_item": candidate_item, "candidate_categorical": candidate_categorical,
        "candidate_numeric": candidate_numeric, "labels": labels, "ts": ts,
    }, nu, nc


def make_weights(cfg, rng):
    w = {}
    for name, shape in dr.parameter_shapes(cfg):
        if name.endswith(".embedding"):
            w[name] = rng.normal(0, 0.5, size=shape)
        elif name.endswith(".bias"):
            w[name] = rng.uniform(-0.3, 0.3, size=shape)
        else:
            bound = math.sqrt(6.0 / shape[1])
            w[name] = rng.uniform(-bound, bound, size=shape)
    return {k: v.astype(np.float32) for k, v in w.items()}


# ---------------------------------------------------------------------------
# Independent numpy forward pass (float64), written from the header's text.


def numpy_forward(cfg, w, ex, record=None):
    """Logits [nc, T] and the loss; record (a list) collects values that must stay
    away from kinks (ReLU pre-activations)."""
    def emb(name, idx):
        return w[name][idx]

    d = cfg["item_vector_dim"]
    a_dim = cfg["attention_dim"]
    hname = "item.%s.embedding" % cfg["item_categorical"][cfg["history_category_feature"]]["name"]
    hcf = cfg["history_category_feature"]
    nc = ex["candidate_user"].shape[0]
    logits = np.zeros((nc, len(cfg["tasks"])))
    for i in range(nc):
        usr = int(ex["candidate_user"][i])
        # u
        u = []
        for k, f in enumerate(cfg["user_categorical"]):
            u.extend(emb("user.%s.embedding" % f["name"], ex["user_categorical"][usr, k]))
        for k, f in enumerate(cfg["user_numeric"]):
            m, s = float(np.float32(f["mean"])), float(np.float32(f["std"]))
            u.append((float(ex["user_numeric"][usr, k]) - m) / s)
        # c (the candidate's item vector: a row of the item table)
        cv = ex["item_vectors"][ex["candidate_item"][i]].astype(np.float64)
        c = list(cv)
        for k, f in enumerate(cfg["item_categorical"]):
            c.extend(emb("item.%s.embedding" % f["name"], ex["candidate_categorical"][i, k]))
        for k, f in enumerate(cfg["item_numeric"]):
            m, s = float(np.float32(f["mean"])), float(np.float32(f["std"]))
            c.append((float(ex["candidate_numeric"][i, k]) - m) / s)
        # attention
        t = np.concatenate([cv, w[hname][ex["candidate_categorical"][i, hcf]]])
        q = np.zeros(a_dim)
        for r in range(a_dim):
            q[r] = sum(w["attention.query.weight"][r, j] * t[j] for j in range(len(t)))
            q[r] += w["attention.query.bias"][r]
        lo, hi = int(ex["history_offsets"][usr]), int(ex["history_offsets"][usr + 1])
        pvec = np.zeros(a_dim)
        if hi > lo:
            scores, values = [], []
            for j in range(lo, hi):
                h = np.concatenate([ex["item_vectors"][ex["history_item"][j]].astype(np.float64),
                                    w[hname][ex["history_category"][j]]])
                key = (w["attention.key.weight"].dot(h) + w["attention.key.bias"]
                       + w["history.type.embedding"][ex["history_type"][j]]
                       + w["history.recency.embedding"][ex["history_recency"][j]])
                val = w["attention.value.weight"].dot(h) + w["attention.value.bias"]
                scores.append(float(np.dot(q, key)) / math.sqrt(a_dim))
                values.append(val)
            top = max(scores)
            ex_s = [math.exp(s - top) for s in scores]
            z = sum(ex_s)
            for a_ij, val in zip(ex_s, values):
                pvec += (a_ij / z) * val
        x = np.array(u + c + list(pvec))
        assert len(x) == dr.widths(cfg)[3] and len(c) == dr.widths(cfg)[1] and d > 0
        # experts
        ys = []
        for e in range(cfg["experts"]):
            a = x
            for l in range(len(cfg["expert_hidden"])):
                pre = w["expert.%d.%d.weight" % (e, l)].dot(a) + w["expert.%d.%d.bias" % (e, l)]
                if record is not None:
                    record.extend(np.abs(pre))
                a = np.where(pre > 0, pre, 0.0)
            ys.append(a)
        for k, task in enumerate(cfg["tasks"]):
            if cfg["body"] == "mmoe":
                gl = w["gate.%s.weight" % task["name"]].dot(x) + w["gate.%s.bias" % task["name"]]
                gl = np.exp(gl - gl.max())
                g = gl / gl.sum()
                m = sum(g[e] * ys[e] for e in range(cfg["experts"]))
            else:
                m = ys[0]
            z = m
            for l in range(len(cfg["tower_hidden"])):
                pre = (w["tower.%s.%d.weight" % (task["name"], l)].dot(z)
                       + w["tower.%s.%d.bias" % (task["name"], l)])
                if record is not None:
                    record.extend(np.abs(pre))
                z = np.maximum(pre, 0.0)
            last = len(cfg["tower_hidden"])
            logits[i, k] = float(w["tower.%s.%d.weight" % (task["name"], last)].dot(z)[0]
                                 + w["tower.%s.%d.bias" % (task["name"], last)][0])
    # outputs and loss
    outputs = np.zeros_like(logits)
    loss = 0.0
    names = [t["name"] for t in cfg["tasks"]]
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    for k, task in enumerate(cfg["tasks"]):
        rows = []
        for i in range(nc):
            o = logits[i, k]
            outputs[i, k] = o if task["kind"] == "regression" else sig(o)
            y = float(ex["labels"][i, k])
            if math.isnan(y):
                continue
            if task["kind"] == "binary":
                p = sig(o)
                rows.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
            elif task["kind"] == "ctcvr":
                p = sig(logits[i, names.index(task["parent"])]) * sig(o)
                rows.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
            else:
                rows.append((o - y) ** 2)
        if rows:
            loss += float(np.float32(task["loss_weight"])) * sum(rows) / len(rows)
    return logits, outputs, loss


# ---------------------------------------------------------------------------


def build_case(body, out_dir, seed):
    cfg = make_config(body)
    dr.validate_config(cfg)
    for attempt in range(100):
        rng = np.random.default_rng(seed + 1000 * attempt)
        ex, nu, nc = make_inputs(cfg, rng)
        w32 = make_weights(cfg, rng)
        w64 = {k: v.astype(np.float64) for k, v in w32.items()}
        record = []
        _, outs, _ = numpy_forward(cfg, w64, ex, record)
        # Kinks away; outputs not saturated; some ReLU units alive and some not.
        if min(record) >= 1e-3 and np.all(np.abs(outs[:, :2] - 0.5) < 0.45):
            break
    else:
        raise RuntimeError("no seed gave kink-free activations")
    print("%s: seed attempt %d, min |ReLU pre-activation| %.2e" % (body, attempt, min(record)))

    # Torch reference in float64.
    model = dr.DeepRanker(cfg, dtype=torch.float64)
    with torch.no_grad():
        for name, _ in dr.parameter_shapes(cfg):
            model.p(name).copy_(torch.from_numpy(w64[name]))
    model.eval()
    # The batch renumbers users by first use (0, 2, 1 -> 0, 1, 2), as
    # DeepRankerExamples::gather does; the numpy pass below reads the
    # examples directly.
    assert list(dr.gather(ex)["candidate_user"]) == [0, 1, 2, 0, 1, 2, 0]
    batch = dr.to_torch_batch(ex, torch.float64)
    logits = model(batch)
    outputs = model.outputs(logits)
    loss = model.loss(logits, batch["labels"])
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.funnel_parameters()}

    # Cross-check against the numpy pass.
    np_logits, np_outputs, np_loss = numpy_forward(cfg, w64, ex)
    err_out = float(np.max(np.abs(np_outputs - outputs.detach().numpy())))
    err_logit = float(np.max(np.abs(np_logits - logits.detach().numpy())))
    err_loss = abs(np_loss - float(loss))
    assert err_out < 1e-10 and err_logit < 1e-10 and err_loss < 1e-10, (err_out, err_loss)

    # Finite differences of the numpy loss for every parameter entry.
    h = 1e-6
    worst = 0.0
    n_entries = 0
    for name, g in grads.items():
        flat = w64[name].reshape(-1)
        gflat = g.reshape(-1)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + h
            lp = numpy_forward(cfg, w64, ex)[2]
            flat[j] = keep - h
            lm = numpy_forward(cfg, w64, ex)[2]
            flat[j] = keep
            fd = (lp - lm) / (2 * h)
            err = abs(fd - gflat[j])
            assert err < 1e-7 + 1e-6 * abs(fd), (name, j, fd, gflat[j])
            worst = max(worst, err)
            n_entries += 1
    # Dropout is active in training mode and only there.
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(batch), logits)
    model.eval()
    assert torch.equal(model(batch), logits)

    print("%s: torch vs numpy: outputs %.1e, logits %.1e, loss %.1e; autograd vs finite "
          "differences over %d entries: max abs err %.1e" % (body, err_out, err_logit, err_loss,
                                                             n_entries, worst))
    print("%s: loss %.6f, outputs range ctr [%.3f, %.3f] cvr [%.3f, %.3f] dwell [%.3f, %.3f]"
          % (body, float(loss), outputs[:, 0].min(), outputs[:, 0].max(), outputs[:, 1].min(),
             outputs[:, 1].max(), outputs[:, 2].min(), outputs[:, 2].max()))
    zero_grads = [n for n, g in grads.items() if not np.any(g)]
    if zero_grads:
        print("%s: parameters with an all-zero gradient: %s" % (body, zero_grads))

    # Write the case.
    case = os.path.join(out_dir, body)
    os.makedirs(case, exist_ok=True)
    dr.save_model(case, cfg, w32)
    dr.save_examples(os.path.join(case, "inputs.safetensors"), ex)
    expected = [("outputs", outputs.detach().numpy().astype(np.float32)),
                ("loss", np.array([float(loss)], dtype=np.float32))]
    expected += [("grad." + n, grads[n].astype(np.float32)) for n, _ in dr.parameter_shapes(cfg)]
    dr.write_safetensors(os.path.join(case, "expected.safetensors"), expected)

    # Read back what was written and check it against the reference.
    cfg2, m2 = dr.load_model(case, torch.float64)
    ex2 = dr.load_examples(os.path.join(case, "inputs.safetensors"), cfg2)
    m2.eval()
    with torch.no_grad():
        again = m2.outputs(m2(dr.to_torch_batch(ex2, torch.float64))).numpy()
    assert np.array_equal(again, outputs.detach().numpy())
    with open(os.path.join(case, "config.json")) as f:
        assert json.load(f)["weights_sha"] == dr.checksum64_file(
            os.path.join(case, "model.safetensors"))
    sizes = {f: os.path.getsize(os.path.join(case, f)) for f in sorted(os.listdir(case))}
    print("%s: %s" % (body, sizes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "tests", "data", "deep_ranker"))
    ap.add_argument("--seed", type=int, default=20240517)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for i, body in enumerate(("mmoe", "shared_bottom")):
        build_case(body, os.path.normpath(args.out), args.seed + i)


if __name__ == "__main__":
    main()
