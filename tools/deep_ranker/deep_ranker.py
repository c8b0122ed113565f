#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""PyTorch twin of funnel's DeepRankerModel ("funnel.deep_ranker", version 1).

The network is the one specified in include/funnel/deep_ranker.hpp (its file
comment is the spec): categorical embeddings (row 0 = out of vocabulary),
standardised numerics, target attention of each candidate over its own
user's history (bilinear score / sqrt(A), softmax over that user's events
only, p = 0 for a user without history), experts with ReLU after every
layer, MMoE gates or a shared bottom, one tower per task, sigmoid outputs for
binary and ctcvr tasks and identity for regression tasks, inverted dropout on
the output of every expert layer and every tower hidden layer in training.

Examples use the DeepRankerExamples layout (the arrays funnel's
DeepRankerExamples::save writes, tensor names = member names): item vectors
are stored once and referred to by row,
  item_vectors [items, D] F32,
  user_categorical [nu, n_uc] I32, user_numeric [nu, n_un] F32 (raw),
  history_offsets [nu + 1] I64, history_item [ne] I32 (row of item_vectors),
  history_category / history_type / history_recency [ne] I32,
  candidate_user [nc] I32, candidate_item [nc] I32 (row of item_vectors),
  candidate_categorical [nc, n_ic] I32, candidate_numeric [nc, n_in] F32 (raw),
  labels [nc, T] F32 (NaN = no label), ts [nc] I64.
The network's input is a batch in the DeepRankerBatch layout: the same
arrays with the vectors materialised (history_vectors = item_vectors[
history_item] [ne, D], candidate_vectors = item_vectors[candidate_item]
[nc, D]) instead of item_vectors / history_item / candidate_item; gather()
makes one from examples, as DeepRankerExamples::gather does.

Training loss (the same definition as funnel's trainer and the fixtures'
"loss"): sum over tasks t of loss_weight_t x (mean over the rows whose label
for t is not NaN of the row loss), a task without labelled rows adding 0:
  binary:     BCE(sigmoid(o_t), y_t)
  ctcvr:      BCE(sigmoid(o_parent) * sigmoid(o_t), y_t)   (y_t = joint label)
  regression: (o_t - y_t)^2   -- the mean of (o - y)^2, NOT 1/2 (o - y)^2.
BCE(q, y) = -(y log q + (1 - y) log(1 - q)); binary BCE is computed from the
logit (softplus(o) - y o), ctcvr in log space with log q = logsigmoid(o_parent)
+ logsigmoid(o_t) and q capped at 1 - 1e-7 only for log(1 - q). No weight
decay in the loss (optimisers add it).

Also here: safetensors reading/writing (the safetensors Python package is not
in Debian), funnel's checksum64 ("mix64", src/internal/checksum.cpp), and
load/save of a funnel model directory (config.json with weights_sha +
model.safetensors, F32, metadata {"format": "funnel.deep_ranker"}).

Use Debian's python (/usr/bin/python3: torch 1.13, numpy).
"""

import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "funnel.deep_ranker"
VERSION = 1
TASK_KINDS = ("binary", "ctcvr", "regression")
BODIES = ("mmoe", "shared_bottom")
EVENT_TYPES = 4  # view, click, cart, purchase (funnel::EventType order)

# ---------------------------------------------------------------------------
# checksum64: funnel::detail::checksum64 (src/internal/checksum.cpp), bit for bit.

_M64 = (1 << 64) - 1
_KMUL = 0x9FB21C651E98DF25
_LANES0 = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)


def _mix(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


def checksum64(data):
    """funnel's checksum64 of a bytes-like object, as an int."""
    data = bytes(data)
    n_blocks = len(data) // 32
    lanes = list(_LANES0)
    if n_blocks:
        # Vectorised over blocks per lane is not possible (each block depends on
        # the previous), but numpy uint64 arithmetic wraps like C++'s.
        words = np.frombuffer(data, dtype="<u8", count=n_blocks * 4).reshape(n_blocks, 4)
        lanes_np = np.array(lanes, dtype=np.uint64)
        kmul = np.uint64(_KMUL)
        kmul2 = np.uint64(0x94D049BB133111EB)
        s29 = np.uint64(29)
        s35 = np.uint64(35)
        with np.errstate(over="ignore"):
            for row in words:
                v = lanes_np ^ (row * kmul)
                lanes_np = ((v << s29) | (v >> s35)) * kmul2
        lanes = [int(x) for x in lanes_np]
    h = (len(data) * _KMUL) & _M64
    for lane in lanes:
        h = (_mix(h ^ lane) + 0x2545F4914F6CDD1D) & _M64
    tail = data[n_blocks * 32:]
    for i, b in enumerate(tail):
        h = _mix(h ^ (b + (i << 8)))
    return _mix(h)


