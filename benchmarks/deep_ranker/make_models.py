#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Builds the models, ONNX exports and inputs of the fine-ranker benchmark.

For each model shape (--models; see SHAPES) it writes under --out (a cache
directory outside git):

  <name>/config.json, model.safetensors
      a funnel model directory (format "funnel.deep_ranker") with random
      weights, written by tools/deep_ranker/deep_ranker.py: what funnel's
      DeepRankerModel::load and the PyTorch twin load;
  <name>/usual.onnx
      the same network exported as a per-example model, the way a model
      trained per (user, candidate) row is usually exported: every input has
      the candidate axis, so the caller broadcasts the user's features and
      padded history (with a 0/1 mask) to every candidate, and the graph
      computes each candidate's history keys and values and its user part of
      the first layers again;
  <name>/careful.onnx
      the same network exported for one request: user inputs with batch 1,
      the history as [events, ...] (no padding), candidates as [nc, ...];
      the graph computes the user's part of the first expert and gate layers
      and the history keys and values once and broadcasts them inside the
      graph; the first layers of all experts and gates are one matrix (one
      GEMM for [candidate, pooled history] of every candidate), the experts'
      outputs are mixed by one batched MatMul;
  <name>/requests/nc<n>.safetensors
      one request: one user with a full history (history_length events) and
      n candidates drawn from a synthetic catalogue of 5,000 items, as the arrays of a DeepRankerBatch (tensor names = its
      member names: user_categorical, ..., history_vectors, ...,
      candidate_numeric; I32 indices, I64 offsets, F32), for n in
      CANDIDATES. Every runtime reads these files;

and, for the training-throughput comparison (the first model only):

  <name>/train/config.json, train.safetensors, validation.safetensors
      synthetic labelled examples over the same catalogue (the layout `funnel
      train --export-examples` writes, through deep_ranker.py's
      save_examples): --train-steps x --batch-size training
      rows (so one epoch is exactly that many steps), a small validation set.

Both exports are checked here against the PyTorch twin on every request
(max |diff| <= 1e-5) before they are kept. Files that exist with the same
parameters are kept (stamp.json); --force rebuilds.

Run with Debian's python (torch 1.13, numpy):
    /usr/bin/python3 benchmarks/deep_ranker/make_models.py --out build-bench-deep/deep-ranker-models
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "deep_ranker"))
import deep_ranker as dr  # noqa: E402

# name -> network shape (everything else is shared, see make_config)
SHAPES = {
    "default": {"experts": 4, "expert_hidden": [256, 128], "tower_hidden": [64],
                "history_length": 50},
    "large": {"experts": 8, "expert_hidden": [512, 256], "tower_hidden": [128],
              "history_length": 100},
}
ITEM_VECTOR_DIM = 128  # D
ATTENTION_DIM = 32  # A
EMBEDDING_DIM = 16  # DeepFeatureConfig::embedding_dim's default
CANDIDATES = (1, 100, 1000)
# Bumped whenever the generated files change, so stale caches are rebuilt.
FORMAT_VERSION = 3
OPSET = 14
# A request file's tensors: DeepRankerBatch's members (the layout every runner reads).
BATCH_KEYS = ("user_categorical", "user_numeric", "history_offsets", "history_vectors",
              "history_category", "history_type", "history_recency", "candidate_user",
              "candidate_vectors", "candidate_categorical", "candidate_numeric")


def vocab(prefix, n):
    return ["%s%d" % (prefix, i) for i in range(n)]


# DeepFineRanker's default item numerics (include/funnel/deep_fine_ranker.hpp)
# with plausible standardisation statistics; requests draw the ones after
# log_popularity per candidate from N(mean, std).
ITEM_NUMERIC = [("coarse_score", 0.0, 0.1), ("log_price", 3.0, 1.0), ("log_popularity", 2.0, 1.5),
                ("price_vs_category", 0.0, 0.5), ("item_ctr_prior", -3.0, 0.5),
                ("item_cvr_prior", -2.2, 0.4), ("item_dwell_prior", 3.3, 0.3),
                ("sim_max", 0.5, 0.2), ("seen_item", 0.1, 0.3), ("purchased_item", 0.01, 0.1),
                ("category_share", 0.2, 0.25), ("brand_share", 0.05, 0.1),
                ("brand_purchased", 0.1, 0.3), ("relative_price_gap", 0.0, 0.5)]


