// SPDX-License-Identifier: Apache-2.0
#pragma once

// Distance kernels for scanning IVF inverted lists (used by
// IvfCoarseRanker). Each kernel scores ONE prepared query against `n`
// consecutive codes of one list and writes n distances. Variants per
// instruction set are chosen at run time through kernels_for(); all variants
// agree with the portable one within float rounding (relative 1e-5 of the
// magnitude of the terms).
//
// Distance conventions (as FAISS):
//   inner product: sum_j q_j * x_j              (higher is better)
//   L2:            sum_j (q_j - x_j)^2          (lower is better)
// where x is the decoded vector:
//   fp32:  x_j = row[j]
//   fp16:  x_j = half_to_float(code[j])          (IEEE binary16)
//   sq8:   x_j = vmin_j + (code[j] + 0.5f) / 255 * vdiff_j   (FAISS QT_8bit)
//
// The SQ8 kernels work on a query prepared once per query (prepare_sq8):
//   IP:  q.x = base + sum_j w_j * code_j,  w_j = q_j * vdiff_j / 255,
//        base = sum_j q_j * (vmin_j + 0.5 * vdiff_j / 255)
//   L2:  |q - x|^2 = sum_j (r_j - s_j * code_j)^2,  s_j = vdiff_j / 255,
//        r_j = q_j - vmin_j - 0.5 * s_j
//
// The batched path computes C = A * B^T for m queries A (m x dim) and n
// fp32 rows B (n x dim) on the calling thread only: gemm_nt (oneDNN's GEMM)
// or gemm_nt_small (funnel's register-tiled kernel, faster for few queries;
// see its comment for where the crossover lies).

#include <cstddef>
#include <cstdint>
#include <vector>

#include "funnel/ivf_coarse_ranker.hpp"

namespace funnel::detail::ivf {

// out[i] = sum_j query[j] * rows[i*dim + j]
using DotF32Fn = void (*)(const float* query, const float* rows, std::size_t n, std::size_t dim,
                          float* out);
// out[i] = sum_j (query[j] - rows[i*dim + j])^2
using L2F32Fn = DotF32Fn;
// out[i] = sum_j query[j] * half_to_float(codes[i*dim + j])
using DotF16Fn = void (*)(const float* query, const std::uint16_t* codes, std::size_t n,
                          std::size_t dim, float* out);
// out[i] = sum_j (query[j] - half_to_float(codes[i*dim + j]))^2
using L2F16Fn = DotF16Fn;
// out[i] = base + sum_j w[j] * codes[i*dim + j]
using DotSq8Fn = void (*)(const float* w, float base, const std::uint8_t* codes, std::size_t n,
                          std::size_t dim, float* out);
// out[i] = sum_j (r[j] - s[j] * codes[i*dim + j])^2
using L2Sq8Fn = void (*)(const float* r, const float* s, const std::uint8_t* codes, std::size_t n,
                         std::size_t dim, float* out);

// One instruction set's kernels. Every pointer is non-null.
struct Kernels {
  IvfKernel isa = IvfKernel::portable;
  DotF32Fn dot_f32 = nullptr;
  L2F32Fn l2_f32 = nullptr;
  DotF16Fn dot_f16 = nullptr;
  L2F16Fn l2_f16 = nullptr;
  DotSq8Fn dot_sq8 = nullptr;
  L2Sq8Fn l2_sq8 = nullptr;
};

// Whether this CPU and build can run `isa` (automatic and portable: true;
// avx2 needs AVX2, FMA and F16C; avx512 needs AVX-512 F, BW and VL).
bool supported(IvfKernel isa);

// `isa` resolved: automatic becomes the best supported one.
IvfKernel resolve(IvfKernel isa);

// The kernels of a supported, resolved isa (asserts otherwise).
const Kernels& kernels_for(IvfKernel isa);

// A query prepared for SQ8 codes (see the file comment).
struct Sq8Query {
  std::vector<float> w;  // IP weights, or L2 scales s (size dim)
  std::vector<float> r;  // L2 only: shifted query (size dim)
  float base = 0.0F;     // IP only
};

// Prepares `query` for SQ8 codes trained with per-dimension vmin / vdiff.
void prepare_sq8(const float* query, const float* vmin, const float* vdiff, std::size_t dim,
                 bool inner_product, Sq8Query& out);

// IEEE binary16 <-> float, round to nearest even (as FAISS's encode),
// bit for bit as the F16C instructions: overflow (>= 65520) gives infinity,
// subnormals both ways are exact or correctly rounded, a NaN stays a NaN of
// the same sign and leading payload bits, made quiet.
std::uint16_t float_to_half(float value);
float half_to_float(std::uint16_t value);

// c[i*ldc + j] = sum_p a[i*dim + p] * b[j*dim + p] for i < m, j < n, with
// oneDNN's sgemm on the calling thread only (it never uses more threads,
// whatever OpenMP's settings are). m, n >= 1.
void gemm_nt(const float* a, std::size_t m, const float* b, std::size_t n, std::size_t dim,
             float* c, std::size_t ldc);

// The same product as gemm_nt, computed by funnel's own kernels of `isa` (a
// supported, resolved isa) on the calling thread: with AVX-512 and m > 1,
// tiles of 4 queries x 4 rows are scored in registers (each loaded row chunk
// serves 4 queries, so a list streams from memory once per call); otherwise
// the isa's dot_f32 kernel runs once per query. Measured on the development
// machine (benchmarks/bench_ivf_kernels.cpp, bm_gemm; a shared, loaded
// machine, so +-20%): with AVX-512 it is faster than gemm_nt for m <= 8 at
// dim 128 (about 1.5x) and for every m <= 64 at dim 784 (1.1-2x); at dim 128
// and m >= 16, gemm_nt is as fast or up to 1.3x faster.
// Results agree with gemm_nt within float rounding, not bit for bit.
// m, n >= 1, ldc >= n.
void gemm_nt_small(IvfKernel isa, const float* a, std::size_t m, const float* b, std::size_t n,
                   std::size_t dim, float* c, std::size_t ldc);

}  // namespace funnel::detail::ivf