def checksum64_hex(data):
    """16 lower-case hex digits, as funnel's to_hex(checksum64(...))."""
    return "%016x" % checksum64(data)


def checksum64_file(path):
    with open(path, "rb") as f:
        return checksum64_hex(f.read())


# ---------------------------------------------------------------------------
# safetensors

_DTYPE_TO_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NP_TO_DTYPE = {np.dtype(v).str: k for k, v in _DTYPE_TO_NP.items()}


def _write_atomic(path, blob):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def safetensors_bytes(tensors, metadata=None):
    """The bytes of a safetensors file holding `tensors` ([(name, ndarray)]).

    The header lists "__metadata__" first (when given) and then the tensors in
    the given order; the data section holds them widest element type first
    (stable), so every tensor starts at a multiple of its element size; the
    header is padded with spaces so the data section starts at a multiple of 8.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    for name, value in tensors:
        a = np.asarray(value)
        key = a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str
        if a.dtype == np.bool_:
            key = np.dtype("?").str
        if key not in _NP_TO_DTYPE:
            raise ValueError("tensor %s: unsupported dtype %s" % (name, a.dtype))
        if name in header or name == "__metadata__":
            raise ValueError("duplicate or reserved tensor name %s" % name)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        header[name] = None
        arrays.append((name, _NP_TO_DTYPE[key], a))
    order = sorted(range(len(arrays)), key=lambda i: -arrays[i][2].dtype.itemsize)
    offset = 0
    chunks = []
    for i in order:
        name, dtype, a = arrays[i]
        raw = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_safetensors(path, tensors, metadata=None):
    """Writes safetensors_bytes(tensors, metadata) atomically (temp + rename)."""
    _write_atomic(path, safetensors_bytes(tensors, metadata))


def read_safetensors(path):
    """Reads a safetensors file: ({name: ndarray}, metadata dict), header order.

    Checks that the tensors cover the data section exactly and sizes match.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: shorter than 8 bytes" % path)
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError("%s: header length %d beyond the file" % (path, n))
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    spans = []
    for name, info in header.items():
        dtype = info["dtype"]
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        if dtype == "BF16":
            raw = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32) << 16
            arr = raw.view(np.float32).reshape(shape)
        else:
            if dtype not in _DTYPE_TO_NP:
                raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, dtype))
            dt = _DTYPE_TO_NP[dtype]
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise ValueError("%s: tensor %s size does not match its shape" % (path, name))
            arr = np.frombuffer(data[begin:end], dtype=dt).reshape(shape).copy()
        out[name] = arr
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise ValueError("%s: data section has a hole or overlap at byte %d" % (path, begin))
        pos = end
    if pos != len(data):
        raise ValueError("%s: %d data bytes not covered by tensors" % (path, len(data) - pos))
    return out, metadata


# ---------------------------------------------------------------------------
# Config

CONFIG_KEYS = ("format", "version", "body", "item_vector_dim", "user_categorical",
               "user_numeric", "item_categorical", "item_numeric", "history_category_feature",
               "history_length", "recency_bounds_s", "attention_dim", "experts",
               "expert_hidden", "tower_hidden", "tasks", "dropout", "fusion", "weights_sha")


