// SPDX-License-Identifier: Apache-2.0
#include "funnel/encoder.hpp"

#include <vector>

namespace funnel {

Matrix<float> Encoder::encode(std::span<const std::string> texts, TextRole role) const {
  const std::vector<std::string_view> views(texts.begin(), texts.end());
  Matrix<float> out(texts.size(), dim());
  encode(views, out.view(), role);
  return out;
}

}  // namespace funnel
