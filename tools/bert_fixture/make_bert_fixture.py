#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Builds small random BERT checkpoints in Hugging Face layout, with reference outputs.

The fixtures prove funnel's BertEncoder right: each one is a complete checkpoint
directory (config.json, vocab.txt, tokenizer_config.json, model.safetensors and,
for some, sentence-transformers pooling files) plus the token ids fed to the
model and the outputs that two independent forward passes agree on:

  * torch.nn.TransformerEncoderLayer (PyTorch's own post-norm encoder layer)
    with the HF tensors mapped onto in_proj / out_proj / linear1 / linear2 /
    norm1 / norm2, and
  * a forward pass written out here from the BERT definition (explicit
    projections, masked softmax, erf GELU, LayerNorm).

Both run in float64 over the weights exactly as stored (after rounding to the
file's dtype), they must agree to 1e-10, and both in float32 must agree to
1e-5; the float64 result, cast to float32, is the reference.

Token ids come from a minimal BERT WordPiece tokenizer written here from the
rules (clean-up, CJK splitting, lower-casing / accent stripping, punctuation
splitting, greedy longest-match WordPiece, [UNK] for unsplittable words and
words over 100 characters, truncation to max_length with [CLS] ... [SEP]).

The safetensors files are written with struct + json (the safetensors Python
package is not in Debian), which doubles as a writer independent of funnel's.

Run with Debian's python (torch 1.13, numpy), CPU only:
    /usr/bin/python3 tools/bert_fixture/make_bert_fixture.py --out tests/data/bert
The output is deterministic for a given torch/numpy version. See README.md.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import unicodedata

import numpy as np
import torch

# ---------------------------------------------------------------------------
# safetensors writer (format: u64 little-endian header length, JSON header,
# data section covered exactly by the tensors' data_offsets).

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def tensor_bytes(t):
    """Little-endian raw bytes of a contiguous tensor (numpy has no bfloat16)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, torch.Tensor) written in that order."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors:
        data = tensor_bytes(t)
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The format allows trailing spaces in the header; pad so data starts 8-aligned.
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------
# Minimal BERT tokenizer, written from the rules of BERT's BasicTokenizer and
# WordpieceTokenizer.


def _is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class Tokenizer:
    def __init__(self, vocab, do_lower_case, strip_accents, tokenize_chinese_chars=True):
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.do_lower_case = do_lower_case
        # HF: strip_accents None follows do_lower_case.
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars

    def basic(self, text):
        cleaned = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            cleaned.append(" " if _is_whitespace(ch) else ch)
        text = "".join(cleaned)
        if self.tokenize_chinese_chars:
            text = "".join(f" {ch} " if _is_cjk(ord(ch)) else ch for ch in text)
        out = []
        for word in text.split():
            if self.do_lower_case:
                word = word.lower()
            if self.strip_accents:
                word = "".join(c for c in unicodedata.normalize("NFD", word)
                               if unicodedata.category(c) != "Mn")
            piece = ""
            for ch in word:
                if _is_punctuation(ch):
                    if piece:
                        out.append(piece)
                        piece = ""
                    out.append(ch)
                else:
                    piece += ch
            if piece:
                out.append(piece)
        return out

    def wordpiece(self, word):
        if len(word) > 100:
            return ["[UNK]"]
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                sub = word[start:end]
                if start > 0:
                    sub = "##" + sub
                if sub in self.vocab:
                    found = sub
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def tokenize(self, text):
        return [p for w in self.basic(text) for p in self.wordpiece(w)]

    def encode(self, text, max_length):
        toks = self.tokenize(text)[: max_length - 2]
        toks = ["[CLS]"] + toks + ["[SEP]"]
        return toks, [self.vocab[t] for t in toks]


# ---------------------------------------------------------------------------
# Vocabularies.

_WORDS = [
    "the", "a", "and", "of", "for", "with", "in", "on", "to", "is", "new", "best",
    "hello", "world", "price", "red", "blue", "green", "black", "white", "shoe", "shoes",
    "run", "running", "phone", "case", "cafe", "deja", "vu", "cotton", "shirt", "jacket",
    "women", "men", "kids", "sale", "free", "shipping", "water", "bottle", "steel",
    "leather", "bag", "coffee", "tea", "cup", "light", "lamp", "desk", "chair", "wood",
    "smart", "watch", "band", "sport", "soft", "warm", "winter", "summer", "size",
    "large", "small", "pack", "set", "gift", "home", "kitchen", "knife", "book", "pen",
    "co", "operate", "fast", "charge", "cable", "usb", "wireless", "ear", "buds",
]
_PIECES = [
    "##s", "##ing", "##ed", "##er", "##ly", "##es", "##ness", "##ful", "##less", "##est",
    "##ning", "##ers", "##ion", "##tion", "##able", "##ate", "##ic", "##al", "##y", "##en",
    "##ph", "##one", "##hoe", "##ir", "##ts", "##ck", "##et", "##ter", "##ow", "##ue",
]
_CJK = list("北京欢迎你我的鞋红色手机壳运动跑步水杯咖啡茶")  # 的 etc.; 猫 is left out -> [UNK]
_PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def build_vocab(layout, cased, extra_accents, rng, size):
    """Returns the vocab list; layout 'compact' puts specials at 0..4, 'bert' at 0 and 100..103."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    if cased:
        letters += [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    digits = [str(d) for d in range(10)]
    body = []
    body += _PUNCT
    body += digits + ["##" + d for d in digits]
    body += letters + ["##" + c for c in letters]
    words = list(_WORDS)
    if cased:
        words += [w.capitalize() for w in ("hello", "world", "cafe", "price", "red", "the")]
        words += ["Café", "Déjà", "USB"]
    if extra_accents:
        body += ["é", "à", "##é", "##à", "café"]
    body += words + _PIECES + _CJK
    body = list(dict.fromkeys(body))  # single letters and pieces repeat in the lists
    # Deterministic pseudo-words fill the vocab up to `size`, so that the
    # embedding table is not only the tokens the inputs use.
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "zo", "vi", "pe", "su", "qu", "xi"]
    seen = set(body)
    while len(body) < size - (5 if layout == "compact" else 104):
        w = "".join(rng.choice(syll) for _ in range(int(rng.integers(1, 4))))
        if rng.random() < 0.4:
            w = "##" + w
        if w not in seen:
            seen.add(w)
            body.append(w)
    if layout == "compact":
        return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + body
    unused = [f"[unused{i}]" for i in range(99)]
    return ["[PAD]"] + unused + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + body


# ---------------------------------------------------------------------------
# Model weights (HF names without the "bert." prefix) and the two forwards.


def make_weights(cfg, gen):
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]

    def lin(out_f, in_f, gain=1.0):
        w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64) * (gain / math.sqrt(in_f))
        b = torch.randn(out_f, generator=gen, dtype=torch.float64) * 0.1
        return w, b

    def ln():
        g = 1.0 + 0.1 * torch.randn(h, generator=gen, dtype=torch.float64)
        b = 0.1 * torch.randn(h, generator=gen, dtype=torch.float64)
        return g, b

    w = {}
    w["embeddings.word_embeddings.weight"] = torch.randn(v, h, generator=gen, dtype=torch.float64)
    w["embeddings.position_embeddings.weight"] = 0.5 * torch.randn(
        cfg["max_position_embeddings"], h, generator=gen, dtype=torch.float64)
    w["embeddings.token_type_embeddings.weight"] = 0.5 * torch.randn(
        cfg["type_vocab_size"], h, generator=gen, dtype=torch.float64)
    w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = ln()
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, gain in (("query", 1.5), ("key", 1.5), ("value", 1.0)):
            w[p + f"attention.self.{name}.weight"], w[p + f"attention.self.{name}.bias"] = lin(h, h, gain)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = lin(h, h)
        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"] = ln()
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = lin(f, h)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = lin(h, f)
        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"] = ln()
    return w


