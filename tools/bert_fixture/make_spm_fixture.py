#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Builds small BERT / XLM-RoBERTa checkpoints with XLM-R's SentencePiece tokenizer.

multilingual-e5-small (and the Multilingual-MiniLM models it comes from) is a
BERT network whose tokenizer is XLM-RoBERTa's: a SentencePiece unigram model
(`sentencepiece.bpe.model`, no vocab.txt) whose ids are shifted to fairseq's
order; multilingual-e5-base/large and bge-m3 put the same tokenizer on an
XLM-RoBERTa network, which is BERT's encoder with position ids counted from
pad_token_id + 1. This script makes one checkpoint of each kind,
`tiny_spm_mean_st` (BERT) and `tiny_xlmr_cls` (XLM-RoBERTa):

  * trains a small unigram model with SentencePiece (Debian's
    python3-sentencepiece) on a corpus written here (English, accented Latin,
    Chinese and Japanese shop phrases), with XLM-R's settings: nmt_nfkc
    normalisation, a dummy prefix, <unk> 0, <s> 1, </s> 2, no <pad> piece;
  * maps SentencePiece ids to model ids the way Hugging Face's
    XLMRobertaTokenizer does, written here from its definition: <s> 0,
    <pad> 1, </s> 2, <unk> 3 (also for SentencePiece's <unk>), every other
    piece at its SentencePiece id + 1, <mask> after the last piece;
    a sequence is <s> pieces </s>, pieces truncated to max_length - 2;
  * writes a random network (make_bert_fixture.py's weights and its two
    independent forward passes, which must agree, fed Hugging Face's
    position ids: arange for BERT, create_position_ids_from_input_ids for
    XLM-RoBERTa) whose word-embedding table has 3 rows more than the
    tokenizer's ids, as multilingual-e5-small's 250,037 rows exceed XLM-R's
    250,002 ids.

It also writes `spm_t5_specials.model`, a SentencePiece model with T5's
special pieces (<pad> 0, </s> 1, <unk> 2, no <s>; identity normalisation,
so only a few KiB), which funnel must refuse: XLM-R's id mapping assumes
<unk> 0, <s> 1, </s> 2.

Run with Debian's python (torch 1.13, numpy, sentencepiece 0.1.97), CPU only:
    /usr/bin/python3 tools/bert_fixture/make_spm_fixture.py --out tests/data/bert
"""

import argparse
import io
import os
import shutil
import sys

import sentencepiece as spm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_bert_fixture as mbf  # noqa: E402

MAX_POSITION = 64
SPM_VOCAB = 160
EXTRA_ROWS = 3  # embedding rows past the tokenizer's last id (<mask>)

# Corpus: shop phrases; every character of the inputs below except the
# unknown ones occurs here, so that only those become <unk>.
_CORPUS_LINES = [
    "red running shoes for men", "blue running shoes for women", "smart watch with heart rate",
    "kitchen knife set of five", "USB-C cable, 2 metres", "wireless earbuds with charging case",
    "Café au lait mug", "crème brûlée torch", "déjà vu poster", "naïve art print, framed",
    "北京 烤鸭 礼盒", "红色 跑步鞋", "智能 手表", "手机壳 透明", "我的 购物车",
    "東京 お土産", "ラーメン 鉢", "price: $19.99 (free shipping)", "50% off today!",
    "size 42; colour: black & white", "the best coffee cup in the world",
    "hello world", "new arrivals: summer dresses", "men's leather wallet",
    "women's silk scarf", "kids' rain boots", "garden hose 30m", "LED desk lamp",
]


def corpus_text():
    lines = []
    for rep in range(40):
        for i, line in enumerate(_CORPUS_LINES):
            # Deterministic variety: rotate words so that pieces have several contexts.
            words = line.split(" ")
            k = (rep + i) % len(words)
            lines.append(" ".join(words[k:] + words[:k]))
    return "\n".join(lines) + "\n"


def train_spm(path_prefix):
    spm.SentencePieceTrainer.train(
        sentence_iterator=io.StringIO(corpus_text()),
        model_prefix=path_prefix,
        model_type="unigram",
        vocab_size=SPM_VOCAB,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1,
        seed_sentencepiece_size=100000,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        minloglevel=2,
    )


def train_t5_specials(path_prefix):
    """A model whose special pieces are where T5's are (see the module doc)."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=io.StringIO(corpus_text()),
        model_prefix=path_prefix,
        model_type="unigram",
        vocab_size=100,
        character_coverage=1.0,
        normalization_rule_name="identity",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    os.remove(path_prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=path_prefix + ".model")
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    print(f"{path_prefix}.model: {sp.get_piece_size()} pieces, "
          f"{os.path.getsize(path_prefix + '.model') / 1024:.1f} KiB")


def xlmr_ids(sp, text, max_length):
    """XLMRobertaTokenizer's ids of one text: <s> pieces </s>, truncated."""
    pieces = sp.encode(text, out_type=int)
    ids = [3 if p == sp.unk_id() else p + 1 for p in pieces]
    ids = ids[: max_length - 2]
    return [0] + ids + [2], [sp.id_to_piece(p) for p in pieces][: max_length - 2]


SPECS = [
    {
        # multilingual-e5-small's layout: model_type bert, no tensor prefix
        # (sentence-transformers), mean pooling + Normalize.
        "name": "tiny_spm_mean_st", "seed": 44, "model_type": "bert", "prefix": "",
        "pooling": "mean", "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    },
    {
        # multilingual-e5-base / bge-m3's layout: model_type xlm-roberta,
        # "roberta." prefix (as XLMRobertaModel saves), positions counted from
        # pad_token_id + 1 (so max_position_embeddings = 64 + 2), one token
        # type, LayerNorm eps 1e-5, CLS pooling + Normalize (bge-m3).
        "name": "tiny_xlmr_cls", "seed": 55, "model_type": "xlm-roberta", "prefix": "roberta.",
        "pooling": "cls", "type_vocab_size": 1, "layer_norm_eps": 1e-5,
    },
]


def hf_position_ids(ids, model_type, pad):
    """Hugging Face's position ids: arange for BERT; for XLM-RoBERTa
    create_position_ids_from_input_ids: cumsum of the non-pad mask, times the
    mask, plus padding_idx (real tokens count from pad + 1, pads sit at pad)."""
    if model_type == "bert":
        return torch.arange(ids.shape[1])[None].expand_as(ids)
    m = ids.ne(pad).long()
    return torch.cumsum(m, dim=1) * m + pad


def make_fixture(spec, out_root, model_src=None):
    name = spec["name"]
    d = os.path.join(out_root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    model_file = os.path.join(d, "sentencepiece.bpe.model")
    if model_src is None:
        train_spm(os.path.join(d, "sentencepiece.bpe"))
        os.remove(os.path.join(d, "sentencepiece.bpe.vocab"))
    else:
        shutil.copyfile(model_src, model_file)
    sp = spm.SentencePieceProcessor(model_file=model_file)
    assert sp.get_piece_size() == SPM_VOCAB
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    tokenizer_ids = SPM_VOCAB + 2  # fairseq's 4 specials replace spm's 3, plus <mask>
    pad = 1
    roberta = spec["model_type"] == "xlm-roberta"
    offset = pad + 1 if roberta else 0

    words = ["smart", "watch", "北京", "running", "shoes", "2024", "!", "Café", "ラーメン", "kitchen"]

    def fill(target):
        out = []
        while len(xlmr_ids(sp, " ".join(out), 10 ** 6)[0]) < target:
            out.append(words[len(out) % len(words)])
        return out

    exact = fill(MAX_POSITION)
    while len(xlmr_ids(sp, " ".join(exact), 10 ** 6)[0]) > MAX_POSITION:
        exact.pop()
    texts = [
        "Hello world",
        # NFKC: fullwidth letters and digits, the "fi" ligature, a decomposed é;
        # extra whitespace (collapsed), a tab.
        "ＵＳＢ－Ｃ ｃａｂｌｅ  ２０２４ ﬁre  Cafe\u0301\tmug",
        "红色 跑步鞋 北京烤鸭 東京のラーメン",
        # 猫 and ☃ are not in the corpus: SentencePiece's <unk>, id 3 here.
        "猫 shoes ☃",
        " ".join(exact),
        " ".join(fill(MAX_POSITION + 20)),  # truncated
    ]
    encoded = [xlmr_ids(sp, t, MAX_POSITION) for t in texts]
    assert len(encoded[4][0]) <= MAX_POSITION and len(encoded[5][0]) == MAX_POSITION
    assert 3 in encoded[3][0]

    h = 32
    cfg = {
        "architectures": ["XLMRobertaModel" if roberta else "BertModel"],
        "model_type": spec["model_type"],
        "hidden_size": h,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 4 * h,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POSITION + offset,
        "type_vocab_size": spec["type_vocab_size"],
        "vocab_size": tokenizer_ids + EXTRA_ROWS,
        "layer_norm_eps": spec["layer_norm_eps"],
        "initializer_range": 0.02,
        "pad_token_id": pad,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.30.0",
    }
    n = max(len(ids) for ids, _ in encoded)
    b = len(texts)
    ids = torch.full((b, n), pad, dtype=torch.int64)
    mask = torch.zeros(b, n, dtype=torch.int64)
    for r, (row, _) in enumerate(encoded):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    positions = hf_position_ids(ids, spec["model_type"], pad)
    # Real tokens sit at offset + t, whatever the model type.
    assert bool(((positions - torch.arange(n)[None] - offset) * mask).eq(0).all())

    gen = torch.Generator().manual_seed(spec["seed"])
    weights = mbf.make_weights(cfg, gen)
    exact_w = mbf.round_to(weights, torch.float32)
    ref64 = mbf.hand_forward(exact_w, cfg, ids, mask, torch.float64, positions)
    tor64 = mbf.torch_forward(exact_w, cfg, ids, mask, torch.float64, positions)
    valid = mask.bool()[:, :, None]
    d64 = ((ref64 - tor64).abs() * valid).max().item()
    assert d64 < 1e-10, f"float64 forwards differ by {d64}"
    ref32 = mbf.hand_forward(exact_w, cfg, ids, mask, torch.float32, positions)
    with torch.no_grad():
        tor32 = mbf.torch_forward(exact_w, cfg, ids, mask, torch.float32, positions)
    d32 = max(((ref32.double() - ref64).abs() * valid).max().item(),
              ((tor32.double() - ref64).abs() * valid).max().item())
    assert d32 < 1e-5, f"float32 forwards differ from float64 by {d32}"
    hidden = (ref64 * valid).to(torch.float32)
    raw = {m: mbf.pool(ref64, mask, m) for m in ("cls", "mean", "max")}
    pooled = raw[spec["pooling"]] / raw[spec["pooling"]].norm(dim=1, keepdim=True)

    mbf.dump_json(os.path.join(d, "config.json"), cfg)
    mbf.dump_json(os.path.join(d, "tokenizer_config.json"), {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": MAX_POSITION,
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": True,
                       "rstrip": False, "single_word": False, "__type": "AddedToken"},
    })
    tensors = sorted((spec["prefix"] + k, t.to(torch.float32)) for k, t in weights.items())
    mbf.write_safetensors(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
    mbf.write_sentence_transformers(d, h, spec["pooling"], normalize=True)
    mbf.write_references(d, texts, [p for _, p in encoded], ids, mask, hidden, pooled, raw)
    mbf.dump_json(os.path.join(d, "fixture.json"), {
        "dtype": "F32", "tensor_prefix": spec["prefix"], "pooling": spec["pooling"],
        "normalize": True, "sentence_transformers": True, "model_type": spec["model_type"],
        "tokenizer": "xlm-roberta sentencepiece", "position_offset": offset,
        "batch": b, "seq_len": n, "lengths": [len(r) for r, _ in encoded],
        "max_length": MAX_POSITION, "seed": spec["seed"], "sentencepiece_pieces": SPM_VOCAB,
        "tokenizer_ids": tokenizer_ids, "vocab_size": cfg["vocab_size"],
        "float32_vs_float64_max_abs_diff": d32,
    })
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    print(f"{name}: batch {b} x {n}, lengths {[len(r) for r, _ in encoded]}, "
          f"fp32 diff {d32:.2e}, {size / 1024:.0f} KiB")
    return model_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "bert"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = None
    for spec in SPECS:  # the first trains the SentencePiece model, the others copy it
        model = make_fixture(spec, args.out, model)
    train_t5_specials(os.path.join(args.out, "spm_t5_specials"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
