// SPDX-License-Identifier: Apache-2.0
#include <cmath>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/metrics.hpp"

using Catch::Matchers::Contains;
using funnel::ItemId;

namespace {

// The definition: share of (positive, negative) pairs ordered correctly, ties half.
double brute_force_auc(const std::vector<float>& scores, const std::vector<int>& labels) {
  double credit = 0.0;
  double pairs = 0.0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    for (std::size_t j = 0; j < scores.size(); ++j) {
      if (labels[i] != 1 || labels[j] != 0) continue;
      pairs += 1.0;
      if (scores[i] > scores[j]) credit += 1.0;
      if (scores[i] == scores[j]) credit += 0.5;
    }
  }
  return credit / pairs;
}

}  // namespace

TEST_CASE("auc on hand-computed cases", "[metrics]") {
  // Perfect and inverted rankings.
  CHECK(funnel::auc(std::vector<float>{0.1F, 0.2F, 0.8F, 0.9F}, std::vector<int>{0, 0, 1, 1}) ==
        1.0);
  CHECK(funnel::auc(std::vector<float>{0.9F, 0.8F, 0.2F, 0.1F}, std::vector<int>{0, 0, 1, 1}) ==
        0.0);
  // Pairs (pos, neg): (0.8, 0.1) right, (0.8, 0.9) wrong, (0.4, 0.1) right,
  // (0.4, 0.9) wrong -> 2 / 4.
  CHECK(funnel::auc(std::vector<float>{0.1F, 0.9F, 0.8F, 0.4F}, std::vector<int>{0, 0, 1, 1}) ==
        Approx(0.5));
  // One tie: positives {0.5, 0.7}, negatives {0.5, 0.2}: pairs 0.5/0.5 tie
  // (0.5), 0.5/0.2 right, 0.7/0.5 right, 0.7/0.2 right -> 3.5 / 4.
  CHECK(funnel::auc(std::vector<float>{0.5F, 0.7F, 0.5F, 0.2F}, std::vector<int>{1, 1, 0, 0}) ==
        Approx(0.875));
  // All scores equal: every pair is a tie.
  CHECK(funnel::auc(std::vector<float>{3.0F, 3.0F, 3.0F}, std::vector<int>{1, 0, 0}) ==
        Approx(0.5));
  // Positives {0.8, 0.4}, negatives {0.4, 0.6}: (0.8,0.4)=1, (0.8,0.6)=1,
  // (0.4,0.4)=0.5, (0.4,0.6)=0 -> 2.5 / 4.
  CHECK(funnel::auc(std::vector<float>{0.8F, 0.4F, 0.4F, 0.6F}, std::vector<int>{1, 1, 0, 0}) ==
        Approx(0.625));
  // Negatives {0.2, 0.5, 0.9}, positives {0.5, 0.95}: positive 0.5 earns
  // 1 + 0.5 (tie) + 0 = 1.5, positive 0.95 earns 3 -> 4.5 / 6 = 0.75.
  CHECK(funnel::auc(std::vector<float>{0.2F, 0.5F, 0.9F, 0.5F, 0.95F},
                    std::vector<int>{0, 0, 0, 1, 1}) == Approx(0.75));
}

TEST_CASE("auc agrees with the pairwise definition on random data with ties", "[metrics]") {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> level(0, 6);  // few levels: many ties
  std::bernoulli_distribution coin(0.3);
  for (int round = 0; round < 20; ++round) {
    std::vector<float> scores(60);
    std::vector<int> labels(60);
    for (std::size_t i = 0; i < scores.size(); ++i) {
      scores[i] = static_cast<float>(level(rng)) * 0.5F;
      labels[i] = coin(rng) ? 1 : 0;
    }
    labels[0] = 1;
    labels[1] = 0;
    CHECK(funnel::auc(scores, labels) == Approx(brute_force_auc(scores, labels)).epsilon(1e-12));
  }
}

TEST_CASE("auc rejects bad input", "[metrics]") {
  CHECK_THROWS_WITH(funnel::auc(std::vector<float>{0.1F, 0.2F}, std::vector<int>{1, 1}),
                    Contains("both classes"));
  CHECK_THROWS_WITH(funnel::auc(std::vector<float>{0.1F, 0.2F}, std::vector<int>{0, 0}),
                    Contains("both classes"));
  CHECK_THROWS_AS(funnel::auc(std::vector<float>{}, std::vector<int>{}), funnel::Error);
  CHECK_THROWS_WITH(funnel::auc(std::vector<float>{0.1F}, std::vector<int>{0, 1}),
                    Contains("1 scores but 2 labels"));
  CHECK_THROWS_WITH(funnel::auc(std::vector<float>{0.1F, 0.2F}, std::vector<int>{0, 2}),
                    Contains("label 1 is 2"));
  CHECK_THROWS_WITH(funnel::auc(std::vector<float>{0.1F, std::nanf("")}, std::vector<int>{0, 1}),
                    Contains("score 1 is NaN"));
}

TEST_CASE("recall_at_k and ndcg_at_k on hand-computed cases", "[metrics]") {
  const std::vector<ItemId> ranked{10, 20, 30, 40, 50};
  const std::unordered_set<ItemId> relevant{20, 50, 99};

  // k = 2: hit 20 of min(2, 3) = 2.
  CHECK(funnel::recall_at_k(ranked, relevant, 2) == Approx(0.5));
  // k = 5: hits 20 and 50 of 3.
  CHECK(funnel::recall_at_k(ranked, relevant, 5) == Approx(2.0 / 3.0));
  CHECK(funnel::recall_at_k(ranked, relevant, 1) == 0.0);
  CHECK(funnel::recall_at_k(ranked, {}, 5) == 0.0);
  CHECK(funnel::recall_at_k(ranked, relevant, 0) == 0.0);
  // k beyond the list.
  CHECK(funnel::recall_at_k(ranked, relevant, 50) == Approx(2.0 / 3.0));

  // DCG@5 = 1/log2(3) + 1/log2(6); ideal over 3 hits = 1 + 1/log2(3) + 1/2.
  const double dcg = 1.0 / std::log2(3.0) + 1.0 / std::log2(6.0);
  const double ideal = 1.0 + 1.0 / std::log2(3.0) + 0.5;
  CHECK(funnel::ndcg_at_k(ranked, relevant, 5) == Approx(dcg / ideal));
  // k = 2: DCG = 1/log2(3); ideal over min(2, 3) = 1 + 1/log2(3).
  CHECK(funnel::ndcg_at_k(ranked, relevant, 2) ==
        Approx((1.0 / std::log2(3.0)) / (1.0 + 1.0 / std::log2(3.0))));
  CHECK(funnel::ndcg_at_k(ranked, {}, 5) == 0.0);
  CHECK(funnel::ndcg_at_k(ranked, relevant, 0) == 0.0);
  // A perfect ranking scores 1.
  const std::vector<ItemId> perfect{20, 50, 99, 1, 2};
  CHECK(funnel::ndcg_at_k(perfect, relevant, 5) == Approx(1.0));
  CHECK(funnel::recall_at_k(perfect, relevant, 3) == Approx(1.0));
  // A repeated relevant id is credited once.
  const std::vector<ItemId> repeated{20, 20, 20};
  CHECK(funnel::recall_at_k(repeated, relevant, 3) == Approx(1.0 / 3.0));
  CHECK(funnel::ndcg_at_k(repeated, relevant, 3) ==
        Approx(1.0 / (1.0 + 1.0 / std::log2(3.0) + 0.5)));
}
