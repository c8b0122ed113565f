#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Builds the models and inputs of the BERT encoder benchmark.

For each model shape it writes, under --out (a cache directory outside git):

  <name>/config.json, vocab.txt, tokenizer_config.json, model.safetensors
      a Hugging Face BERT checkpoint directory with random weights, which is
      what funnel's BertEncoder loads;
  <name>/model.onnx, <name>/model-opset12.onnx
      the same weights exported with torch.onnx.export (opset 14, and opset
      12; dynamic batch and sequence axes; inputs input_ids, attention_mask,
      token_type_ids, all int64; output last_hidden_state), which is what
      ONNX Runtime loads. Two opsets because ONNX Runtime's own graph
      optimiser fuses the attention subgraph into its Attention kernel only
      in opset <= 12 graphs (its pattern matcher accepts Add-7/13 and
      Unsqueeze-1/11 nodes); the opset 14 graph gets the other fusions
      (LayerNorm, BiasGelu, scaled MatMul). The benchmark runs both and
      compares funnel with the faster, row by row;

and, shared by all models:

  inputs/ids_<batch>x<seq>.npy
      int64 token ids, [CLS] ... [SEP], every row full length (no padding), so
      every runtime does exactly the same work. The attention mask is all
      ones and the token types all zeros; each runner builds them itself.

Shapes: MiniLM-L6 (6 layers, hidden 384, 12 heads, FFN 1536) and BERT-base
(12 / 768 / 12 / 3072), vocabulary 30522, 512 positions, as the real
checkpoints have. Weights are random (normal, std 0.02 as BERT initialises
them; LayerNorm gains near 1; small biases): speed does not depend on the
values, and the accuracy figures compare runtimes on the same weights.

The model here is written the way Hugging Face's BertModel is (separate
query/key/value projections, an additive mask from attention_mask, erf GELU,
post-LayerNorm), so the exported graph has the structure of a real BERT
export, with the details that ONNX Runtime's fusions look for: the mask
bias is (1 - mask) * -10000 as in the original BERT, the softmax axis is
written as 3, and each linear layer is MatMul followed by Add(product, bias).
bench_torch.py imports this module for the PyTorch side.

The safetensors file is written here with struct + json (the safetensors
Python package is not in Debian). Files that exist with the same parameters
are kept, so reruns are fast; --force rebuilds.

Run with Debian's python (torch 1.13, numpy):
    /usr/bin/python3 benchmarks/bert/make_models.py --out build-bench/bert-models
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
from torch import nn

# name -> (layers, hidden, heads, ffn)
SHAPES = {
    "minilm-l6": (6, 384, 12, 1536),
    "bert-base": (12, 768, 12, 3072),
}
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB = 2
LN_EPS = 1e-12
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
# batch x sequence rows of the benchmark
INPUT_SHAPES = [(1, 16), (1, 128), (32, 128)]
# Bumped whenever the generated files change, so stale caches are rebuilt.
FORMAT_VERSION = 2
# ONNX files: opset -> file name in the model directory
ONNX_FILES = {14: "model.onnx", 12: "model-opset12.onnx"}


class Config:
    def __init__(self, layers, hidden, heads, ffn):
        self.layers = layers
        self.hidden = hidden
        self.heads = heads
        self.ffn = ffn


class Linear(nn.Linear):
    """nn.Linear exported as MatMul then Add(product, bias)."""

    def forward(self, x):
        return torch.matmul(x, self.weight.t()) + self.bias


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, cfg.hidden, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=LN_EPS)
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0),
                             persistent=False)

    def forward(self, input_ids, token_type_ids):
        seq = input_ids.shape[1]
        pos = self.position_ids[:, :seq]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(pos) +
             self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.query = Linear(cfg.hidden, cfg.hidden)
        self.key = Linear(cfg.hidden, cfg.hidden)
        self.value = Linear(cfg.hidden, cfg.hidden)

    def split(self, x):
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x, mask_bias):
        q = self.split(self.query(x))
        k = self.split(self.key(x))
        v = self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_bias, dim=3)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        b, s = ctx.shape[0], ctx.shape[1]
        return ctx.view(b, s, self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """Projection, residual, LayerNorm (HF's BertSelfOutput / BertOutput)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.dense = Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=LN_EPS)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg.hidden, cfg.hidden)

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = Linear(cfg.hidden, cfg.ffn)

    def forward(self, x):
        return torch.nn.functional.gelu(self.dense(x))  # erf GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg.ffn, cfg.hidden)

    def forward(self, x, mask_bias):
        h = self.attention(x, mask_bias)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer = nn.ModuleList([Layer(cfg) for _ in range(cfg.layers)])


class Pooler(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = Linear(cfg.hidden, cfg.hidden)


class BertModel(nn.Module):
    """Hugging Face's BertModel structure; state_dict names are HF's tensor names."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        # Not used by the forward pass (last_hidden_state), but real
        # checkpoints carry it, so the file has the real size.
        self.pooler = Pooler(cfg)

    def forward(self, input_ids, attention_mask, token_type_ids):
        x = self.embeddings(input_ids, token_type_ids)
        mask = attention_mask[:, None, None, :].to(x.dtype)
        mask_bias = (1.0 - mask) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask_bias)
        return x


