#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""PyTorch side of the BERT encoder benchmark (see docs/encoder-benchmark.md).

Loads the checkpoint that make_models.py wrote (model.safetensors) and times
the forward pass under torch.inference_mode(), on the token ids of
<models-dir>/inputs/ids_<b>x<s>.npy (attention mask all ones, token types all
zeros; input tensors are built outside the timed region, and no tokenization
is timed for any runtime). Two implementations, one per process (--impl):

  hf  the Hugging Face BertModel structure written out in make_models.py
      (the module exported to ONNX), its projections run as torch.nn.Linear
      (addmm, bias fused) as Hugging Face's BertModel runs them: what serving
      a BERT from PyTorch eagerly does;
  nn  the same weights in torch.nn.TransformerEncoder, whose inference
      "fast path" (torch._transformer_encoder_layer_fwd: fused QKV
      projection and attention kernel) is PyTorch's own optimised encoder.

Three compute types (--dtype), the ways PyTorch itself offers to run a model
faster on a CPU, each the peer of funnel's compute type of the same name:

  fp32  as loaded (Debian's torch does the GEMMs in the system OpenBLAS);
  bf16  the module cast to torch.bfloat16 (model.to(torch.bfloat16)): its
        linear layers and attention products run on oneDNN's bf16 kernels,
        LayerNorm and softmax in bf16 too;
  int8  torch.ao.quantization.quantize_dynamic on every nn.Linear with
        per_channel_dynamic_qconfig (int8 weights per output channel,
        activations quantized per call, as funnel's int8 does), quantized
        engine "onednn"; hf only: the nn fast path does not accept
        dynamically quantized linear layers.

The report uses the faster implementation for each row and compute type, so
funnel is compared with the best PyTorch here. Threads: torch.set_num_threads(t) for each t in
--threads (intra-op), one inter-op thread, and the same count for the
OpenBLAS that Debian's torch calls for GEMMs (openblas_set_num_threads).
fp32 runs with OMP_WAIT_POLICY=PASSIVE (unless the environment sets it):
torch's OpenMP threads otherwise spin after each parallel region and take
the cores from OpenBLAS's own threads; on 2 threads that made PyTorch
1.8-3.9x slower than with the setting (MiniLM-L6 1 x 16 and 1 x 128,
2026-11-28), slower than on one thread. bf16 and int8 keep OpenMP's default:
oneDNN does their products on the OpenMP threads themselves, and waking
sleeping threads for every parallel region made them up to 2.7x slower.

One JSON line per (threads, shape) is appended to --out, with the largest
absolute difference to ONNX Runtime's output when --ref-dir holds it (and,
for bf16 and int8, the mean over tokens of the cosine between the two
hidden-state rows), and one line with the process's peak RSS (VmHWM) at the
end.

Run with Debian's python (torch 1.13, numpy):
    /usr/bin/python3 benchmarks/bert/bench_torch.py --models-dir build-bench/bert-models \\
        --model minilm-l6 --impl hf [--dtype fp32] --out results.jsonl [--ref-dir DIR]
"""

import argparse
import ctypes
import json
import math
import os
import sys
import time


def _dtype_argument(argv):
    """--dtype's value, read before argparse runs (torch must not be loaded yet)."""
    for i, arg in enumerate(argv):
        if arg == "--dtype" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--dtype="):
            return arg.split("=", 1)[1]
    return "fp32"


# Before torch (and its libgomp) loads; see the module doc.
if _dtype_argument(sys.argv[1:]) == "fp32":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_models  # noqa: E402  (the model definition and safetensors reader)


def status_kib(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return float("nan")


class NnEncoder(nn.Module):
    """The checkpoint's weights in torch.nn.TransformerEncoder (post-LayerNorm, erf GELU)."""

    def __init__(self, hf):
        super().__init__()
        cfg = hf.cfg
        self.embeddings = hf.embeddings

        def new_layer():
            return nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.ffn, dropout=0.0,
                                              activation="gelu",
                                              layer_norm_eps=make_models.LN_EPS,
                                              batch_first=True, norm_first=False)

        # Layer by layer, freeing each source layer once copied, so the
        # process never holds two copies of the weights (peak RSS is reported).
        layers = []
        with torch.no_grad():
            for i in range(cfg.layers):
                src, dst = hf.encoder.layer[i], new_layer()
                att = src.attention.self
                dst.self_attn.in_proj_weight.copy_(
                    torch.cat([att.query.weight, att.key.weight, att.value.weight]))
                dst.self_attn.in_proj_bias.copy_(
                    torch.cat([att.query.bias, att.key.bias, att.value.bias]))
                dst.self_attn.out_proj.weight.copy_(src.attention.output.dense.weight)
                dst.self_attn.out_proj.bias.copy_(src.attention.output.dense.bias)
                dst.norm1.weight.copy_(src.attention.output.LayerNorm.weight)
                dst.norm1.bias.copy_(src.attention.output.LayerNorm.bias)
                dst.linear1.weight.copy_(src.intermediate.dense.weight)
                dst.linear1.bias.copy_(src.intermediate.dense.bias)
                dst.linear2.weight.copy_(src.output.dense.weight)
                dst.linear2.bias.copy_(src.output.dense.bias)
                dst.norm2.weight.copy_(src.output.LayerNorm.weight)
                dst.norm2.bias.copy_(src.output.LayerNorm.bias)
                hf.encoder.layer[i] = nn.Identity()
                del src
                layers.append(dst)
        self.encoder = nn.TransformerEncoder(new_layer(), 1, enable_nested_tensor=True)
        self.encoder.layers = nn.ModuleList(layers)
        self.encoder.num_layers = cfg.layers

    def forward(self, input_ids, attention_mask, token_type_ids):
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, src_key_padding_mask=attention_mask == 0)


