// SPDX-License-Identifier: Apache-2.0
// Built against an installed funnel: encodes three titles, indexes them and
// checks that a query finds the right one. Exit code 0 on success.
#include <cstdio>
#include <funnel/funnel.hpp>
#include <string>
#include <vector>

int main() {
  const funnel::HashingEncoder encoder;
  const std::vector<std::string> titles = {"stainless steel water bottle 500ml",
                                           "women's silk summer dress", "儿童 透气 运动鞋"};
  const funnel::Matrix<float> vectors = encoder.encode(titles);
  funnel::ExactCoarseRanker index({.dim = encoder.dim()});
  const std::vector<funnel::ItemId> ids = {10, 20, 30};
  index.add(vectors.view(), ids);

  const std::vector<std::string> queries = {"silk dress for summer", "运动鞋 儿童"};
  const funnel::Matrix<float> q = encoder.encode(queries, funnel::TextRole::query);
  funnel::Matrix<float> distances(2, 1);
  funnel::Matrix<funnel::ItemId> labels(2, 1);
  index.search(q.view(), 1, distances.view(), labels.view());
  std::printf("consumer: '%s' -> %lld, '%s' -> %lld\n", queries[0].c_str(),
              static_cast<long long>(labels(0, 0)), queries[1].c_str(),
              static_cast<long long>(labels(1, 0)));
  try {
    (void)funnel::Catalog::load_jsonl("/nonexistent/catalog.jsonl");
    return 1;
  } catch (const funnel::Error& e) {
    if (e.code() != funnel::ErrorCode::io) return 1;
  }
  return labels(0, 0) == 20 && labels(1, 0) == 30 ? 0 : 1;
}