def make_config(name):
    """The benchmark's config: DeepFineRanker's default features (user
    age_band, gender, location + log_history_events; item category, brand,
    price_band + the 14 item numerics of ITEM_NUMERIC; embeddings of 16;
    history tokens carry the category), D = 128, A = 32, the default tasks
    (ctr, cvr as ctcvr of ctr, dwell), and the shape of SHAPES[name]."""
    s = SHAPES[name]
    ages = ["<18", "18-24", "25-34", "35-44", "45-54", "55+"]
    cfg = {
        "format": dr.FORMAT, "version": dr.VERSION, "body": "mmoe",
        "item_vector_dim": ITEM_VECTOR_DIM,
        "user_categorical": [
            {"name": "age_band", "vocab": ages, "dim": EMBEDDING_DIM},
            {"name": "gender", "vocab": ["f", "m"], "dim": EMBEDDING_DIM},
            {"name": "location", "vocab": vocab("loc", 50), "dim": EMBEDDING_DIM}],
        "user_numeric": [{"name": "log_history_events", "mean": 3.0, "std": 1.0}],
        "item_categorical": [
            {"name": "category", "vocab": vocab("cat", 100), "dim": EMBEDDING_DIM},
            {"name": "brand", "vocab": vocab("brand", 500), "dim": EMBEDDING_DIM},
            {"name": "price_band", "vocab": [str(i) for i in range(10)], "dim": EMBEDDING_DIM}],
        "item_numeric": [{"name": n, "mean": m, "std": sd} for n, m, sd in ITEM_NUMERIC],
        "history_category_feature": 0,
        "history_length": s["history_length"],
        "recency_bounds_s": [3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
                             90 * 86400],
        "attention_dim": ATTENTION_DIM,
        "experts": s["experts"],
        "expert_hidden": s["expert_hidden"],
        "tower_hidden": s["tower_hidden"],
        "tasks": [
            {"name": "ctr", "kind": "binary", "parent": "", "loss_weight": 1.0, "label": "click"},
            {"name": "cvr", "kind": "ctcvr", "parent": "ctr", "loss_weight": 1.0,
             "label": "purchase"},
            {"name": "dwell", "kind": "regression", "parent": "", "loss_weight": 0.5,
             "label": "dwell"}],
        "dropout": 0.1,
        "fusion": {"kind": "weighted_product",
                   "weights": [["ctr", 1.0], ["cvr", 1.0], ["dwell", 0.5]], "epsilon": 1e-06},
    }
    dr.validate_config(cfg)
    return cfg


def random_model(cfg, seed):
    """The twin with the trainer's initialisation and small random biases
    (so that every bias takes part in the accuracy checks)."""
    model = dr.DeepRanker(cfg, torch.float32)
    dr.init_parameters(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.funnel_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.05, generator=g)
    return model.eval()


