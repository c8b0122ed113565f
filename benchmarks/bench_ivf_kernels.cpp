// SPDX-License-Identifier: Apache-2.0
// Micro-benchmarks of the IVF scan kernels (src/internal/ivf_kernels.hpp):
// one query against n rows of one list, per instruction set, code type and
// metric; and the batched path's product C = A * B^T three ways: gemm_nt
// (oneDNN sgemm on one thread), gemm_nt_small (funnel's register-tiled
// AVX-512 kernel) and the per-query dot_f32 kernel once per query.
//
// Counter "ns_per_row": nanoseconds per scored row (per query-row pair for
// the GEMM benchmarks). Lists of 1,000 rows stay in L2 after the first
// pass (64 rows at dim 128 stay in L1); lists of 20,000 rows (10 MB at dim 128) come from L3 or
// memory.

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "internal/ivf_kernels.hpp"

namespace {

namespace ivf = funnel::detail::ivf;
using funnel::IvfKernel;

enum class Code { f32, f16, sq8 };

std::vector<float> random_floats(std::size_t count, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0F, 1.0F);
  std::vector<float> out(count);
  for (auto& v : out) v = dist(rng);
  return out;
}

void set_ns_per_row(benchmark::State& state, std::size_t rows_per_iteration) {
  state.counters["ns_per_row"] = benchmark::Counter(
      static_cast<double>(rows_per_iteration),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * rows_per_iteration));
}

// Args: isa, code, inner product (1) or L2 (0), dim, n.
void bm_scan(benchmark::State& state) {
  const auto isa = static_cast<IvfKernel>(state.range(0));
  const auto code = static_cast<Code>(state.range(1));
  const bool inner_product = state.range(2) != 0;
  const auto dim = static_cast<std::size_t>(state.range(3));
  const auto n = static_cast<std::size_t>(state.range(4));
  if (!ivf::supported(isa)) {
    state.SkipWithError("instruction set not supported here");
    return;
  }
  const ivf::Kernels& k = ivf::kernels_for(isa);
  const std::vector<float> query = random_floats(dim, 1);
  const std::vector<float> rows = random_floats(n * dim, 2);
  std::vector<float> out(n);
  if (code == Code::f32) {
    const auto fn = inner_product ? k.dot_f32 : k.l2_f32;
    while (state.KeepRunning()) {
      fn(query.data(), rows.data(), n, dim, out.data());
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
  } else if (code == Code::f16) {
    std::vector<std::uint16_t> codes(n * dim);
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = ivf::float_to_half(rows[i]);
    const auto fn = inner_product ? k.dot_f16 : k.l2_f16;
    while (state.KeepRunning()) {
      fn(query.data(), codes.data(), n, dim, out.data());
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
  } else {
    std::vector<std::uint8_t> codes(n * dim);
    for (std::size_t i = 0; i < codes.size(); ++i) {
      codes[i] = static_cast<std::uint8_t>((rows[i] + 1.0F) * 127.5F);
    }
    const std::vector<float> vmin(dim, -1.0F);
    const std::vector<float> vdiff(dim, 2.0F);
    ivf::Sq8Query prepared;
    ivf::prepare_sq8(query.data(), vmin.data(), vdiff.data(), dim, inner_product, prepared);
    while (state.KeepRunning()) {
      if (inner_product) {
        k.dot_sq8(prepared.w.data(), prepared.base, codes.data(), n, dim, out.data());
      } else {
        k.l2_sq8(prepared.r.data(), prepared.w.data(), codes.data(), n, dim, out.data());
      }
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
  }
  set_ns_per_row(state, n);
}

void scan_args(benchmark::internal::Benchmark* b) {
  for (const IvfKernel isa : {IvfKernel::portable, IvfKernel::avx2, IvfKernel::avx512}) {
    for (const Code code : {Code::f32, Code::f16, Code::sq8}) {
      for (const int ip : {1, 0}) {
        for (const int dim : {128, 784}) {
          for (const int n : {64, 1000, 20000}) {
            b->Args({static_cast<int>(isa), static_cast<int>(code), ip, dim, n});
          }
        }
      }
    }
  }
  b->ArgNames({"isa", "code", "ip", "dim", "n"});
}
BENCHMARK(bm_scan)->Apply(scan_args);

enum class Gemm { onednn, tiled, per_query };

// Args: method, m, n, dim.
void bm_gemm(benchmark::State& state) {
  const auto method = static_cast<Gemm>(state.range(0));
  const auto m = static_cast<std::size_t>(state.range(1));
  const auto n = static_cast<std::size_t>(state.range(2));
  const auto dim = static_cast<std::size_t>(state.range(3));
  if (method != Gemm::onednn && !ivf::supported(IvfKernel::avx512)) {
    state.SkipWithError("needs AVX-512");
    return;
  }
  const std::vector<float> a = random_floats(m * dim, 3);
  const std::vector<float> b = random_floats(n * dim, 4);
  std::vector<float> c(m * n);
  const ivf::Kernels& k = ivf::kernels_for(ivf::resolve(IvfKernel::automatic));
  while (state.KeepRunning()) {
    switch (method) {
      case Gemm::onednn: ivf::gemm_nt(a.data(), m, b.data(), n, dim, c.data(), n); break;
      case Gemm::tiled:
        ivf::gemm_nt_small(IvfKernel::avx512, a.data(), m, b.data(), n, dim, c.data(), n);
        break;
      case Gemm::per_query:
        for (std::size_t q = 0; q < m; ++q) {
          k.dot_f32(a.data() + q * dim, b.data(), n, dim, c.data() + q * n);
        }
        break;
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_ns_per_row(state, m * n);
}

void gemm_args(benchmark::internal::Benchmark* b) {
  for (const Gemm method : {Gemm::onednn, Gemm::tiled, Gemm::per_query}) {
    for (const int m : {1, 4, 8, 16, 32, 64}) {
      for (const int n : {250, 1000, 5000}) {
        for (const int dim : {128, 784}) b->Args({static_cast<int>(method), m, n, dim});
      }
    }
  }
  b->ArgNames({"method", "m", "n", "dim"});
}
BENCHMARK(bm_gemm)->Apply(gemm_args);

}  // namespace

BENCHMARK_MAIN();