def serving_linears(model):
    """make_models.Linear -> torch.nn.Linear, in place.

    make_models.Linear computes matmul(x, W^T) + b so that the ONNX export
    has Hugging Face's MatMul and Add nodes; served from PyTorch, Hugging
    Face's BertModel runs nn.Linear, whose addmm fuses the bias (and which
    quantize_dynamic recognises). Same parameters, same results.
    """
    for module in model.modules():
        if type(module) is make_models.Linear:  # pylint: disable=unidiomatic-typecheck
            module.__class__ = nn.Linear
    return model


def to_dtype(model, dtype):
    """The model as PyTorch runs it in the given compute type (see the module doc)."""
    if dtype == "bf16":
        return model.to(torch.bfloat16)
    if dtype == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig  # pylint: disable=import-outside-toplevel
        if "onednn" not in torch.backends.quantized.supported_engines:
            sys.exit("bench_torch.py: this torch has no onednn quantized engine")
        torch.backends.quantized.engine = "onednn"
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return model


def mean_cosine(got, ref):
    """Mean over rows (tokens) of the cosine between got's and ref's rows."""
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    dots = np.sum(got * ref, axis=1)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    return float(np.mean(dots / np.maximum(norms, 1e-300)))


def openblas():
    """The system OpenBLAS that Debian's torch does its fp32 GEMMs in, or None."""
    try:
        return ctypes.CDLL("libopenblas.so.0")
    except OSError:
        return None


def openblas_setter():
    """openblas_set_num_threads of the OpenBLAS that torch calls, or None.

    Debian's torch does its fp32 GEMMs in the system BLAS (OpenBLAS, pthreads
    build), which keeps its own thread pool that torch.set_num_threads does
    not size; without this a "1 thread" row would use every core.
    """
    lib = openblas()
    return getattr(lib, "openblas_set_num_threads", None) if lib else None


def blas_name():
    """Which OpenBLAS build and kernels torch's GEMMs run on, e.g. "OpenBLAS
    0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64
    (core Cooperlake)", or None. OpenBLAS picks its kernels by CPU model at run
    time; a CPU it does not know gets older, slower ones, which moves PyTorch's
    speed by a factor of several, so the report names them.
    """
    lib = openblas()
    try:
        lib.openblas_get_config.restype = ctypes.c_char_p
        lib.openblas_get_corename.restype = ctypes.c_char_p
        config = lib.openblas_get_config().decode().strip()
        return f"{config} (core {lib.openblas_get_corename().decode()})"
    except AttributeError:  # no OpenBLAS (lib is None) or one without these calls
        return None