def validate_config(cfg):
    """Checks the fields the network depends on; raises ValueError naming the field."""
    def need(cond, msg):
        if not cond:
            raise ValueError("config: " + msg)

    unknown = [k for k in cfg if k not in CONFIG_KEYS]
    need(not unknown, "unknown keys %s" % unknown)
    need(cfg.get("format", FORMAT) == FORMAT, "format must be %s" % FORMAT)
    need(cfg.get("version", VERSION) == VERSION, "version must be %d" % VERSION)
    need(cfg["body"] in BODIES, "body %r" % cfg["body"])
    need(cfg["item_vector_dim"] > 0, "item_vector_dim must be > 0")
    need(len(cfg["item_categorical"]) >= 1, "item_categorical needs at least one feature")
    names = set()
    for group in ("user_categorical", "item_categorical"):
        for f in cfg[group]:
            need(f["dim"] > 0, "%s.%s.dim must be > 0" % (group, f["name"]))
            need(("u" if group[0] == "u" else "i", f["name"]) not in names,
                 "duplicate %s %s" % (group, f["name"]))
            names.add(("u" if group[0] == "u" else "i", f["name"]))
    for group in ("user_numeric", "item_numeric"):
        for f in cfg[group]:
            need(f["std"] > 0, "%s.%s.std must be > 0" % (group, f["name"]))
    need(0 <= cfg["history_category_feature"] < len(cfg["item_categorical"]),
         "history_category_feature out of range")
    b = cfg["recency_bounds_s"]
    need(all(x > 0 for x in b) and all(b[i] < b[i + 1] for i in range(len(b) - 1)),
         "recency_bounds_s must be > 0 and strictly increasing")
    need(cfg["attention_dim"] > 0, "attention_dim must be > 0")
    need(cfg["experts"] > 0, "experts must be > 0")
    need(cfg["body"] != "shared_bottom" or cfg["experts"] == 1, "shared_bottom needs experts 1")
    need(len(cfg["expert_hidden"]) >= 1 and all(w > 0 for w in cfg["expert_hidden"]),
         "expert_hidden needs positive widths")
    need(all(w > 0 for w in cfg["tower_hidden"]), "tower_hidden widths must be > 0")
    need(len(cfg["tasks"]) >= 1, "tasks must not be empty")
    seen = {}
    for t in cfg["tasks"]:
        need(t["kind"] in TASK_KINDS, "task %s kind %r" % (t["name"], t["kind"]))
        need(t["name"] and t["name"] not in seen, "empty or duplicate task name %r" % t["name"])
        if t["kind"] == "ctcvr":
            need(seen.get(t["parent"]) == "binary",
                 "ctcvr task %s: parent %r is not an earlier binary task" % (t["name"], t["parent"]))
        seen[t["name"]] = t["kind"]
    need(0 <= cfg["dropout"] < 1, "dropout must be in [0, 1)")


def widths(cfg):
    """(U, C, Hd, X) of the spec."""
    d = cfg["item_vector_dim"]
    u = sum(f["dim"] for f in cfg["user_categorical"]) + len(cfg["user_numeric"])
    c = d + sum(f["dim"] for f in cfg["item_categorical"]) + len(cfg["item_numeric"])
    hd = d + cfg["item_categorical"][cfg["history_category_feature"]]["dim"]
    return u, c, hd, u + c + cfg["attention_dim"]


def parameter_shapes(cfg):
    """[(name, shape)] in funnel's canonical order."""
    _, _, hd, x = widths(cfg)
    a = cfg["attention_dim"]
    out = []
    for f in cfg["user_categorical"]:
        out.append(("user.%s.embedding" % f["name"], (len(f["vocab"]) + 1, f["dim"])))
    for f in cfg["item_categorical"]:
        out.append(("item.%s.embedding" % f["name"], (len(f["vocab"]) + 1, f["dim"])))
    out.append(("history.type.embedding", (EVENT_TYPES, a)))
    out.append(("history.recency.embedding", (len(cfg["recency_bounds_s"]) + 1, a)))
    for p in ("query", "key", "value"):
        out.append(("attention.%s.weight" % p, (a, hd)))
        out.append(("attention.%s.bias" % p, (a,)))
    for e in range(cfg["experts"]):
        fan_in = x
        for l, w in enumerate(cfg["expert_hidden"]):
            out.append(("expert.%d.%d.weight" % (e, l), (w, fan_in)))
            out.append(("expert.%d.%d.bias" % (e, l), (w,)))
            fan_in = w
    if cfg["body"] == "mmoe":
        for t in cfg["tasks"]:
            out.append(("gate.%s.weight" % t["name"], (cfg["experts"], x)))
            out.append(("gate.%s.bias" % t["name"], (cfg["experts"],)))
    for t in cfg["tasks"]:
        fan_in = cfg["expert_hidden"][-1]
        for l, w in enumerate(list(cfg["tower_hidden"]) + [1]):
            out.append(("tower.%s.%d.weight" % (t["name"], l), (w, fan_in)))
            out.append(("tower.%s.%d.bias" % (t["name"], l), (w,)))
            fan_in = w
    return out


def config_to_json(cfg, weights_sha=None):
    """config.json text, keys in DeepRankerConfig::to_json's order."""
    doc = {"format": FORMAT, "version": VERSION}
    for k in CONFIG_KEYS[2:-1]:
        doc[k] = cfg[k]
    if weights_sha is not None:
        doc["weights_sha"] = weights_sha
    return json.dumps(doc, indent=2) + "\n"


