// SPDX-License-Identifier: Apache-2.0
// Tests of the persistent worker pool behind IvfCoarseRanker::search():
// every part runs exactly once, never more threads than parts work on one
// call, exceptions reach the caller, and many callers may share the pool.

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "internal/worker_pool.hpp"

using funnel::detail::WorkerPool;

TEST_CASE("worker pool runs every part once", "[pool][concurrency]") {
  WorkerPool pool;
  for (const std::size_t parts : {0U, 1U, 2U, 3U, 8U}) {
    std::vector<std::atomic<int>> runs(parts);
    pool.run(parts, [&](std::size_t i) { runs[i].fetch_add(1); });
    for (std::size_t i = 0; i < parts; ++i) CHECK(runs[i].load() == 1);
  }
}

TEST_CASE("worker pool never runs more threads than parts on one call", "[pool][concurrency]") {
  WorkerPool pool;
  pool.run(4, [](std::size_t /*i*/) {});  // four threads' worth of pool exists now
  std::atomic<int> active{0};
  std::atomic<int> peak{0};
  for (int round = 0; round < 20; ++round) {
    pool.run(2, [&](std::size_t /*i*/) {
      const int now = active.fetch_add(1) + 1;
      int seen = peak.load();
      while (now > seen && !peak.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      active.fetch_sub(1);
    });
  }
  CHECK(peak.load() <= 2);
}

TEST_CASE("worker pool rethrows a part's exception after all parts ran", "[pool][concurrency]") {
  WorkerPool pool;
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(pool.run(4,
                           [&](std::size_t i) {
                             ran.fetch_add(1);
                             if (i == 2) throw std::runtime_error("part 2");
                           }),
                  std::runtime_error);
  CHECK(ran.load() == 4);
  // The pool still works afterwards.
  std::atomic<int> after{0};
  pool.run(3, [&](std::size_t /*i*/) { after.fetch_add(1); });
  CHECK(after.load() == 3);
}

TEST_CASE("worker pool serves many callers at once", "[pool][concurrency]") {
  WorkerPool pool;
  constexpr int kCallers = 4;
  constexpr int kCalls = 50;
  std::vector<long> sums(kCallers, 0);
  std::vector<std::thread> callers;
  callers.reserve(kCallers);
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int call = 0; call < kCalls; ++call) {
        std::vector<long> part_sums(3, 0);
        pool.run(3, [&](std::size_t i) { part_sums[i] = static_cast<long>(i + 1) * (c + 1); });
        for (const long s : part_sums) sums[c] += s;
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) CHECK(sums[c] == 6L * (c + 1) * kCalls);
}