def percentile(sorted_times, p):
    """Nearest rank: the smallest value with at least p of the runs at or below it."""
    return sorted_times[max(0, math.ceil(p * len(sorted_times)) - 1)]


def time_shape(model, feeds, args):
    for _ in range(args.warmup):
        model(*feeds)
    times = []
    begin = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        model(*feeds)
        times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - begin
        if len(times) >= args.max_runs:
            break
        if len(times) >= args.min_runs and elapsed >= args.min_seconds:
            break
    times.sort()
    return {"runs": len(times), "median_ms": percentile(times, 0.5), "p90_ms": percentile(times, 0.9)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--impl", choices=["hf", "nn"], required=True)
    ap.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32")
    ap.add_argument("--out", required=True, help="JSON lines file to append to")
    ap.add_argument("--ref-dir", help="directory with ONNX Runtime's outputs (ort_<model>_<b>x<s>.npy)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="1x16,1x128,32x128")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-runs", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--max-runs", type=int, default=100)
    args = ap.parse_args()
    if args.dtype == "int8" and args.impl == "nn":
        ap.error("--dtype int8 runs --impl hf only (the nn fast path takes no quantized layers)")

    torch.set_num_interop_threads(1)
    set_blas_threads = openblas_setter()
    if set_blas_threads is None:
        print("bench_torch.py: note: no libopenblas.so.0 in reach; BLAS threads not set",
              file=sys.stderr)
    start_rss = status_kib("VmRSS")
    model = serving_linears(make_models.load_model(os.path.join(args.models_dir, args.model)))
    if args.impl == "nn":
        model = NnEncoder(model).eval()
    model = to_dtype(model, args.dtype)

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    inputs = []
    for b, s in shapes:
        ids = np.load(os.path.join(args.models_dir, "inputs", f"ids_{b}x{s}.npy"))
        if ids.shape != (b, s) or ids.dtype != np.int64:
            sys.exit(f"bench_torch.py: ids_{b}x{s}.npy is {ids.dtype} {ids.shape}")
        t = torch.from_numpy(ids)
        inputs.append((b, s, (t, torch.ones_like(t), torch.zeros_like(t))))

    variant = f"{args.dtype}-{args.impl}"
    with open(args.out, "a", encoding="utf-8") as out, torch.inference_mode():
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            if set_blas_threads is not None:
                set_blas_threads(threads)
            for b, s, feeds in inputs:
                row = {"runtime": "torch", "variant": variant, "model": args.model, "batch": b,
                       "seq": s, "threads": threads}
                ref_file = os.path.join(args.ref_dir or "", f"ort_{args.model}_{b}x{s}.npy")
                if args.ref_dir and os.path.exists(ref_file):
                    got = model(*feeds).reshape(b * s, -1).float().numpy()
                    ref = np.load(ref_file)
                    row["max_abs_diff"] = float(np.max(np.abs(got - ref)))
                    if args.dtype != "fp32":
                        row["mean_cosine"] = mean_cosine(got, ref)
                row.update(time_shape(model, feeds, args))
                row["tokens_per_s"] = b * s / (row["median_ms"] / 1e3)
                out.write(json.dumps(row) + "\n")
                out.flush()
                diff = f", max |diff| to ORT {row['max_abs_diff']:.2e}" if "max_abs_diff" in row else ""
                if "mean_cosine" in row:
                    diff += f", mean cosine {row['mean_cosine']:.6f}"
                print(f"torch {variant} {args.model} {b}x{s} t={threads}: median "
                      f"{row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms, "
                      f"{row['tokens_per_s']:.0f} tok/s ({row['runs']} runs){diff}")
        out.write(json.dumps({"runtime": "torch", "variant": variant, "model": args.model,
                              "memory": True, "start_rss_mib": start_rss / 1024,
                              "peak_rss_mib": status_kib("VmHWM") / 1024,
                              "version": torch.__version__, "blas": blas_name()}) + "\n")


if __name__ == "__main__":
    main()