def unit_rows(rng, n, d):
    v = rng.normal(0.0, 1.0, size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


N_ITEMS = 5000  # the synthetic catalogue that history events and candidates draw from


def make_items(cfg, rng, n_items):
    """A synthetic catalogue: unit text vectors, category / brand / price band
    indices (an unknown brand, index 0, now and then), log price and log
    popularity."""
    n_ic = [len(f["vocab"]) for f in cfg["item_categorical"]]
    cat = np.stack([rng.integers(1, n + 1, size=n_items) for n in n_ic], 1)
    cat[rng.random(n_items) < 0.05, 1] = 0
    return {"vectors": unit_rows(rng, n_items, cfg["item_vector_dim"]),
            "categorical": cat.astype(np.int32),
            "log_price": rng.normal(3.0, 1.0, size=n_items),
            "log_popularity": rng.normal(2.0, 1.5, size=n_items)}


def make_users(cfg, rng, items, users, history_lengths, impressions, now):
    """Examples (DeepRankerExamples layout: vectors stored once in
    item_vectors, events and candidates refer to rows of it) of `users` users
    with the given history lengths and `impressions` candidates each, drawn
    from the catalogue `items`; labels: a click with probability 0.2, a
    purchase after a click with 0.3 (joint label), dwell log(1 + s) for
    clicks, NaN otherwise."""
    n_uc = [len(f["vocab"]) for f in cfg["user_categorical"]]
    hcf = cfg["history_category_feature"]
    n_rec = len(cfg["recency_bounds_s"]) + 1
    n_items = items["vectors"].shape[0]
    ex = {"item_vectors": items["vectors"]}
    # Indices 0..vocab: 0 (out of vocabulary) included now and then.
    ex["user_categorical"] = np.stack([rng.integers(0, n + 1, size=users) for n in n_uc],
                                      1).astype(np.int32)
    ex["user_numeric"] = np.log1p(np.asarray(history_lengths, dtype=np.float32))[:, None]
    ex["history_offsets"] = np.concatenate([[0], np.cumsum(history_lengths)]).astype(np.int64)
    ne = int(ex["history_offsets"][-1])
    ex["history_item"] = rng.integers(0, n_items, size=ne).astype(np.int32)
    ex["history_category"] = items["categorical"][ex["history_item"], hcf]
    ex["history_type"] = rng.choice(4, size=ne, p=[0.5, 0.3, 0.1, 0.1]).astype(np.int32)
    ex["history_recency"] = rng.integers(0, n_rec, size=ne).astype(np.int32)
    nc = users * impressions
    ex["candidate_user"] = np.repeat(np.arange(users), impressions).astype(np.int32)
    ex["candidate_item"] = rng.integers(0, n_items, size=nc).astype(np.int32)
    it = ex["candidate_item"]
    ex["candidate_categorical"] = items["categorical"][it]
    ex["candidate_numeric"] = np.stack(
        [rng.normal(0.0, 0.1, size=nc), items["log_price"][it], items["log_popularity"][it]] +
        [rng.normal(m, sd, size=nc) for _, m, sd in ITEM_NUMERIC[3:]], 1).astype(np.float32)
    click = rng.random(nc) < 0.2
    buy = click & (rng.random(nc) < 0.3)
    dwell = np.where(click, np.log1p(rng.exponential(30.0, size=nc)), np.nan)
    ex["labels"] = np.stack([click, buy, dwell], 1).astype(np.float32)
    ex["ts"] = np.full(nc, now, dtype=np.int64)
    return ex


def as_batch(ex):
    """The DeepRankerBatch arrays of examples whose candidates are in user
    order (as make_users writes them): the item vectors copied in."""
    batch = {k: ex[k] for k in BATCH_KEYS if k in ex}
    batch["history_vectors"] = ex["item_vectors"][ex["history_item"]]
    batch["candidate_vectors"] = ex["item_vectors"][ex["candidate_item"]]
    return batch


def save_training_examples(path, ex):
    """Writes examples through the twin's save_examples, in the layout the
    twin (and funnel, which changes with it) reads: vectors stored once
    (item_vectors) or, with a twin of the earlier per-event layout, copied
    into every event and candidate."""
    if "item_vectors" in getattr(dr, "EXAMPLE_KEYS", ()):
        dr.save_examples(path, ex)
    else:
        batch = as_batch(ex)
        batch.update({k: ex[k] for k in ("labels", "ts")})
        dr.save_examples(path, batch)


class UsualNet(nn.Module):
    """The per-example network: every input has the candidate axis; the
    history is padded to history_length with a 0/1 mask."""

    def __init__(self, twin):
        super().__init__()
        self.t = twin
        self.cfg = twin.cfg

    def forward(self, user_categorical, user_numeric, history_vectors, history_category,
                history_type, history_recency, history_mask, candidate_vectors,
                candidate_categorical, candidate_numeric):
        cfg, t = self.cfg, self.t
        a_dim = cfg["attention_dim"]
        parts = [t.p("user.%s.embedding" % f["name"])[user_categorical[:, k]]
                 for k, f in enumerate(cfg["user_categorical"])]
        parts.append((user_numeric - t.user_mean) / t.user_std)
        u = torch.cat(parts, 1)
        parts = [candidate_vectors]
        parts += [t.p("item.%s.embedding" % f["name"])[candidate_categorical[:, k]]
                  for k, f in enumerate(cfg["item_categorical"])]
        parts.append((candidate_numeric - t.item_mean) / t.item_std)
        c = torch.cat(parts, 1)
        hcf = cfg["history_category_feature"]
        table = t.p("item.%s.embedding" % cfg["item_categorical"][hcf]["name"])
        tq = torch.cat([candidate_vectors, table[candidate_categorical[:, hcf]]], 1)
        q = t._linear(tq, "attention.query")  # [nc, A]
        h = torch.cat([history_vectors, table[history_category]], 2)  # [nc, N, Hd]
        key = (t._linear(h, "attention.key") + t.p("history.type.embedding")[history_type]
               + t.p("history.recency.embedding")[history_recency])
        value = t._linear(h, "attention.value")
        s = torch.matmul(key, q.unsqueeze(2)).squeeze(2) / math.sqrt(a_dim)  # [nc, N]
        s = torch.where(history_mask > 0, s, torch.full_like(s, -1e30))
        att = torch.softmax(s, dim=1) * history_mask
        pooled = torch.matmul(att.unsqueeze(1), value).squeeze(1)
        x = torch.cat([u, c, pooled], 1)
        ys = []
        for e in range(cfg["experts"]):
            a = x
            for l in range(len(cfg["expert_hidden"])):
                a = torch.relu(t._linear(a, "expert.%d.%d" % (e, l)))
            ys.append(a)
        y = torch.stack(ys, 1)
        cols = []
        for task in cfg["tasks"]:
            g = torch.softmax(t._linear(x, "gate." + task["name"]), dim=1)
            z = torch.matmul(g.unsqueeze(1), y).squeeze(1)
            for l in range(len(cfg["tower_hidden"])):
                z = torch.relu(t._linear(z, "tower.%s.%d" % (task["name"], l)))
            o = t._linear(z, "tower.%s.%d" % (task["name"], len(cfg["tower_hidden"])))
            cols.append(o if task["kind"] == "regression" else torch.sigmoid(o))
        return torch.cat(cols, 1)


class CarefulNet(nn.Module):
    """The per-request network: the user side once, broadcast in the graph."""

    def __init__(self, twin):
        super().__init__()
        self.t = twin
        cfg = self.cfg = twin.cfg
        u_w, c_w, _, _ = dr.widths(cfg)
        e, h0 = cfg["experts"], cfg["expert_hidden"][0]
        self.h0 = h0
        # First layers of all experts, then all gates, as one [M, X] matrix.
        with torch.no_grad():
            w = torch.cat([twin.p("expert.%d.0.weight" % i) for i in range(e)]
                          + [twin.p("gate.%s.weight" % task["name"]) for task in cfg["tasks"]])
            b = torch.cat([twin.p("expert.%d.0.bias" % i) for i in range(e)]
                          + [twin.p("gate.%s.bias" % task["name"]) for task in cfg["tasks"]])
        self.register_buffer("w_user", w[:, :u_w].t().contiguous())  # [U, M]
        self.register_buffer("w_cand", w[:, u_w:].t().contiguous())  # [C + A, M]
        self.register_buffer("b_first", b.clone())

    def forward(self, user_categorical, user_numeric, history_vectors, history_category,
                history_type, history_recency, candidate_vectors, candidate_categorical,
                candidate_numeric):
        cfg, t = self.cfg, self.t
        a_dim = cfg["attention_dim"]
        n_e, n_t = cfg["experts"], len(cfg["tasks"])
        parts = [t.p("user.%s.embedding" % f["name"])[user_categorical[:, k]]
                 for k, f in enumerate(cfg["user_categorical"])]
        parts.append((user_numeric - t.user_mean) / t.user_std)
        u = torch.cat(parts, 1)  # [1, U]
        user_part = torch.matmul(u, self.w_user) + self.b_first  # [1, M], once
        hcf = cfg["history_category_feature"]
        table = t.p("item.%s.embedding" % cfg["item_categorical"][hcf]["name"])
        h = torch.cat([history_vectors, table[history_category]], 1)  # [n, Hd]
        key = (t._linear(h, "attention.key") + t.p("history.type.embedding")[history_type]
               + t.p("history.recency.embedding")[history_recency])  # [n, A], once
        value = t._linear(h, "attention.value")  # [n, A], once
        tq = torch.cat([candidate_vectors, table[candidate_categorical[:, hcf]]], 1)
        q = t._linear(tq, "attention.query")  # [nc, A]
        s = torch.matmul(q, key.t()) / math.sqrt(a_dim)  # [nc, n]
        pooled = torch.matmul(torch.softmax(s, dim=1), value)  # [nc, A]
        parts = [candidate_vectors]
        parts += [t.p("item.%s.embedding" % f["name"])[candidate_categorical[:, k]]
                  for k, f in enumerate(cfg["item_categorical"])]
        parts.append((candidate_numeric - t.item_mean) / t.item_std)
        parts.append(pooled)
        first = torch.matmul(torch.cat(parts, 1), self.w_cand) + user_part  # [nc, M]
        ys = []
        for e in range(n_e):
            a = torch.relu(first[:, e * self.h0:(e + 1) * self.h0])
            for l in range(1, len(cfg["expert_hidden"])):
                a = torch.relu(t._linear(a, "expert.%d.%d" % (e, l)))
            ys.append(a)
        y = torch.stack(ys, 1)  # [nc, E, W]
        gates = first[:, n_e * self.h0:].reshape(-1, n_t, n_e)
        m = torch.matmul(torch.softmax(gates, dim=2), y)  # [nc, T, W]
        cols = []
        for k, task in enumerate(cfg["tasks"]):
            z = m[:, k]
            for l in range(len(cfg["tower_hidden"])):
                z = torch.relu(t._linear(z, "tower.%s.%d" % (task["name"], l)))
            o = t._linear(z, "tower.%s.%d" % (task["name"], len(cfg["tower_hidden"])))
            cols.append(o if task["kind"] == "regression" else torch.sigmoid(o))
        return torch.cat(cols, 1)


def torch_batch(arrays):
    """The twin's input dict of a request's batch arrays (int64 indices, f32)."""
    out = {}
    for k in BATCH_KEYS:
        a = np.ascontiguousarray(arrays[k])
        out[k] = torch.from_numpy(a.astype(np.float32) if a.dtype == np.float32
                                  else a.astype(np.int64))
    return out


def read_request(path):
    """A request file's arrays (DeepRankerBatch member names)."""
    tensors, _ = dr.read_safetensors(path)
    return {k: tensors[k] for k in BATCH_KEYS}


USUAL_INPUTS = ["user_categorical", "user_numeric", "history_vectors", "history_category",
                "history_type", "history_recency", "history_mask", "candidate_vectors",
                "candidate_categorical", "candidate_numeric"]
CAREFUL_INPUTS = [n for n in USUAL_INPUTS if n != "history_mask"]


def careful_feeds(req):
    """The careful export's inputs for a one-user request (numpy)."""
    n = int(req["history_offsets"][1])
    return {
        "user_categorical": req["user_categorical"][:1].astype(np.int64),
        "user_numeric": req["user_numeric"][:1].astype(np.float32),
        "history_vectors": req["history_vectors"][:n],
        "history_category": req["history_category"][:n].astype(np.int64),
        "history_type": req["history_type"][:n].astype(np.int64),
        "history_recency": req["history_recency"][:n].astype(np.int64),
        "candidate_vectors": req["candidate_vectors"],
        "candidate_categorical": req["candidate_categorical"].astype(np.int64),
        "candidate_numeric": req["candidate_numeric"],
    }


def usual_feeds(req, history_length):
    """The usual export's inputs: the user side tiled to every candidate, the
    history padded to history_length (bench_ort.js builds the same)."""
    f = careful_feeds(req)
    nc = f["candidate_vectors"].shape[0]
    n = f["history_vectors"].shape[0]

    def pad(a):
        out = np.zeros((history_length,) + a.shape[1:], dtype=a.dtype)
        out[:n] = a
        return out

    mask = np.zeros(history_length, dtype=np.float32)
    mask[:n] = 1
    tile = lambda a: np.repeat(a[None], nc, 0)  # noqa: E731
    return {
        "user_categorical": np.repeat(f["user_categorical"], nc, 0),
        "user_numeric": np.repeat(f["user_numeric"], nc, 0),
        "history_vectors": tile(pad(f["history_vectors"])),
        "history_category": tile(pad(f["history_category"])),
        "history_type": tile(pad(f["history_type"])),
        "history_recency": tile(pad(f["history_recency"])),
        "history_mask": tile(mask),
        "candidate_vectors": f["candidate_vectors"],
        "candidate_categorical": f["candidate_categorical"],
        "candidate_numeric": f["candidate_numeric"],
    }


def export(module, feeds, names, dynamic, path):
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(module, args, tmp, input_names=names, output_names=["outputs"],
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True)
    os.replace(tmp, path)


def build(name, out_dir, seed, train_steps, batch_size):
    cfg = make_config(name)
    model = random_model(cfg, seed)
    dr.save_model(out_dir, cfg, model)
    rng = np.random.default_rng(seed + 2)
    now = 1_750_000_000
    n_hist = cfg["history_length"]
    req_dir = os.path.join(out_dir, "requests")
    os.makedirs(req_dir, exist_ok=True)
    requests = {}
    items = make_items(cfg, rng, N_ITEMS)
    for nc in CANDIDATES:
        req = as_batch(make_users(cfg, rng, items, 1, [n_hist], nc, now))
        dr.write_safetensors(os.path.join(req_dir, "nc%d.safetensors" % nc),
                             [(k, req[k]) for k in BATCH_KEYS])
        requests[nc] = req

    usual, careful = UsualNet(model).eval(), CarefulNet(model).eval()
    nc_axis = {0: "candidates"}
    dyn_usual = {n: nc_axis for n in USUAL_INPUTS}
    dyn_usual["outputs"] = nc_axis
    dyn_careful = {n: {0: "events"} for n in CAREFUL_INPUTS if n.startswith("history_")}
    dyn_careful.update({n: nc_axis for n in CAREFUL_INPUTS if n.startswith("candidate_")})
    dyn_careful["outputs"] = nc_axis
    sample = requests[CANDIDATES[-1]]
    export(usual, usual_feeds(sample, n_hist), USUAL_INPUTS, dyn_usual,
           os.path.join(out_dir, "usual.onnx"))
    export(careful, careful_feeds(sample), CAREFUL_INPUTS, dyn_careful,
           os.path.join(out_dir, "careful.onnx"))

    # The exported modules must be the twin's network.
    with torch.no_grad():
        for nc, req in requests.items():
            ref = model.outputs(model(torch_batch(req))).numpy()
            for module, feeds, names in ((usual, usual_feeds(req, n_hist), USUAL_INPUTS),
                                         (careful, careful_feeds(req), CAREFUL_INPUTS)):
                got = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n]))
                               for n in names)).numpy()
                diff = float(np.max(np.abs(got - ref)))
                if not diff <= 1e-5:
                    sys.exit("make_models.py: %s %s nc=%d differs from the twin by %g"
                             % (name, type(module).__name__, nc, diff))

    if train_steps > 0:
        train_dir = os.path.join(out_dir, "train")
        os.makedirs(train_dir, exist_ok=True)
        impressions = 16
        for split, users in (("train", train_steps * batch_size // impressions),
                             ("validation", 64)):
            hist = rng.integers(0, n_hist + 1, size=users)
            ex = make_users(cfg, rng, items, users, hist, impressions, now)
            save_training_examples(os.path.join(train_dir, split + ".safetensors"), ex)
        with open(os.path.join(train_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(dr.config_to_json(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    print("%s: %d parameters, D %d, A %d, %d experts %s, towers %s, history %d -> %s"
          % (name, n_params, cfg["item_vector_dim"], cfg["attention_dim"], cfg["experts"],
             cfg["expert_hidden"], cfg["tower_hidden"], n_hist, out_dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="cache directory (not in git)")
    ap.add_argument("--models", default=",".join(SHAPES),
                    help="comma-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--train-steps", type=int, default=40,
                    help="training steps of the first model's training set")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for i, name in enumerate(args.models.split(",")):
        if name not in SHAPES:
            sys.exit("make_models.py: unknown model '%s' (known: %s)" % (name, ", ".join(SHAPES)))
        out_dir = os.path.join(args.out, name)
        stamp = os.path.join(out_dir, "stamp.json")
        steps = args.train_steps if i == 0 else 0
        want = {"format": FORMAT_VERSION, "seed": args.seed, "shape": SHAPES[name],
                "train_steps": steps, "batch_size": args.batch_size, "torch": torch.__version__,
                "twin": dr.checksum64_file(os.path.join(ROOT, "tools", "deep_ranker",
                                                        "deep_ranker.py"))}
        if not args.force and os.path.exists(stamp):
            with open(stamp, encoding="utf-8") as f:
                if json.load(f) == json.loads(json.dumps(want)):
                    print("%s: up to date in %s" % (name, out_dir))
                    continue
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(stamp):
            os.remove(stamp)
        build(name, out_dir, args.seed + 17 * i, steps, args.batch_size)
        with open(stamp, "w", encoding="utf-8") as f:
            json.dump(want, f)


if __name__ == "__main__":
    main()