# ---------------------------------------------------------------------------
# The network

EXAMPLE_INT32 = ("user_categorical", "history_item", "history_category", "history_type",
                 "history_recency", "candidate_user", "candidate_item", "candidate_categorical")
EXAMPLE_INT64 = ("history_offsets", "ts")
EXAMPLE_FLOAT = ("item_vectors", "user_numeric", "history_vectors", "candidate_vectors",
                 "candidate_numeric", "labels")
# DeepRankerExamples' tensors, in the order DeepRankerExamples::save writes them.
EXAMPLE_KEYS = ("item_vectors", "user_categorical", "user_numeric", "history_offsets",
                "history_item", "history_category", "history_type", "history_recency",
                "candidate_user", "candidate_item", "candidate_categorical", "candidate_numeric",
                "labels", "ts")
# A batch (DeepRankerBatch): the network's input.
BATCH_KEYS = ("user_categorical", "user_numeric", "history_offsets", "history_vectors",
              "history_category", "history_type", "history_recency", "candidate_user",
              "candidate_vectors", "candidate_categorical", "candidate_numeric")
OLD_LAYOUT_KEYS = ("history_vectors", "candidate_vectors")


def _key(name):
    return name.replace(".", "__")


class DeepRanker(torch.nn.Module):
    """The network of deep_ranker.hpp, parameters named as funnel names them.

    forward(batch) takes a dict of tensors in the DeepRankerBatch layout
    (see to_torch_batch) and returns the logits o [nc, T]; outputs(o) applies
    the per-task output function and loss(o, labels) the training loss.
    """

    def __init__(self, cfg, dtype=torch.float32):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.names = []
        for name, shape in parameter_shapes(cfg):
            self.register_parameter(_key(name), torch.nn.Parameter(torch.zeros(shape, dtype=dtype)))
            self.names.append(name)
        # Standardisation constants as stored (float32), kept in the model's dtype.
        def stats(group):
            mean = torch.tensor([float(np.float32(f["mean"])) for f in cfg[group]], dtype=dtype)
            std = torch.tensor([float(np.float32(f["std"])) for f in cfg[group]], dtype=dtype)
            return mean, std
        um, us = stats("user_numeric")
        im, is_ = stats("item_numeric")
        self.register_buffer("user_mean", um, persistent=False)
        self.register_buffer("user_std", us, persistent=False)
        self.register_buffer("item_mean", im, persistent=False)
        self.register_buffer("item_std", is_, persistent=False)
        self.task_names = [t["name"] for t in cfg["tasks"]]

    def p(self, name):
        return getattr(self, _key(name))

    def funnel_parameters(self):
        """[(funnel name, Parameter)] in canonical order."""
        return [(n, self.p(n)) for n in self.names]

    def _linear(self, x, prefix):
        return x @ self.p(prefix + ".weight").t() + self.p(prefix + ".bias")

    def forward(self, b):
        cfg = self.cfg
        a_dim = cfg["attention_dim"]
        dropout = cfg["dropout"] if self.training else 0.0
        nu = b["history_offsets"].shape[0] - 1
        nc = b["candidate_user"].shape[0]
        cu = b["candidate_user"].long()

        # User side.
        parts = [self.p("user.%s.embedding" % f["name"])[b["user_categorical"][:, k].long()]
                 for k, f in enumerate(cfg["user_categorical"])]
        if cfg["user_numeric"]:
            parts.append((b["user_numeric"] - self.user_mean) / self.user_std)
        u = torch.cat(parts, dim=1) if parts else b["candidate_vectors"].new_zeros((nu, 0))

        # Candidate side.
        parts = [b["candidate_vectors"]]
        parts += [self.p("item.%s.embedding" % f["name"])[b["candidate_categorical"][:, k].long()]
                  for k, f in enumerate(cfg["item_categorical"])]
        if cfg["item_numeric"]:
            parts.append((b["candidate_numeric"] - self.item_mean) / self.item_std)
        c = torch.cat(parts, dim=1)

        # Target attention over each candidate's user's history.
        hcf = cfg["history_category_feature"]
        table = self.p("item.%s.embedding" % cfg["item_categorical"][hcf]["name"])
        t = torch.cat([b["candidate_vectors"], table[b["candidate_categorical"][:, hcf].long()]], 1)
        q = self._linear(t, "attention.query")
        offsets = b["history_offsets"].long()
        counts = offsets[1:] - offsets[:-1]
        ne = int(offsets[-1]) if nu > 0 else 0
        # Computed even when no user has history (zero-size tensors), so every
        # parameter takes part in the graph (DistributedDataParallel needs that).
        lmax = int(counts.max()) if nu > 0 else 0
        h = torch.cat([b["history_vectors"], table[b["history_category"].long()]], 1)
        key = (self._linear(h, "attention.key")
               + self.p("history.type.embedding")[b["history_type"].long()]
               + self.p("history.recency.embedding")[b["history_recency"].long()])
        value = self._linear(h, "attention.value")
        event_user = torch.repeat_interleave(torch.arange(nu), counts)
        pos = torch.arange(ne) - offsets[:-1][event_user]
        k_pad = key.new_zeros((nu, lmax, a_dim)).index_put((event_user, pos), key)
        v_pad = value.new_zeros((nu, lmax, a_dim)).index_put((event_user, pos), value)
        mask_c = (torch.arange(lmax)[None, :] < counts[:, None])[cu]  # [nc, lmax]
        s = torch.einsum("ia,ila->il", q, k_pad[cu]) / math.sqrt(a_dim)
        # Padding gets a huge negative score (exp -> 0); rows of users without
        # history get a uniform softmax over padding, zeroed by the mask: p = 0.
        s = s.masked_fill(~mask_c, -1e30)
        att = torch.softmax(s, dim=1) * mask_c.to(s.dtype)
        pooled = torch.einsum("il,ila->ia", att, v_pad[cu])

        x = torch.cat([u[cu], c, pooled], dim=1)

        ys = []
        for e in range(cfg["experts"]):
            a = x
            for l in range(len(cfg["expert_hidden"])):
                a = F.relu(self._linear(a, "expert.%d.%d" % (e, l)))
                if dropout > 0:
                    a = F.dropout(a, dropout, True)
            ys.append(a)
        y = torch.stack(ys, dim=1)  # [nc, E, W]

        logits = []
        for task in cfg["tasks"]:
            if cfg["body"] == "mmoe":
                g = torch.softmax(self._linear(x, "gate." + task["name"]), dim=1)
                z = torch.einsum("ie,iew->iw", g, y)
            else:
                z = ys[0]
            for l in range(len(cfg["tower_hidden"])):
                z = F.relu(self._linear(z, "tower.%s.%d" % (task["name"], l)))
                if dropout > 0:
                    z = F.dropout(z, dropout, True)
            z = self._linear(z, "tower.%s.%d" % (task["name"], len(cfg["tower_hidden"])))
            logits.append(z[:, 0])
        return torch.stack(logits, dim=1)

    def outputs(self, logits):
        """Per-task outputs: sigmoid for binary/ctcvr, identity for regression."""
        cols = []
        for k, task in enumerate(self.cfg["tasks"]):
            o = logits[:, k]
            cols.append(o if task["kind"] == "regression" else torch.sigmoid(o))
        return torch.stack(cols, dim=1)

    def task_losses(self, logits, labels):
        """[(task, mean row loss or None, labelled rows)] (see the module docstring)."""
        out = []
        index = {t["name"]: k for k, t in enumerate(self.cfg["tasks"])}
        for k, task in enumerate(self.cfg["tasks"]):
            y = labels[:, k]
            keep = ~torch.isnan(y)
            n = int(keep.sum())
            if n == 0:
                out.append((task, None, 0))
                continue
            o = logits[keep, k]
            yk = y[keep]
            if task["kind"] == "binary":
                row = F.softplus(o) - yk * o
            elif task["kind"] == "ctcvr":
                log_q = F.logsigmoid(logits[keep, index[task["parent"]]]) + F.logsigmoid(o)
                log_1mq = torch.log(-torch.expm1(torch.clamp(log_q, max=math.log1p(-1e-7))))
                row = -(yk * log_q + (1 - yk) * log_1mq)
            else:
                row = (o - yk) ** 2
            out.append((task, row.mean(), n))
        return out

    def loss(self, logits, labels):
        """Training loss: sum_t loss_weight_t x mean row loss over labelled rows."""
        total = logits.new_zeros(())
        for task, mean, _ in self.task_losses(logits, labels):
            if mean is not None:
                total = total + float(np.float32(task["loss_weight"])) * mean
        return total


