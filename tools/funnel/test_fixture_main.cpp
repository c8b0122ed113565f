// SPDX-License-Identifier: Apache-2.0
// funnel-cli-fixture: writes the .npy inputs of the `funnel` CLI tests and
// their brute-force ground truth.
//
// The vectors have small integer coordinates, so every inner product and
// squared L2 distance is an integer below 2^24 and exact in float whatever
// order a kernel sums in: any correct index, exact or IVF at full nprobe,
// must return exactly the ground truth (ties by ascending id, as the
// CoarseRanker implementations promise), byte for byte. The ground truth is
// computed here with int64 arithmetic, independently of the library.

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <vector>

#include "funnel/item_id.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"

namespace {

namespace fs = std::filesystem;
using funnel::ItemId;
using funnel::Matrix;

constexpr int kCoordinateRange = 64;  // coordinates in [-64, 64]

struct Options {
  fs::path out;
  std::size_t n = 2000;
  std::size_t dim = 16;
  std::size_t queries = 40;
  std::size_t k = 10;
  std::uint64_t seed = 7;
};

std::size_t parse_size(std::string_view flag, std::string_view text) {
  std::size_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value == 0) {
    throw std::invalid_argument(std::string(flag) + ": expected a positive integer, got '" +
                                std::string(text) + "'");
  }
  return value;
}

Options parse_args(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + ": missing value");
    const std::string_view value = argv[++i];
    if (flag == "--out") {
      opt.out = std::string(value);
    } else if (flag == "--n") {
      opt.n = parse_size(flag, value);
    } else if (flag == "--dim") {
      opt.dim = parse_size(flag, value);
    } else if (flag == "--queries") {
      opt.queries = parse_size(flag, value);
    } else if (flag == "--k") {
      opt.k = parse_size(flag, value);
    } else if (flag == "--seed") {
      opt.seed = parse_size(flag, value);
    } else {
      throw std::invalid_argument("unknown option '" + std::string(flag) + "'");
    }
  }
  if (opt.out.empty()) throw std::invalid_argument("--out DIR is required");
  return opt;
}

Matrix<float> random_integer_vectors(std::size_t rows, std::size_t dim, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> coordinate(-kCoordinateRange, kCoordinateRange);
  Matrix<float> m(rows, dim);
  for (std::size_t i = 0; i < rows; ++i) {
    for (float& x : m.row(i)) x = static_cast<float>(coordinate(rng));
  }
  return m;
}

// Brute force in int64: the k best allowed ids per query, ties by ascending id,
// padded with kNoItem.
Matrix<std::int64_t> ground_truth(const Matrix<float>& base, const std::vector<ItemId>& ids,
                                  const Matrix<float>& queries, std::size_t k, bool l2,
                                  const std::function<bool(ItemId)>& allowed) {
  Matrix<std::int64_t> truth(queries.rows(), k, funnel::kNoItem);
  std::vector<std::pair<std::int64_t, ItemId>> scored;  // (cost, id): lower is better
  for (std::size_t q = 0; q < queries.rows(); ++q) {
    scored.clear();
    for (std::size_t i = 0; i < base.rows(); ++i) {
      if (!allowed(ids[i])) continue;
      std::int64_t score = 0;
      for (std::size_t j = 0; j < base.cols(); ++j) {
        const auto x = static_cast<std::int64_t>(base(i, j));
        const auto y = static_cast<std::int64_t>(queries(q, j));
        score += l2 ? (x - y) * (x - y) : x * y;
      }
      scored.emplace_back(l2 ? score : -score, ids[i]);
    }
    const std::size_t take = std::min(k, scored.size());
    std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(take),
                      scored.end());
    for (std::size_t r = 0; r < take; ++r) truth(q, r) = scored[r].second;
  }
  return truth;
}

void save_ids(const fs::path& path, const std::vector<ItemId>& ids) {
  funnel::save_npy(path, funnel::MatrixView<const std::int64_t>(ids.data(), ids.size(), 1));
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    opt = parse_args(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "funnel-cli-fixture: " << e.what() << '\n';
    return 2;
  }
  try {
    fs::create_directories(opt.out);
    std::mt19937_64 rng(opt.seed);
    const Matrix<float> base = random_integer_vectors(opt.n, opt.dim, rng);
    const Matrix<float> queries = random_integer_vectors(opt.queries, opt.dim, rng);
    // Sparse, shuffled ids, so an index that returns row numbers fails.
    std::vector<ItemId> ids(opt.n);
    std::iota(ids.begin(), ids.end(), ItemId{0});
    std::shuffle(ids.begin(), ids.end(), rng);
    for (ItemId& id : ids) id = 1'000'000 + 7 * id;
    std::vector<ItemId> deny;
    std::vector<ItemId> allow;
    for (std::size_t i = 0; i < ids.size(); ++i) (i % 3 == 0 ? deny : allow).push_back(ids[i]);
    const std::unordered_set<ItemId> denied(deny.begin(), deny.end());
    const auto everything = [](ItemId) { return true; };
    const auto not_denied = [&](ItemId id) { return !denied.contains(id); };

    funnel::save_npy(opt.out / "base.npy", base.view());
    funnel::save_npy(opt.out / "queries.npy", queries.view());
    // Queries of half the dimension, for the dimension-mismatch error.
    funnel::save_npy(
        opt.out / "queries_8d.npy",
        random_integer_vectors(opt.queries, std::max<std::size_t>(opt.dim / 2, 1), rng).view());
    save_ids(opt.out / "ids.npy", ids);
    save_ids(opt.out / "deny.npy", deny);
    save_ids(opt.out / "allow.npy", allow);
    funnel::save_npy(opt.out / "gt_ip.npy",
                     ground_truth(base, ids, queries, opt.k, false, everything).view());
    funnel::save_npy(opt.out / "gt_l2.npy",
                     ground_truth(base, ids, queries, opt.k, true, everything).view());
    // Allowing exactly the complement of the deny list gives the same truth.
    funnel::save_npy(opt.out / "gt_ip_filtered.npy",
                     ground_truth(base, ids, queries, opt.k, false, not_denied).view());
  } catch (const std::exception& e) {
    std::cerr << "funnel-cli-fixture: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
