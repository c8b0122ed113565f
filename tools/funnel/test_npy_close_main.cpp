// SPDX-License-Identifier: Apache-2.0
// funnel-cli-npy-close: exits 0 when two float32 .npy matrices have the same
// shape and agree within an absolute tolerance, after L2-normalising the rows
// of the second one when --normalize-expected is given (the reference files
// of the BERT fixtures hold un-normalised pooled vectors; `funnel encode`
// writes normalised ones). Prints the largest difference either way.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(
        stderr, "usage: funnel-cli-npy-close ACTUAL.npy EXPECTED.npy TOL [--normalize-expected]\n");
    return 2;
  }
  try {
    const funnel::Matrix<float> actual = funnel::load_npy_f32(argv[1]);
    funnel::Matrix<float> expected = funnel::load_npy_f32(argv[2]);
    const double tol = std::stod(argv[3]);
    const bool normalize = argc > 4 && std::string_view(argv[4]) == "--normalize-expected";
    if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
      std::fprintf(stderr, "shape %zu x %zu differs from expected %zu x %zu\n", actual.rows(),
                   actual.cols(), expected.rows(), expected.cols());
      return 1;
    }
    if (normalize) {
      for (std::size_t i = 0; i < expected.rows(); ++i) {
        double norm = 0;
        for (const float v : expected.row(i)) norm += static_cast<double>(v) * v;
        norm = std::sqrt(norm);
        for (float& v : expected.row(i)) v = static_cast<float>(v / norm);
      }
    }
    double worst = 0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
      worst =
          std::max(worst, std::fabs(static_cast<double>(actual.data()[i]) - expected.data()[i]));
    }
    std::printf("max abs difference %.3g (tolerance %.3g)\n", worst, tol);
    return worst <= tol ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "funnel-cli-npy-close: %s\n", e.what());
    return 1;
  }
}