def build_model(name, seed):
    torch.manual_seed(seed + sum(map(ord, name)))
    cfg = Config(*SHAPES[name])
    model = BertModel(cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.05 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.02 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.02)
    return model.eval()


def load_model(model_dir):
    """Rebuilds the torch model from a checkpoint written by this script.

    Each tensor is read straight into its parameter's storage, so the process
    holds one copy of the weights, never two, as a careful loader would.
    """
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        conf = json.load(f)
    cfg = Config(conf["num_hidden_layers"], conf["hidden_size"], conf["num_attention_heads"],
                 conf["intermediate_size"])
    model = BertModel(cfg)
    params = dict(model.named_parameters())
    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        if set(header) != set(params):
            sys.exit(f"{path}: tensors differ from the model's: {sorted(set(header) ^ set(params))}")
        for name, info in header.items():
            p = params[name]
            begin, end = info["data_offsets"]
            if info["dtype"] != "F32" or list(p.shape) != info["shape"] or end - begin != p.numel() * 4:
                sys.exit(f"{path}: {name} is {info['dtype']} {info['shape']}, expected F32 {list(p.shape)}")
            f.seek(8 + size + begin)
            with torch.no_grad():
                if f.readinto(memoryview(p.detach().numpy()).cast("B")) != end - begin:
                    sys.exit(f"{path}: {name} is truncated")
    return model.eval()


# ---------------------------------------------------------------------------
# safetensors: u64 little-endian header size, JSON header
# {name: {dtype, shape, data_offsets: [begin, end)}} relative to the data
# section that follows it.


def write_safetensors(path, state):
    names = sorted(state)
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        t = state[n]
        assert t.dtype == torch.float32, n
        size = t.numel() * 4
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for n in names:
            f.write(state[n].detach().contiguous().numpy().astype("<f4").tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------


def synthetic_vocab():
    """30522 distinct tokens with BERT's special-token ids."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab += chars + ["##" + c for c in chars]
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(vocab) < VOCAB_SIZE:
        a, b, c = letters[i % 26], letters[(i // 26) % 26], letters[(i // 676) % 26]
        word = f"{c}{b}{a}{i // 17576 or ''}"
        vocab.append(word if i % 3 else "##" + word)
        i += 1
    assert len(set(vocab)) == VOCAB_SIZE
    return vocab


def write_checkpoint(model, name, out_dir):
    layers, hidden, heads, ffn = SHAPES[name]
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": TYPE_VOCAB,
        "initializer_range": 0.02,
        "layer_norm_eps": LN_EPS,
        "pad_token_id": PAD_ID,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "funnel_benchmark_format": FORMAT_VERSION,
    }
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(synthetic_vocab()) + "\n")
    tok = {
        "do_lower_case": True,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": MAX_POSITIONS,
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "tokenizer_class": "BertTokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, indent=2)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), model.state_dict())


def export_onnx(model, path, opset):
    ids = torch.full((2, 8), 1000, dtype=torch.int64)
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    axes = {0: "batch", 1: "sequence"}
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(model, (ids, mask, types), tmp,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                        "token_type_ids": axes, "last_hidden_state": axes},
                          opset_version=opset, do_constant_folding=True)
    os.replace(tmp, path)


def write_inputs(out_dir, seed):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for batch, seq in INPUT_SHAPES:
        path = os.path.join(out_dir, f"ids_{batch}x{seq}.npy")
        ids = rng.integers(1000, VOCAB_SIZE, size=(batch, seq), dtype=np.int64)
        ids[:, 0] = CLS_ID
        ids[:, -1] = SEP_ID
        np.save(path, ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="cache directory (not in git)")
    ap.add_argument("--models", default=",".join(SHAPES),
                    help="comma-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    write_inputs(os.path.join(args.out, "inputs"), args.seed)
    for name in args.models.split(","):
        if name not in SHAPES:
            sys.exit(f"make_models.py: unknown model '{name}' (known: {', '.join(SHAPES)})")
        model_dir = os.path.join(args.out, name)
        stamp = os.path.join(model_dir, "stamp.json")
        want = {"format": FORMAT_VERSION, "seed": args.seed, "shape": SHAPES[name],
                "torch": torch.__version__}
        if not args.force and os.path.exists(stamp):
            with open(stamp, encoding="utf-8") as f:
                if json.load(f) == json.loads(json.dumps(want)):
                    print(f"{name}: up to date in {model_dir}")
                    continue
        os.makedirs(model_dir, exist_ok=True)
        if os.path.exists(stamp):
            os.remove(stamp)
        model = build_model(name, args.seed)
        write_checkpoint(model, name, model_dir)
        for opset, file in ONNX_FILES.items():
            export_onnx(model, os.path.join(model_dir, file), opset)
        with open(stamp, "w", encoding="utf-8") as f:
            json.dump(want, f)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params / 1e6:.1f}M parameters -> {model_dir}")


if __name__ == "__main__":
    main()