def _rows_users(ex, rows):
    """(rows, users, new candidate_user): the users of candidate rows `rows` in
    order of first use (as DeepRankerExamples::gather numbers them)."""
    if rows is None:
        rows = np.arange(ex["candidate_user"].shape[0], dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    nc = ex["candidate_user"].shape[0]
    if rows.size and (rows.min() < 0 or rows.max() >= nc):
        raise ValueError("rows outside [0, %d)" % nc)
    cu = ex["candidate_user"][rows].astype(np.int64)
    uniq, first, inverse = np.unique(cu, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique users by first use
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rows, uniq[order], rank[inverse].astype(np.int32)


def _user_events(ex, users):
    """(new history_offsets, indices of the users' events in ex's event arrays)."""
    offs = np.asarray(ex["history_offsets"], dtype=np.int64)
    counts = offs[users + 1] - offs[users]
    new_offs = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # Event e of the subset is old event offs[user] + (e - new_offs[user]).
    ev = np.arange(int(new_offs[-1]), dtype=np.int64) + np.repeat(offs[users] - new_offs[:-1],
                                                                   counts)
    return new_offs, ev


def subset_examples(ex, rows):
    """The examples (numpy dict, DeepRankerExamples layout) of candidate rows
    `rows`, in that order: the users they reference (in order of first use)
    with their histories, and the whole item table."""
    rows, users, new_cu = _rows_users(ex, rows)
    new_offs, ev = _user_events(ex, users)
    sub = {
        "item_vectors": ex["item_vectors"],
        "user_categorical": ex["user_categorical"][users],
        "user_numeric": ex["user_numeric"][users],
        "history_offsets": new_offs,
        "history_item": ex["history_item"][ev],
        "history_category": ex["history_category"][ev],
        "history_type": ex["history_type"][ev],
        "history_recency": ex["history_recency"][ev],
        "candidate_user": new_cu,
        "candidate_item": ex["candidate_item"][rows],
        "candidate_categorical": ex["candidate_categorical"][rows],
        "candidate_numeric": ex["candidate_numeric"][rows],
    }
    for k in ("labels", "ts"):
        if k in ex:
            sub[k] = ex[k][rows]
    return sub


def gather(ex, rows=None):
    """The batch (numpy dict, DeepRankerBatch layout, plus labels and ts when
    the examples have them) of candidate rows `rows` of examples `ex` (all
    rows when None), as DeepRankerExamples::gather builds it: the users once
    each, in order of first use, and the item vectors copied in."""
    sub = subset_examples(ex, rows)
    items = ex["item_vectors"]
    batch = {k: sub[k] for k in BATCH_KEYS if k in sub}
    batch["history_vectors"] = items[sub["history_item"]]
    batch["candidate_vectors"] = items[sub["candidate_item"]]
    for k in ("labels", "ts"):
        if k in sub:
            batch[k] = sub[k]
    return batch


def to_torch_batch(ex, dtype=torch.float32, rows=None):
    """Torch tensors of a batch for DeepRanker.forward: `ex` is examples
    (DeepRankerExamples layout; rows: optional candidate indices, see
    gather) or already a batch (DeepRankerBatch layout, rows None). Integer
    arrays become int64, float arrays `dtype`."""
    if "item_vectors" in ex:
        ex = gather(ex, rows)
    elif rows is not None:
        raise ValueError("to_torch_batch: rows need examples (with item_vectors), not a batch")
    out = {}
    for k in BATCH_KEYS + ("labels",):
        if k not in ex:
            continue
        v = np.asarray(ex[k])
        if k in EXAMPLE_FLOAT:
            out[k] = torch.from_numpy(np.ascontiguousarray(v)).to(dtype)
        else:
            out[k] = torch.from_numpy(np.ascontiguousarray(v).astype(np.int64))
    return out


# ---------------------------------------------------------------------------
# Initialisation (train_deep_ranker's documented scheme)

def init_parameters(model, seed):
    """He-uniform for layers followed by ReLU (expert layers, tower hidden
    layers), Xavier-uniform for the others (attention query/key/value, gates,
    tower output layers), N(0, 0.05) for every embedding table (all rows,
    row 0 included), zero biases."""
    g = torch.Generator().manual_seed(int(seed))
    n_tower_hidden = len(model.cfg["tower_hidden"])
    with torch.no_grad():
        for name, p in model.funnel_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif name.endswith(".embedding"):
                p.normal_(0.0, 0.05, generator=g)
            else:
                fan_out, fan_in = p.shape
                relu = name.startswith("expert.") or (
                    name.startswith("tower.") and int(name.split(".")[-2]) < n_tower_hidden)
                bound = math.sqrt(6.0 / fan_in) if relu else math.sqrt(6.0 / (fan_in + fan_out))
                p.uniform_(-bound, bound, generator=g)


def set_output_biases(model, labels):
    """Each task's output bias at the base rate of its training labels, as
    funnel's trainer does (deep_set_output_biases): binary: logit of the mean
    label; ctcvr: logit of sum(joint) / sum(parent label) over the rows
    labelled for both; regression: the mean label. Rates clamped to
    [1e-4, 1 - 1e-4]; a task without labelled rows keeps its bias.
    labels: [n, tasks] with NaN for no label."""
    cfg = model.cfg
    index = {t["name"]: i for i, t in enumerate(cfg["tasks"])}
    y = torch.as_tensor(labels, dtype=torch.float64)
    n_tower_hidden = len(cfg["tower_hidden"])
    params = dict(model.funnel_parameters())

    def logit(p):
        p = min(max(p, 1e-4), 1.0 - 1e-4)
        return math.log(p / (1.0 - p))

    with torch.no_grad():
        for t, task in enumerate(cfg["tasks"]):
            keep = ~torch.isnan(y[:, t])
            if task["kind"] == "ctcvr":
                parent = y[:, index[task["parent"]]]
                keep &= ~torch.isnan(parent)
            if int(keep.sum()) == 0:
                continue
            total = float(y[keep, t].sum())
            if task["kind"] == "binary":
                value = logit(total / int(keep.sum()))
            elif task["kind"] == "ctcvr":
                parent_total = float(parent[keep].sum())
                value = logit(total / parent_total) if parent_total > 0 else logit(0.0)
            else:
                value = total / int(keep.sum())
            params["tower.%s.%d.bias" % (task["name"], n_tower_hidden)].fill_(value)


# ---------------------------------------------------------------------------
# Model directory and examples files

def save_model(directory, cfg, params):
    """Writes a funnel model directory: model.safetensors (F32, canonical
    order, metadata {"format": "funnel.deep_ranker"}) then config.json with its
    weights_sha. params: {funnel name: array-like} or a DeepRanker."""
    if isinstance(params, DeepRanker):
        params = {n: p.detach().cpu().double().numpy() for n, p in params.funnel_parameters()}
    validate_config(cfg)
    tensors = []
    for name, shape in parameter_shapes(cfg):
        a = np.asarray(params[name], dtype=np.float32)
        if a.shape != tuple(shape):
            raise ValueError("parameter %s: shape %s, expected %s" % (name, a.shape, shape))
        if not np.all(np.isfinite(a)):
            raise ValueError("parameter %s: non-finite value" % name)
        tensors.append((name, a))
    os.makedirs(directory, exist_ok=True)
    blob = safetensors_bytes(tensors, {"format": FORMAT})
    _write_atomic(os.path.join(directory, "model.safetensors"), blob)
    _write_atomic(os.path.join(directory, "config.json"),
                  config_to_json(cfg, checksum64_hex(blob)).encode("utf-8"))


def load_config(path):
    with open(path, "r", encoding="utf-8") as f:
        cfg = json.load(f)
    validate_config(cfg)
    return cfg


def load_model(directory, dtype=torch.float32):
    """(cfg, DeepRanker) from a funnel model directory; checks the checksum,
    the tensor set, shapes and dtype."""
    cfg = load_config(os.path.join(directory, "config.json"))
    path = os.path.join(directory, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    if "weights_sha" in cfg and checksum64_hex(blob) != cfg["weights_sha"]:
        raise ValueError("%s does not match config.json's weights_sha" % path)
    tensors, _ = read_safetensors(path)
    model = DeepRanker(cfg, dtype)
    expected = dict(parameter_shapes(cfg))
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError("%s: extra tensors %s" % (path, extra))
    with torch.no_grad():
        for name, shape in expected.items():
            if name not in tensors:
                raise ValueError("%s: missing tensor %s" % (path, name))
            a = tensors[name]
            if a.dtype != np.float32 or a.shape != tuple(shape):
                raise ValueError("%s: tensor %s is %s %s, expected F32 %s"
                                 % (path, name, a.dtype, a.shape, shape))
            model.p(name).copy_(torch.from_numpy(a.astype(np.float64)))
    return cfg, model


def save_examples(path, ex):
    """Writes examples (DeepRankerExamples layout) as one safetensors file,
    with DeepRankerExamples::save's tensor names, dtypes and metadata."""
    old = [k for k in OLD_LAYOUT_KEYS if k in ex]
    if old:
        raise ValueError("save_examples: %s belong to the older per-example layout; store the "
                         "vectors once in item_vectors and refer to them with history_item / "
                         "candidate_item" % old)
    missing = [k for k in EXAMPLE_KEYS if k not in ex and k not in ("labels", "ts")]
    if missing:
        raise ValueError("save_examples: missing arrays %s" % missing)
    tensors = []
    for k in EXAMPLE_KEYS:
        if k not in ex:
            continue
        dt = np.int32 if k in EXAMPLE_INT32 else np.int64 if k in EXAMPLE_INT64 else np.float32
        tensors.append((k, np.asarray(ex[k], dtype=dt)))
    write_safetensors(path, tensors, {"format": FORMAT + ".examples"})


def load_examples(path, cfg=None):
    """Reads an examples file (DeepRankerExamples layout); with cfg, reshapes
    flat arrays to 2-D and checks shapes, ranges (item rows included) and
    finite item vectors."""
    t, _ = read_safetensors(path)
    old = [k for k in OLD_LAYOUT_KEYS if k in t]
    if old:
        raise ValueError("%s: tensors %s are of the older per-example layout (vectors are now "
                         "stored once, in item_vectors); export the examples again" % (path, old))
    missing = [k for k in EXAMPLE_KEYS if k not in t and k not in ("labels", "ts")]
    if missing:
        raise ValueError("%s: missing tensors %s" % (path, missing))
    nu = t["history_offsets"].shape[0] - 1
    nc = t["candidate_user"].shape[0]
    ne = t["history_item"].shape[0]
    items = t["item_vectors"].shape[0]
    if cfg is not None:
        d = cfg["item_vector_dim"]
        cols = {"item_vectors": (items, d),
                "user_categorical": (nu, len(cfg["user_categorical"])),
                "user_numeric": (nu, len(cfg["user_numeric"])),
                "candidate_categorical": (nc, len(cfg["item_categorical"])),
                "candidate_numeric": (nc, len(cfg["item_numeric"])),
                "labels": (nc, len(cfg["tasks"]))}
        for k, shape in cols.items():
            if k in t:
                if t[k].size != shape[0] * shape[1]:
                    raise ValueError("%s: tensor %s has %d values, expected %s"
                                     % (path, k, t[k].size, shape))
                t[k] = t[k].reshape(shape)
        for k in ("history_category", "history_type", "history_recency"):
            if t[k].shape[0] != ne:
                raise ValueError("%s: tensor %s has %d values, expected %d (as history_item)"
                                 % (path, k, t[k].shape[0], ne))
        if t["candidate_item"].shape[0] != nc:
            raise ValueError("%s: tensor candidate_item has %d values, expected %d"
                             % (path, t["candidate_item"].shape[0], nc))
        for k, f in enumerate(cfg["user_categorical"]):
            v = t["user_categorical"][:, k]
            if v.size and (v.min() < 0 or v.max() > len(f["vocab"])):
                raise ValueError("%s: user_categorical column %s out of range" % (path, f["name"]))
        for k, f in enumerate(cfg["item_categorical"]):
            v = t["candidate_categorical"][:, k]
            if v.size and (v.min() < 0 or v.max() > len(f["vocab"])):
                raise ValueError("%s: candidate_categorical column %s out of range"
                                 % (path, f["name"]))
        if np.any(t["candidate_user"] < 0) or np.any(t["candidate_user"] >= max(nu, 1)):
            raise ValueError("%s: candidate_user out of range" % path)
        for k in ("history_item", "candidate_item"):
            v = t[k]
            if v.size and (v.min() < 0 or v.max() >= items):
                raise ValueError("%s: %s out of range [0, %d) (rows of item_vectors)"
                                 % (path, k, items))
        if not np.all(np.isfinite(t["item_vectors"])):
            raise ValueError("%s: item_vectors has a non-finite value" % path)
        if (np.any(np.diff(t["history_offsets"]) < 0) or t["history_offsets"][0] != 0
                or t["history_offsets"][-1] != ne):
            raise ValueError("%s: history_offsets not non-decreasing from 0 to the event count"
                             % path)
    return t
