// SPDX-License-Identifier: Apache-2.0
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "funnel/error.hpp"
#include "funnel/fusion.hpp"

using Catch::Matchers::Contains;
using funnel::Fusion;
using funnel::FusionConfig;
using funnel::MatrixView;

namespace {

const std::vector<std::string>& objective_names() {
  static const std::vector<std::string> names{"ctr", "cvr", "dwell"};
  return names;
}

std::vector<float> fuse(const Fusion& fusion, const std::vector<float>& scores) {
  const std::size_t rows = scores.size() / objective_names().size();
  std::vector<float> out(rows);
  fusion.fuse(MatrixView<const float>(scores.data(), rows, objective_names().size()), out);
  return out;
}

}  // namespace

TEST_CASE("weighted product and weighted sum match a hand computation", "[fusion]") {
  const std::vector<float> scores{0.1F, 0.2F, 16.0F,  //
                                  0.0F, 0.5F, 4.0F,   //
                                  0.3F, 0.0F, 0.0F};
  const Fusion product(FusionConfig{}, objective_names());  // ctr 1, cvr 1, dwell 0.5, eps 1e-6
  const double eps = static_cast<double>(1e-6F);
  auto f = [&](double a, double b, double c) { return (a + eps) * (b + eps) * std::sqrt(c + eps); };
  const auto fused = fuse(product, scores);
  REQUIRE(fused.size() == 3);
  CHECK(fused[0] == Approx(f(0.1, 0.2, 16.0)).epsilon(1e-6));
  CHECK(fused[0] == Approx(0.1 * 0.2 * 4.0).epsilon(1e-4));
  CHECK(fused[1] == Approx(f(0.0, 0.5, 4.0)).epsilon(1e-6));
  CHECK(fused[1] > 0.0F);  // epsilon keeps a zero ctr from erasing the rest
  CHECK(fused[2] == Approx(f(0.3, 0.0, 0.0)).epsilon(1e-6));

  FusionConfig sum_config;
  sum_config.kind = FusionConfig::Kind::weighted_sum;
  sum_config.weights = {{"ctr", 2.0F}, {"dwell", 0.1F}};  // cvr unnamed: weight 0
  const Fusion sum(sum_config, objective_names());
  const auto summed = fuse(sum, scores);
  CHECK(summed[0] == Approx(2.0 * 0.1 + 0.1 * 16.0));
  CHECK(summed[1] == Approx(0.1 * 4.0));
  CHECK(summed[2] == Approx(2.0 * 0.3));

  // An objective with weight 0 is ignored, even when it is not finite.
  const std::vector<float> odd{0.5F, std::nanf(""), 2.0F};
  CHECK(fuse(sum, odd)[0] == Approx(2.0 * 0.5 + 0.1 * 2.0));
  CHECK(sum.config().kind == FusionConfig::Kind::weighted_sum);
}