def hand_forward(w, cfg, ids, mask, dtype, positions=None):
    """BERT written out from its definition."""
    eps = cfg["layer_norm_eps"]
    nh = cfg["num_attention_heads"]
    g = {k: t.to(dtype) for k, t in w.items()}
    b, n = ids.shape
    h = cfg["hidden_size"]
    d = h // nh

    def layer_norm(x, gamma, beta):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * gamma + beta

    def linear(x, name):
        return x @ g[name + ".weight"].T + g[name + ".bias"]

    pos = torch.arange(n)[None] if positions is None else positions  # 1 x n or b x n
    x = (g["embeddings.word_embeddings.weight"][ids] + g["embeddings.position_embeddings.weight"][pos]
         + g["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)])
    x = layer_norm(x, g["embeddings.LayerNorm.weight"], g["embeddings.LayerNorm.bias"])
    keep = mask.bool()[:, None, None, :]  # b x 1 x 1 x n (keys)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def heads(t):
            return t.view(b, n, nh, d).transpose(1, 2)

        q = heads(linear(x, p + "attention.self.query"))
        k = heads(linear(x, p + "attention.self.key"))
        v = heads(linear(x, p + "attention.self.value"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~keep, float("-inf"))
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, h)
        x = layer_norm(linear(ctx, p + "attention.output.dense") + x,
                       g[p + "attention.output.LayerNorm.weight"], g[p + "attention.output.LayerNorm.bias"])
        inter = linear(x, p + "intermediate.dense")
        inter = 0.5 * inter * (1.0 + torch.erf(inter / math.sqrt(2.0)))
        x = layer_norm(linear(inter, p + "output.dense") + x,
                       g[p + "output.LayerNorm.weight"], g[p + "output.LayerNorm.bias"])
    return x


def torch_forward(w, cfg, ids, mask, dtype, positions=None):
    """The same model built from torch.nn modules: Embedding + LayerNorm, TransformerEncoderLayer."""
    h, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    word = torch.nn.Embedding.from_pretrained(w["embeddings.word_embeddings.weight"].to(dtype))
    posn = torch.nn.Embedding.from_pretrained(w["embeddings.position_embeddings.weight"].to(dtype))
    typ = torch.nn.Embedding.from_pretrained(w["embeddings.token_type_embeddings.weight"].to(dtype))
    norm = torch.nn.LayerNorm(h, eps=eps).to(dtype)
    layers = []
    with torch.no_grad():
        norm.weight.copy_(w["embeddings.LayerNorm.weight"])
        norm.bias.copy_(w["embeddings.LayerNorm.bias"])
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            layer = torch.nn.TransformerEncoderLayer(
                d_model=h, nhead=nh, dim_feedforward=cfg["intermediate_size"], dropout=0.0,
                activation="gelu", layer_norm_eps=eps, batch_first=True, norm_first=False).to(dtype)
            layer.self_attn.in_proj_weight.copy_(torch.cat(
                [w[p + f"attention.self.{s}.weight"] for s in ("query", "key", "value")]))
            layer.self_attn.in_proj_bias.copy_(torch.cat(
                [w[p + f"attention.self.{s}.bias"] for s in ("query", "key", "value")]))
            layer.self_attn.out_proj.weight.copy_(w[p + "attention.output.dense.weight"])
            layer.self_attn.out_proj.bias.copy_(w[p + "attention.output.dense.bias"])
            layer.norm1.weight.copy_(w[p + "attention.output.LayerNorm.weight"])
            layer.norm1.bias.copy_(w[p + "attention.output.LayerNorm.bias"])
            layer.linear1.weight.copy_(w[p + "intermediate.dense.weight"])
            layer.linear1.bias.copy_(w[p + "intermediate.dense.bias"])
            layer.linear2.weight.copy_(w[p + "output.dense.weight"])
            layer.linear2.bias.copy_(w[p + "output.dense.bias"])
            layer.norm2.weight.copy_(w[p + "output.LayerNorm.weight"])
            layer.norm2.bias.copy_(w[p + "output.LayerNorm.bias"])
            layer.eval()
            layers.append(layer)
    pos = torch.arange(ids.shape[1])[None].expand_as(ids) if positions is None else positions
    x = norm(word(ids) + posn(pos) + typ(torch.zeros_like(ids)))
    pad = ~mask.bool()  # True where padded, as src_key_padding_mask expects
    for layer in layers:
        x = layer(x, src_key_padding_mask=pad)
    return x.detach()


# ---------------------------------------------------------------------------
# Fixtures.


def round_to(w, dtype):
    """Weights as the file stores them, back in float64 for the reference forward."""
    return {k: t.to(dtype).to(torch.float64) for k, t in w.items()}


def pool(hidden, mask, mode):
    m = mask.to(hidden.dtype)[:, :, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    raise ValueError(mode)


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_sentence_transformers(d, hidden, pooling, normalize):
    """modules.json (Transformer, Pooling, optional Normalize), the pooling
    config and sentence_bert_config.json, as sentence-transformers saves them."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    dump_json(os.path.join(d, "modules.json"), modules)
    os.makedirs(os.path.join(d, "1_Pooling"))
    dump_json(os.path.join(d, "1_Pooling", "config.json"), {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    dump_json(os.path.join(d, "sentence_bert_config.json"),
              {"max_seq_length": MAX_POSITION, "do_lower_case": False})


def write_references(d, texts, token_lines, ids, mask, hidden, pooled, raw):
    """inputs.txt, tokens.txt and the .npy files the tests compare against."""
    b, n = ids.shape
    with open(os.path.join(d, "inputs.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in texts))
    with open(os.path.join(d, "tokens.txt"), "w", encoding="utf-8") as f:
        f.write("".join(" ".join(toks) + "\n" for toks in token_lines))
    np.save(os.path.join(d, "ids.npy"), ids.numpy().astype(np.int64))
    np.save(os.path.join(d, "mask.npy"), mask.numpy().astype(np.int64))
    # 2-D (batch * seq_len) x hidden, the same bytes as batch x seq_len x hidden in
    # C order, because funnel's .npy reader takes 1-D and 2-D arrays only.
    np.save(os.path.join(d, "last_hidden_state.npy"), hidden.reshape(b * n, hidden.shape[-1]).numpy())
    np.save(os.path.join(d, "pooled.npy"), pooled.to(torch.float32).numpy())
    for m, t in raw.items():
        np.save(os.path.join(d, f"pooled_{m}.npy"), t.to(torch.float32).numpy())


FIXTURES = [
    {
        # F32, HF BertModel naming ("bert." prefix, pooler kept), uncased with
        # accent stripping, special tokens at 0..4, sentence-transformers CLS pooling.
        "name": "tiny_f32_cls",
        "seed": 11,
        "dtype": torch.float32,
        "prefix": "bert.",
        "hidden": 32, "layers": 2, "heads": 4, "vocab": 400, "vocab_layout": "compact",
        "do_lower_case": True, "strip_accents": None, "cased_vocab": False, "accent_vocab": False,
        "pooling": "cls", "normalize": False, "sentence_transformers": True, "pooler": True,
        "position_ids": False,
        "texts": [
            "Hello, World!",
            "Running shoes for men -- price: $19.99 (free shipping)",
            "北京欢迎你 我的红色跑步鞋",
            "Café Déjà vu",
            "co\u00adoperate\twith the USB-C cable; 猫 is not in the vocab",
            "@MAX64@",
        ],
    },
    {
        # F16, sentence-transformers naming (no prefix), cased (no lower-casing,
        # accents kept), specials at 0 and 100..103 as in bert-base vocabularies,
        # mean pooling + Normalize, one text longer than max_length (truncated).
        "name": "tiny_f16_mean_st",
        "seed": 22,
        "dtype": torch.float16,
        "prefix": "",
        "hidden": 48, "layers": 2, "heads": 4, "vocab": 420, "vocab_layout": "bert",
        "do_lower_case": False, "strip_accents": None, "cased_vocab": True, "accent_vocab": False,
        "pooling": "mean", "normalize": True, "sentence_transformers": True, "pooler": False,
        "position_ids": False,
        "texts": [
            "Hello World",
            "Café Déjà vu: the Best coffee cup",
            "@LONG@",
            "手机壳 phone case, USB!",
            "x",
        ],
    },
    {
        # BF16, "bert." prefix, no sentence-transformers files (mean pooling is the
        # default sentence-transformers uses for a plain checkpoint), lower-cased
        # but accents kept (strip_accents false), an I64 position_ids buffer as
        # older HF checkpoints carry, a single text (batch size 1).
        "name": "tiny_bf16_plain",
        "seed": 33,
        "dtype": torch.bfloat16,
        "prefix": "bert.",
        "hidden": 64, "layers": 2, "heads": 4, "vocab": 360, "vocab_layout": "compact",
        "do_lower_case": True, "strip_accents": False, "cased_vocab": False, "accent_vocab": True,
        "pooling": "mean", "normalize": False, "sentence_transformers": False, "pooler": False,
        "position_ids": True,
        "texts": [
            "Best CAFÉ in the world: warm coffee & tea, à la carte ... "
            + "a" * 101 + " kitchen knife set",
        ],
    },
]

MAX_POSITION = 64


def expand_text(text, tok):
    """@MAX64@: a text that fills exactly 64 ids; @LONG@: one that must be truncated."""
    words = ["smart", "watch", "band", "running", "shoes", "2024", "!", "北", "京", "kitchen"]
    if text == "@MAX64@":
        out = []
        while len(tok.tokenize(" ".join(out))) < MAX_POSITION - 2:
            out.append(words[len(out) % len(words)])
        assert len(tok.tokenize(" ".join(out))) == MAX_POSITION - 2
        return " ".join(out)
    if text == "@LONG@":
        out = []
        while len(tok.tokenize(" ".join(out))) < MAX_POSITION + 20:
            out.append(words[len(out) % len(words)].capitalize() if len(out) % 3 == 0
                       else words[len(out) % len(words)])
        return " ".join(out)
    return text


def make_fixture(spec, out_root):
    rng = np.random.default_rng(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    vocab = build_vocab(spec["vocab_layout"], spec["cased_vocab"], spec["accent_vocab"], rng, spec["vocab"])
    assert len(vocab) == spec["vocab"] and len(set(vocab)) == len(vocab)
    h = spec["hidden"]
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h,
        "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["heads"],
        "intermediate_size": 4 * h,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POSITION,
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": {torch.float32: "float32", torch.float16: "float16",
                        torch.bfloat16: "bfloat16"}[spec["dtype"]],
        "transformers_version": "4.30.0",
    }
    tok = Tokenizer(vocab, spec["do_lower_case"], spec["strip_accents"])
    texts = [expand_text(t, tok) for t in spec["texts"]]
    encoded = [tok.encode(t, MAX_POSITION) for t in texts]
    n = max(len(ids) for _, ids in encoded)
    b = len(texts)
    ids = torch.zeros(b, n, dtype=torch.int64)  # [PAD] = 0
    mask = torch.zeros(b, n, dtype=torch.int64)
    for r, (_, row) in enumerate(encoded):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1

    weights = make_weights(cfg, gen)
    stored = {k: t.to(spec["dtype"]) for k, t in weights.items()}
    exact = round_to(weights, spec["dtype"])

    # Two independent forwards must agree: float64 tightly, float32 within 1e-5.
    ref64 = hand_forward(exact, cfg, ids, mask, torch.float64)
    tor64 = torch_forward(exact, cfg, ids, mask, torch.float64)
    valid = mask.bool()[:, :, None]
    d64 = ((ref64 - tor64).abs() * valid).max().item()
    assert d64 < 1e-10, f"{spec['name']}: float64 forwards differ by {d64}"
    ref32 = hand_forward(exact, cfg, ids, mask, torch.float32)
    with torch.no_grad():  # lets PyTorch take its fused fast path, a third implementation
        tor32 = torch_forward(exact, cfg, ids, mask, torch.float32)
    d32 = max(((ref32.double() - ref64).abs() * valid).max().item(),
              ((tor32.double() - ref64).abs() * valid).max().item())
    assert d32 < 1e-5, f"{spec['name']}: float32 forwards differ from float64 by {d32}"

    hidden = (ref64 * valid).to(torch.float32)  # padded positions are zero
    raw = {m: pool(ref64, mask, m) for m in ("cls", "mean", "max")}
    pooled = raw[spec["pooling"]]
    if spec["normalize"]:
        pooled = pooled / pooled.norm(dim=1, keepdim=True)

    d = os.path.join(out_root, spec["name"])
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)

    dump_json(os.path.join(d, "config.json"), cfg)
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in vocab))
    dump_json(os.path.join(d, "tokenizer_config.json"), {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": spec["do_lower_case"],
        "strip_accents": spec["strip_accents"],
        "tokenize_chinese_chars": True,
        "model_max_length": MAX_POSITION,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]",
    })

    tensors = []
    if spec["position_ids"]:
        tensors.append(("embeddings.position_ids", torch.arange(MAX_POSITION, dtype=torch.int64)[None]))
    tensors += sorted(stored.items())
    if spec["pooler"]:
        pw = torch.randn(h, h, generator=gen, dtype=torch.float64) / math.sqrt(h)
        pb = 0.1 * torch.randn(h, generator=gen, dtype=torch.float64)
        tensors += [("pooler.dense.bias", pb.to(spec["dtype"])), ("pooler.dense.weight", pw.to(spec["dtype"]))]
    tensors = [(spec["prefix"] + k, t) for k, t in tensors]
    write_safetensors(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})

    if spec["sentence_transformers"]:
        write_sentence_transformers(d, h, spec["pooling"], spec["normalize"])
    write_references(d, texts, [toks for toks, _ in encoded], ids, mask, hidden, pooled, raw)
    dump_json(os.path.join(d, "fixture.json"), {
        "dtype": _ST_DTYPES[spec["dtype"]],
        "tensor_prefix": spec["prefix"],
        "pooling": spec["pooling"],
        "normalize": spec["normalize"],
        "sentence_transformers": spec["sentence_transformers"],
        "batch": b,
        "seq_len": n,
        "lengths": [len(r) for _, r in encoded],
        "max_length": MAX_POSITION,
        "seed": spec["seed"],
        "float32_vs_float64_max_abs_diff": d32,
    })
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    print(f"{spec['name']}: batch {b} x {n}, lengths {[len(r) for _, r in encoded]}, "
          f"fp32 diff {d32:.2e}, {size / 1024:.0f} KiB")
    return size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "bert"))
    ap.add_argument("--safetensors-sample", default=None,
                    help="also write a small multi-dtype safetensors file here (for test_safetensors)")
    args = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    total = sum(make_fixture(spec, args.out) for spec in FIXTURES)
    print(f"total {total / 1024:.0f} KiB in {args.out}")
    if args.safetensors_sample:
        os.makedirs(os.path.dirname(os.path.abspath(args.safetensors_sample)), exist_ok=True)
        write_sample(args.safetensors_sample)
    return 0


def write_sample(path):
    """A tiny file with one tensor per dtype and values known by hand (see README)."""
    tensors = [
        ("f32", torch.tensor([[1.0, -2.5, 0.15625], [3.0e38, -0.0, 1e-45]], dtype=torch.float32)),
        ("f16", torch.tensor([1.0, -2.0, 65504.0, 5.9604645e-08], dtype=torch.float16)),
        ("bf16", torch.tensor([1.0, -2.0, 3.140625, 1.0e38], dtype=torch.bfloat16)),
        ("f64", torch.tensor([0.1, -1e300], dtype=torch.float64)),
        ("i64", torch.tensor([[-1, 2 ** 40]], dtype=torch.int64)),
        ("i32", torch.tensor([7, -8, 2 ** 31 - 1], dtype=torch.int32)),
        ("i16", torch.tensor([-32768], dtype=torch.int16)),
        ("i8", torch.tensor([-128, 127, 0], dtype=torch.int8)),
        ("u8", torch.tensor([255, 1], dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True], dtype=torch.bool)),
        ("scalar", torch.tensor(2.0, dtype=torch.float32)),
        ("empty", torch.zeros(0, 3, dtype=torch.float32)),
    ]
    write_safetensors(path, tensors, {"format": "pt", "source": "make_bert_fixture.py"})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
