// SPDX-License-Identifier: Apache-2.0
#include "internal/ivf_kernels.hpp"

#include <omp.h>

#include <array>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>

#include <oneapi/dnnl/dnnl.h>

#include "internal/error_util.hpp"

namespace funnel::detail::ivf {

namespace {

// ---------------------------------------------------------------------------
// Portable kernels. Each row is summed in kLanes independent partial sums so
// that the compiler may vectorise the reduction without -ffast-math (the
// partial sums are an explicit reassociation, not one the compiler invents).

constexpr std::size_t kLanes = 8;

float sum_lanes(const std::array<float, kLanes>& acc) {
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Decoders from a stored code to the float it stands for.
struct DecodeF32 {
  float operator()(float x) const { return x; }
};
struct DecodeF16 {
  float operator()(std::uint16_t x) const { return half_to_float(x); }
};
struct DecodeU8 {
  float operator()(std::uint8_t x) const { return static_cast<float>(x); }
};

// sum_j a[j] * decode(x[j])
template <class Code, class Decode>
float dot_row(const float* a, const Code* x, std::size_t dim, Decode decode) {
  std::array<float, kLanes> acc{};
  std::size_t j = 0;
  for (; j + kLanes <= dim; j += kLanes) {
    for (std::size_t l = 0; l < kLanes; ++l) acc[l] += a[j + l] * decode(x[j + l]);
  }
  for (std::size_t l = 0; j < dim; ++j, ++l) acc[l] += a[j] * decode(x[j]);
  return sum_lanes(acc);
}

// sum_j (a[j] - decode(x[j]))^2
template <class Code, class Decode>
float l2_row(const float* a, const Code* x, std::size_t dim, Decode decode) {
  std::array<float, kLanes> acc{};
  std::size_t j = 0;
  for (; j + kLanes <= dim; j += kLanes) {
    for (std::size_t l = 0; l < kLanes; ++l) {
      const float d = a[j + l] - decode(x[j + l]);
      acc[l] += d * d;
    }
  }
  for (std::size_t l = 0; j < dim; ++j, ++l) {
    const float d = a[j] - decode(x[j]);
    acc[l] += d * d;
  }
  return sum_lanes(acc);
}

// sum_j (r[j] - s[j] * x[j])^2
float l2_sq8_row(const float* r, const float* s, const std::uint8_t* x, std::size_t dim) {
  std::array<float, kLanes> acc{};
  std::size_t j = 0;
  for (; j + kLanes <= dim; j += kLanes) {
    for (std::size_t l = 0; l < kLanes; ++l) {
      const float d = r[j + l] - s[j + l] * static_cast<float>(x[j + l]);
      acc[l] += d * d;
    }
  }
  for (std::size_t l = 0; j < dim; ++j, ++l) {
    const float d = r[j] - s[j] * static_cast<float>(x[j]);
    acc[l] += d * d;
  }
  return sum_lanes(acc);
}

void dot_f32_portable(const float* query, const float* rows, std::size_t n, std::size_t dim,
                      float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_row(query, rows + i * dim, dim, DecodeF32{});
}

void l2_f32_portable(const float* query, const float* rows, std::size_t n, std::size_t dim,
                     float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_row(query, rows + i * dim, dim, DecodeF32{});
}

void dot_f16_portable(const float* query, const std::uint16_t* codes, std::size_t n,
                      std::size_t dim, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = dot_row(query, codes + i * dim, dim, DecodeF16{});
}

void l2_f16_portable(const float* query, const std::uint16_t* codes, std::size_t n, std::size_t dim,
                     float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_row(query, codes + i * dim, dim, DecodeF16{});
}

void dot_sq8_portable(const float* w, float base, const std::uint8_t* codes, std::size_t n,
                      std::size_t dim, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = base + dot_row(w, codes + i * dim, dim, DecodeU8{});
  }
}

void l2_sq8_portable(const float* r, const float* s, const std::uint8_t* codes, std::size_t n,
                     std::size_t dim, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = l2_sq8_row(r, s, codes + i * dim, dim);
}

constexpr Kernels kPortable{
    .isa = IvfKernel::portable,
    .dot_f32 = dot_f32_portable,
    .l2_f32 = l2_f32_portable,
    .dot_f16 = dot_f16_portable,
    .l2_f16 = l2_f16_portable,
    .dot_sq8 = dot_sq8_portable,
    .l2_sq8 = l2_sq8_portable,
};

// ---------------------------------------------------------------------------
// OpenMP guard for oneDNN.

// Debian's oneDNN runs its GEMM on as many OpenMP threads as
// omp_get_max_threads() reports to the calling thread. That value is the
// calling thread's own nthreads-var ICV, so setting it to 1 for the call and
// restoring it afterwards keeps oneDNN on the calling thread without any
// effect that another thread, or this one after the call, could observe.
class SingleOmpThread {
 public:
  SingleOmpThread() : saved_(omp_get_max_threads()) {
    if (saved_ != 1) omp_set_num_threads(1);
  }
  ~SingleOmpThread() {
    if (saved_ != 1) omp_set_num_threads(saved_);
  }
  SingleOmpThread(const SingleOmpThread&) = delete;
  SingleOmpThread& operator=(const SingleOmpThread&) = delete;
  SingleOmpThread(SingleOmpThread&&) = delete;
  SingleOmpThread& operator=(SingleOmpThread&&) = delete;