TEST_CASE("weighted product ranking ignores the scale of one objective", "[fusion]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> prob(0.01F, 1.0F);
  std::uniform_real_distribution<float> seconds(1.0F, 300.0F);
  const std::size_t rows = 60;
  std::vector<float> scores(rows * 3);
  for (std::size_t i = 0; i < rows; ++i) {
    scores[i * 3] = prob(rng);
    scores[i * 3 + 1] = prob(rng);
    scores[i * 3 + 2] = seconds(rng);
  }
  std::vector<float> minutes = scores;
  for (std::size_t i = 0; i < rows; ++i) minutes[i * 3 + 2] /= 60.0F;
  std::vector<float> scaled_ctr = scores;
  for (std::size_t i = 0; i < rows; ++i) scaled_ctr[i * 3] *= 100.0F;

  const Fusion fusion(FusionConfig{}, objective_names());
  const auto base = fuse(fusion, scores);
  const auto in_minutes = fuse(fusion, minutes);
  const auto in_percent = fuse(fusion, scaled_ctr);
  std::size_t compared = 0;
  for (std::size_t a = 0; a < rows; ++a) {
    for (std::size_t b = 0; b < rows; ++b) {
      // Pairs closer than float rounding (and epsilon) can tell apart are skipped.
      if (std::abs(base[a] - base[b]) <= 1e-3F * std::max(base[a], base[b])) continue;
      ++compared;
      CHECK((base[a] < base[b]) == (in_minutes[a] < in_minutes[b]));
      CHECK((base[a] < base[b]) == (in_percent[a] < in_percent[b]));
    }
  }
  CHECK(compared > rows * (rows - 1) / 2);
  // The scale shows up as a constant factor: (1/60)^0.5 and 100^1.
  CHECK(in_minutes[0] / base[0] == Approx(std::sqrt(1.0 / 60.0)).epsilon(1e-3));
  CHECK(in_percent[0] / base[0] == Approx(100.0).epsilon(1e-3));

  // A weighted sum does not have this property in general: scaling dwell
  // changes how much it counts against ctr.
  FusionConfig sum_config;
  sum_config.kind = FusionConfig::Kind::weighted_sum;
  const Fusion sum(sum_config, objective_names());
  const std::vector<float> two{0.9F, 0.1F, 10.0F, 0.1F, 0.1F, 20.0F};
  const std::vector<float> two_minutes{0.9F, 0.1F, 10.0F / 60.0F, 0.1F, 0.1F, 20.0F / 60.0F};
  CHECK(fuse(sum, two)[0] < fuse(sum, two)[1]);
  CHECK(fuse(sum, two_minutes)[0] > fuse(sum, two_minutes)[1]);
}

TEST_CASE("Fusion validation names the field, objective and row", "[fusion]") {
  FusionConfig config;
  config.weights = {{"ctr", -1.0F}};
  CHECK_THROWS_WITH(config.validate(), Contains("'ctr'") && Contains("weight -1"));
  config.weights = {{"ctr", std::nanf("")}};
  CHECK_THROWS_WITH(config.validate(), Contains("'ctr'"));
  config.weights = {{"ctr", 1.0F}, {"cvr", 1.0F}, {"ctr", 2.0F}};
  CHECK_THROWS_WITH(config.validate(), Contains("'ctr' is listed twice"));
  config.weights = {{"", 1.0F}};
  CHECK_THROWS_WITH(config.validate(), Contains("weights[0]"));
  config = FusionConfig{};
  config.epsilon = 0.0F;
  CHECK_THROWS_WITH(config.validate(), Contains("epsilon"));
  CHECK_THROWS_WITH(Fusion(config, objective_names()), Contains("epsilon"));

  config = FusionConfig{};
  config.weights = {{"ctr", 1.0F}, {"revenue", 1.0F}};
  CHECK_THROWS_WITH(Fusion(config, objective_names()),
                    Contains("'revenue'") && Contains("ctr, cvr, dwell"));

  const Fusion fusion(FusionConfig{}, objective_names());
  std::vector<float> out(2);
  const std::vector<float> scores{0.1F, 0.2F, 3.0F, 0.1F, -0.5F, 3.0F};
  CHECK_THROWS_WITH(fusion.fuse(MatrixView<const float>(scores.data(), 2, 3), out),
                    Contains("row 1") && Contains("'cvr'"));
  CHECK_THROWS_WITH(fusion.fuse(MatrixView<const float>(scores.data(), 3, 2), out),
                    Contains("2 columns, expected 3"));
  std::vector<float> short_out(1);
  CHECK_THROWS_WITH(fusion.fuse(MatrixView<const float>(scores.data(), 2, 3), short_out),
                    Contains("output has 1 values, expected 2"));

  CHECK(funnel::parse_fusion_kind("weighted_sum") == FusionConfig::Kind::weighted_sum);
  CHECK(funnel::parse_fusion_kind("weighted_product") == FusionConfig::Kind::weighted_product);
  CHECK_THROWS_WITH(funnel::parse_fusion_kind("max"), Contains("'max'"));
  CHECK(funnel::to_string(FusionConfig::Kind::weighted_sum) == "weighted_sum");
}
