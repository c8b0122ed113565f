#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Trains funnel's deep ranker in PyTorch and exports a funnel model directory.

Input: an examples directory as `funnel train --export-examples DIR` writes
it (or make_synthetic_examples.py):
  DIR/config.json              the untrained model config (vocabularies,
                               numeric standardisation, shape, tasks, dropout)
  DIR/train.safetensors        DeepRankerExamples layout, labels included
  DIR/validation.safetensors   the same, held out (optional: without it there
                               is no early stopping and the last epoch is kept)
Output: --out MODEL_DIR with config.json (incl. weights_sha) and
model.safetensors, which funnel's DeepRankerModel::load reads, plus copies of
DIR/features.json and DIR/vectors.json when the export has them (then
MODEL_DIR is a complete DeepFineRanker directory).

Training follows funnel's own trainer (train_deep_ranker, DeepTrainConfig):
  * loss: deep_ranker.py's (sum over tasks of loss_weight x mean row loss over
    labelled rows; regression = mean of (o - y)^2);
  * initialisation: He-uniform for ReLU layers, Xavier-uniform otherwise,
    N(0, 0.05) embeddings, zero biases, from --seed; then each task's output
    bias at its training labels' base rate (deep_ranker.set_output_biases);
  * Adam with L2 weight decay added to the gradient of every weight matrix and
    embedding (not biases), or AdamW with decoupled decay (p -= lr * wd * p)
    of the same tensors;
  * inverted dropout (the config's rate, or --dropout) on every expert layer
    and tower hidden layer output;
  * mini-batches of --batch-size candidates (with their users and histories,
    the item vectors gathered from the examples' item_vectors table as
    DeepRankerExamples::gather does), reshuffled every epoch from --seed;
  * after each epoch: validation metrics per task (AUC and log loss for binary
    tasks on their label and for ctcvr tasks as p_parent * p vs the joint
    label; RMSE for regression, and its AUC of long (label above the median)
    vs short); the mean AUC over every task drives early stopping (--patience epochs without a better one) and the
    best epoch's parameters are exported.

Parallelism: --threads sets torch's intra-op threads per process.
--world-size N > 1 spawns N processes on this machine (or run under torchrun,
which sets RANK / WORLD_SIZE): DistributedDataParallel with the gloo backend;
every epoch each rank trains on its 1/N share of the same shuffled order
(--batch-size per rank, gradients averaged), validation is scored in shards
and gathered, rank 0 prints and exports.

    nice -n 19 /usr/bin/python3 tools/deep_ranker/train_torch.py DIR --out MODEL_DIR \
        [--optimizer adam|adamw] [--lr 1e-3] [--weight-decay 1e-5] [--batch-size 512] \
        [--max-epochs 20] [--patience 3] [--seed 42] [--threads 1] [--world-size 1]
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deep_ranker as dr  # noqa: E402

SIDECARS = ("features.json", "vectors.json")

# ---------------------------------------------------------------------------
# Metrics


def auc(scores, labels):
    """ROC AUC with tied scores counted half (Mann-Whitney); NaN with one class."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    i = 0
    while i < s.size:  # average ranks over ties
        j = i
        while j + 1 < s.size and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = 0.5 * (i + j) + 1.0
        i = j + 1
    rank_of = np.empty_like(ranks)
    rank_of[order] = ranks
    return float((rank_of[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def task_metrics(cfg, logits, labels):
    """[{task, examples, auc, log_loss, rmse}] as DeepTaskMetrics defines them."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    names = [t["name"] for t in cfg["tasks"]]
    prob = 1.0 / (1.0 + np.exp(-logits))
    out = []
    for k, task in enumerate(cfg["tasks"]):
        keep = ~np.isnan(labels[:, k])
        y = labels[keep, k]
        m = {"task": task["name"], "examples": int(keep.sum()), "auc": float("nan"),
             "log_loss": float("nan"), "rmse": float("nan")}
        if task["kind"] == "regression":
            if y.size:
                m["rmse"] = float(np.sqrt(np.mean((logits[keep, k] - y) ** 2)))
                # long (above the median label) vs short, as funnel ranks it
                m["auc"] = auc(logits[keep, k], y > np.median(y))
        else:
            p = prob[keep, k]
            if task["kind"] == "ctcvr":
                p = p * prob[keep, names.index(task["parent"])]
            if y.size:
                pc = np.clip(p, 1e-7, 1 - 1e-7)
                m["log_loss"] = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
                m["auc"] = auc(p, y)
        out.append(m)
    return out


def mean_auc(metrics):
    vals = [m["auc"] for m in metrics if not math.isnan(m["auc"])]
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------


def score(model, ex, rows, batch_size):
    """Logits of candidate rows (eval mode, no grad), in row order."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            b = dr.to_torch_batch(ex, torch.float32, rows[start:start + batch_size])
            out.append(model(b).numpy())
    model.train()
    if not out:
        return np.zeros((0, len(model.cfg["tasks"])), dtype=np.float32)
    return np.concatenate(out)


def make_optimizer(model, args):
    decay = [p for n, p in model.funnel_parameters() if not n.endswith(".bias")]
    no_decay = [p for n, p in model.funnel_parameters() if n.endswith(".bias")]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=args.lr, betas=(args.beta1, args.beta2), eps=args.epsilon)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, **kw)  # L2: grad += wd * p
    return torch.optim.AdamW(groups, **kw)  # decoupled: p -= lr * wd * p


def train(rank, world, args):
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(args.threads)
    log = print if rank == 0 else (lambda *a, **k: None)

    cfg = dr.load_config(os.path.join(args.examples, "config.json"))
    cfg.pop("weights_sha", None)
    if args.dropout is not None:
        cfg["dropout"] = args.dropout
        dr.validate_config(cfg)
    train_ex = dr.load_examples(os.path.join(args.examples, "train.safetensors"), cfg)
    val_path = os.path.join(args.examples, "validation.safetensors")
    val_ex = dr.load_examples(val_path, cfg) if os.path.exists(val_path) else None
    n_train = train_ex["candidate_user"].shape[0]
    n_val = val_ex["candidate_user"].shape[0] if val_ex is not None else 0
    if n_train == 0:
        raise SystemExit("no training examples in %s" % args.examples)
    if "labels" not in train_ex:
        raise SystemExit("train.safetensors has no labels")
    log("train %d examples, validation %d; %s, %d experts, tasks %s; %d process(es) x %d "
        "thread(s)" % (n_train, n_val, cfg["body"], cfg["experts"],
                       ",".join(t["name"] for t in cfg["tasks"]), world, args.threads))

    model = dr.DeepRanker(cfg, torch.float32)
    dr.init_parameters(model, args.seed)
    dr.set_output_biases(model, train_ex["labels"])
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model)
    opt = make_optimizer(model, args)
    torch.manual_seed(args.seed * 1000003 + rank)  # dropout masks differ per rank
    shuffle_rng = np.random.default_rng(args.seed)

    best = None  # (mean auc, epoch, state, metrics)
    since_best = 0
    epochs_run = 0
    total_examples = 0
    total_time = 0.0
    for epoch in range(1, args.max_epochs + 1):
        epochs_run = epoch
        order = shuffle_rng.permutation(n_train)
        share = n_train // world
        mine = order[rank * share:(rank + 1) * share] if distributed else order
        t0 = time.perf_counter()
        sum_loss = 0.0
        steps = 0
        model.train()
        for start in range(0, len(mine), args.batch_size):
            rows = mine[start:start + args.batch_size]
            b = dr.to_torch_batch(train_ex, torch.float32, rows)
            logits = net(b)
            loss = model.loss(logits, b["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sum_loss += float(loss)
            steps += 1
        elapsed = time.perf_counter() - t0
        if distributed:  # report the mean loss over every rank's steps
            totals = torch.tensor([sum_loss, float(steps)], dtype=torch.float64)
            dist.all_reduce(totals)
            sum_loss, steps = float(totals[0]), int(totals[1])
        seen = len(mine) * world
        total_examples += seen
        total_time += elapsed

        line = "epoch %d: train loss %.4f, %.0f examples/s" % (epoch, sum_loss / max(steps, 1),
                                                               seen / max(elapsed, 1e-9))
        if n_val == 0:
            log(line)
            best = (float("nan"), epoch, copy.deepcopy(model.state_dict()), [])
            continue
        rows = np.arange(n_val)
        if distributed:
            part = score(model, val_ex, rows[rank::world], args.eval_batch_size)
            parts = [None] * world
            dist.all_gather_object(parts, part)
            logits_val = np.zeros((n_val, len(cfg["tasks"])), dtype=np.float32)
            for r in range(world):
                logits_val[rows[r::world]] = parts[r]
        else:
            logits_val = score(model, val_ex, rows, args.eval_batch_size)
        metrics = task_metrics(cfg, logits_val, val_ex["labels"])
        m_auc = mean_auc(metrics)
        parts = []
        for m in metrics:
            if not math.isnan(m["rmse"]):
                parts.append("%s rmse %.4f" % (m["task"], m["rmse"]))
            else:
                parts.append("%s auc %.4f logloss %.4f" % (m["task"], m["auc"], m["log_loss"]))
        improved = best is None or (not math.isnan(m_auc) and
                                    (math.isnan(best[0]) or m_auc > best[0]))
        log("%s | validation mean auc %.4f: %s%s" % (line, m_auc, ", ".join(parts),
                                                     " *" if improved else ""))
        if improved:
            best = (m_auc, epoch, copy.deepcopy(model.state_dict()), metrics)
            since_best = 0
        else:
            since_best += 1
            if since_best >= args.patience:
                log("early stop: no better validation auc for %d epochs" % args.patience)
                break

    if rank == 0:
        model.load_state_dict(best[2])
        dr.save_model(args.out, cfg, model)
        # funnel's export also writes the DeepFineRanker sidecars (feature
        # definitions, how the item vectors were made): with them MODEL_DIR is
        # a complete DeepFineRanker directory (funnel eval, the demo).
        for side in SIDECARS:
            src = os.path.join(args.examples, side)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(args.out, side))
        report = {"train_examples": n_train, "validation_examples": n_val,
                  "epochs": epochs_run, "best_epoch": best[1],
                  "best_validation_auc": best[0], "validation": best[3],
                  "examples_per_second": total_examples / max(total_time, 1e-9)}
        log("kept epoch %d (validation mean auc %.4f); wrote %s" % (best[1], best[0], args.out))
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def _spawned(rank, world, args):
    train(rank, world, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("examples", help="directory with config.json, train/validation.safetensors")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--optimizer", choices=("adam", "adamw"), default="adam")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--epsilon", type=float, default=1e-8)
    ap.add_argument("--batch-size", type=int, default=512, help="candidates per step (per rank)")
    ap.add_argument("--eval-batch-size", type=int, default=4096)
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=None, help="override the config's rate")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--world-size", type=int, default=1,
                    help="> 1: spawn this many DDP processes (gloo) on this machine")
    ap.add_argument("--master-port", type=int, default=29517)
    ap.add_argument("--report", help="write the training report as JSON here")
    args = ap.parse_args()
    for name in ("lr", "batch_size", "max_epochs", "patience", "threads", "world_size"):
        if getattr(args, name) <= 0:
            ap.error("--%s must be > 0" % name.replace("_", "-"))
    if args.weight_decay < 0:
        ap.error("--weight-decay must be >= 0")

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    elif args.world_size > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(args.master_port))
        torch.multiprocessing.spawn(_spawned, args=(args.world_size, args),
                                    nprocs=args.world_size, join=True)
    else:
        train(0, 1, args)


if __name__ == "__main__":
    main()