 private:
  int saved_;
};

}  // namespace

bool supported(IvfKernel isa) {
  switch (isa) {
    case IvfKernel::automatic:
    case IvfKernel::portable: return true;
    case IvfKernel::avx2:
    case IvfKernel::avx512: return false;
  }
  return false;
}

IvfKernel resolve(IvfKernel isa) {
  if (isa != IvfKernel::automatic) return isa;
  if (supported(IvfKernel::avx512)) return IvfKernel::avx512;
  if (supported(IvfKernel::avx2)) return IvfKernel::avx2;
  return IvfKernel::portable;
}

const Kernels& kernels_for(IvfKernel isa) {
  assert(isa != IvfKernel::automatic && supported(isa));
  (void)isa;
  return kPortable;
}

void prepare_sq8(const float* query, const float* vmin, const float* vdiff, std::size_t dim,
                 bool inner_product, Sq8Query& out) {
  // Prepared in double and rounded once, so that the prepared query carries
  // one float rounding per component whatever the magnitudes.
  out.w.resize(dim);
  if (inner_product) {
    out.r.clear();
    double base = 0.0;
    for (std::size_t j = 0; j < dim; ++j) {
      const double q = query[j];
      const double step = static_cast<double>(vdiff[j]) / 255.0;
      out.w[j] = static_cast<float>(q * step);
      base += q * (static_cast<double>(vmin[j]) + 0.5 * step);
    }
    out.base = static_cast<float>(base);
  } else {
    out.r.resize(dim);
    for (std::size_t j = 0; j < dim; ++j) {
      const double step = static_cast<double>(vdiff[j]) / 255.0;
      out.w[j] = static_cast<float>(step);
      out.r[j] = static_cast<float>(static_cast<double>(query[j]) - static_cast<double>(vmin[j]) -
                                    0.5 * step);
    }
    out.base = 0.0F;
  }
}

std::uint16_t float_to_half(float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16U) & 0x8000U);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFU;
  if (magnitude >= 0x7F800000U) {
    if (magnitude == 0x7F800000U) return sign | 0x7C00U;  // infinity
    // NaN: quiet (as IEEE conversions do), keeping the payload's top bits.
    return static_cast<std::uint16_t>(sign | 0x7E00U | ((magnitude >> 13U) & 0x3FFU));
  }
  // 65520 = 65504 + half an ulp; the tie goes to the even neighbour, which
  // is 2^16, i.e. infinity.
  if (magnitude >= 0x477FF000U) return sign | 0x7C00U;
  if (magnitude >= 0x38800000U) {  // a normal half (>= 2^-14)
    const std::uint32_t exponent = (magnitude >> 23U) - 127U + 15U;
    const std::uint32_t mantissa = magnitude & 0x7FFFFFU;
    std::uint32_t half = (exponent << 10U) | (mantissa >> 13U);
    const std::uint32_t rest = mantissa & 0x1FFFU;
    // A carry out of the mantissa correctly bumps the exponent.
    if (rest > 0x1000U || (rest == 0x1000U && (half & 1U) != 0)) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  // A subnormal half (units of 2^-24) or zero. 2^-25 is the tie between 0
  // and 2^-24, and goes to 0 (even).
  if (magnitude <= 0x33000000U) return sign;
  const std::uint32_t exponent = magnitude >> 23U;  // 102..112
  const std::uint32_t mantissa = (magnitude & 0x7FFFFFU) | 0x800000U;
  const std::uint32_t shift = 126U - exponent;  // 14..24
  std::uint32_t half = mantissa >> shift;
  const std::uint32_t rest = mantissa & ((1U << shift) - 1U);
  const std::uint32_t tie = 1U << (shift - 1U);
  // Rounding up from the largest subnormal yields the smallest normal.
  if (rest > tie || (rest == tie && (half & 1U) != 0)) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

float half_to_float(std::uint16_t value) {
  const std::uint32_t sign = (static_cast<std::uint32_t>(value) & 0x8000U) << 16U;
  const std::uint32_t exponent = (value >> 10U) & 0x1FU;
  const std::uint32_t mantissa = value & 0x3FFU;
  if (exponent == 0x1FU) {
    if (mantissa == 0) return std::bit_cast<float>(sign | 0x7F800000U);
    return std::bit_cast<float>(sign | 0x7FC00000U | (mantissa << 13U));  // quiet NaN
  }
  if (exponent == 0) {
    // Subnormal or zero: mantissa * 2^-24, exact in float (and a normal
    // float, so it is unaffected by flush-to-zero modes).
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24F;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112U) << 23U) | (mantissa << 13U));
}

void gemm_nt(const float* a, std::size_t m, const float* b, std::size_t n, std::size_t dim,
             float* c, std::size_t ldc) {
  assert(m >= 1 && n >= 1 && ldc >= n);
  const auto d_m = static_cast<dnnl_dim_t>(m);
  const auto d_n = static_cast<dnnl_dim_t>(n);
  const auto d_k = static_cast<dnnl_dim_t>(dim);
  if (dim == 0) {
    // BLAS would leave C untouched for K = 0 only when beta = 1; the empty
    // sum is 0.
    for (std::size_t i = 0; i < m; ++i) {
      for (std::size_t j = 0; j < n; ++j) c[i * ldc + j] = 0.0F;
    }
    return;
  }
  // Row-major C (m x n) = A (m x dim) * B^T, B stored row-major n x dim:
  // op(B) = B^T, so transb = 'T' with ldb = dim.
  dnnl_status_t status = dnnl_success;
  {
    const SingleOmpThread single;
    status = dnnl_sgemm('N', 'T', d_m, d_n, d_k, 1.0F, a, d_k, b, d_k, 0.0F, c,
                        static_cast<dnnl_dim_t>(ldc));
  }
  if (status != dnnl_success) {
    fail(ErrorCode::internal, "ivf gemm_nt: dnnl_sgemm failed with status ",
         static_cast<int>(status), " (m=", m, ", n=", n, ", dim=", dim, ", ldc=", ldc, ")");
  }
}

}  // namespace funnel::detail::ivf
