// SPDX-License-Identifier: Apache-2.0
// funnel side of the BERT encoder benchmark (benchmarks/run_bert_benchmark.sh
// runs it beside ONNX Runtime and PyTorch; see docs/encoder-benchmark.md).
//
// Loads <models-dir>/<model> (a Hugging Face checkpoint written by
// benchmarks/bert/make_models.py) into a funnel::BertEncoder with the given
// compute type, and times BertEncoder::forward() on the token ids of
// <models-dir>/inputs/ids_<b>x<s>.npy, the same file the other runtimes read
// (attention mask all ones; token types are 0 in forward()). Building the
// input matrices is outside the timed region, and no tokenization is timed
// for any runtime. Each thread count gets its own encoder
// (BertEncoderConfig::threads), with max_batch equal to the largest batch so
// that one forward() call runs the whole batch, as the peers do.
//
// One JSON line per (threads, shape) is appended to --out, with the accuracy
// of the first call's hidden states against ONNX Runtime's fp32 output when
// --ref-dir holds it (max |diff| and the mean over tokens of the cosine
// between the two hidden-state rows), and one line with the process's memory
// at the end (peak RSS, VmHWM; plus the anonymous and file-backed resident
// sizes while the last encoder was alive: fp32 runs on the memory-mapped
// weights, which count as file-backed pages once touched).
//
// Usage: bench_bert_encoder --models-dir DIR --model NAME --out FILE
//                           [--compute fp32|bf16|int8] [--ref-dir DIR]
//                           [--fp32-prepack 0|1] [--fp32-transposed-max-tokens N]
//                           [--fp32-small-batch-max-tokens N]
//                           [--huge-pages 0|1]
//                           (defaults: the library's)
//                           [--threads 1,2] [--shapes 1x16,1x128,32x128]
//                           [--warmup 2] [--min-runs 5] [--min-seconds 2]
//                           [--max-runs 100] [--serve 0|1]
//
// --serve 1 hands the timing to a driver (benchmarks/bert/interleave.py),
// which alternates the runtimes call burst by call burst so that they share
// the machine's slow and fast minutes. After each row's accuracy call and
// warm-up the program prints "ready <b>x<s> t=<threads>" and reads commands
// from stdin: "burst <min_ms> <max_calls> <untimed>" makes <untimed> calls,
// then times calls until min_ms have passed or max_calls are done (at least
// one) and answers
// "done <ms>,<ms>,...", and "end" closes the row: its JSON line is written
// from every call of its bursts, as in the self-timed mode.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "funnel/bert_encoder.hpp"
#include "funnel/error.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"

namespace {

namespace fs = std::filesystem;

struct Options {
  fs::path models_dir;
  std::string model;
  fs::path out;
  fs::path ref_dir;
  funnel::BertComputeType compute = funnel::BertComputeType::fp32;
  bool fp32_prepack = funnel::BertEncoderConfig{}.fp32_prepack;
  std::size_t fp32_transposed_max_tokens = funnel::BertEncoderConfig{}.fp32_transposed_max_tokens;
  std::size_t fp32_small_batch_max_tokens = funnel::BertEncoderConfig{}.fp32_small_batch_max_tokens;
  bool huge_pages = funnel::BertEncoderConfig{}.huge_pages;
  std::vector<std::size_t> threads = {1, 2};
  std::vector<std::pair<std::size_t, std::size_t>> shapes = {{1, 16}, {1, 128}, {32, 128}};
  std::size_t warmup = 2;
  std::size_t min_runs = 5;
  double min_seconds = 2.0;
  std::size_t max_runs = 100;
  bool serve = false;
};

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(sep, start), text.size());
    parts.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

std::size_t to_size(const std::string& text) {
  std::size_t used = 0;
  const unsigned long value = std::stoul(text, &used);
  if (used != text.size()) throw std::invalid_argument("not a number: " + text);
  return value;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(arg));
    const std::string value = argv[++i];
    if (arg == "--models-dir") {
      o.models_dir = value;
    } else if (arg == "--model") {
      o.model = value;
    } else if (arg == "--out") {
      o.out = value;
    } else if (arg == "--ref-dir") {
      o.ref_dir = value;
    } else if (arg == "--compute") {
      if (value == "fp32") {
        o.compute = funnel::BertComputeType::fp32;
      } else if (value == "bf16") {
        o.compute = funnel::BertComputeType::bf16;
      } else if (value == "int8") {
        o.compute = funnel::BertComputeType::int8;
      } else {
        throw std::invalid_argument("--compute is fp32, bf16 or int8, not " + value);
      }
    } else if (arg == "--fp32-prepack") {
      if (value != "0" && value != "1") throw std::invalid_argument("--fp32-prepack is 0 or 1");
      o.fp32_prepack = value == "1";
    } else if (arg == "--huge-pages") {
      if (value != "0" && value != "1") throw std::invalid_argument("--huge-pages is 0 or 1");
      o.huge_pages = value == "1";
    } else if (arg == "--fp32-transposed-max-tokens") {
      o.fp32_transposed_max_tokens = to_size(value);
    } else if (arg == "--fp32-small-batch-max-tokens") {
      o.fp32_small_batch_max_tokens = to_size(value);
    } else if (arg == "--threads") {
      o.threads.clear();
      for (const auto& t : split(value, ',')) o.threads.push_back(to_size(t));
    } else if (arg == "--shapes") {
      o.shapes.clear();
      for (const auto& s : split(value, ',')) {
        const auto bs = split(s, 'x');
        if (bs.size() != 2) throw std::invalid_argument("--shapes wants BxS,... not " + value);
        o.shapes.emplace_back(to_size(bs[0]), to_size(bs[1]));
      }
    } else if (arg == "--warmup") {
      o.warmup = to_size(value);
    } else if (arg == "--min-runs") {
      o.min_runs = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--min-seconds") {
      o.min_seconds = std::stod(value);
    } else if (arg == "--max-runs") {
      o.max_runs = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--serve") {
      if (value != "0" && value != "1") throw std::invalid_argument("--serve is 0 or 1");
      o.serve = value == "1";
    } else {
      throw std::invalid_argument("unknown option " + std::string(arg));
    }
  }
  if (o.models_dir.empty() || o.model.empty() || o.out.empty()) {
    throw std::invalid_argument("--models-dir, --model and --out are required");
  }
  return o;
}

// A field of /proc/self/status in KiB (VmHWM, VmRSS, RssAnon, RssFile), or -1.
double status_kib(std::string_view field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > field.size() && line.compare(0, field.size(), field) == 0 &&
        line[field.size()] == ':') {
      return std::stod(line.substr(field.size() + 1));
    }
  }
  return -1.0;
}

// Nearest rank: the smallest value with at least p of the runs at or below it.
double percentile(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::max<std::size_t>(rank, 1) - 1];
}

struct Accuracy {
  double max_abs_diff = 0.0;
  double mean_cosine = 0.0;
};

// Hidden states against the reference, row by row (one row per token).
Accuracy compare(const funnel::Matrix<float>& got, const funnel::Matrix<float>& ref,
                 const fs::path& ref_file) {
  if (got.rows() != ref.rows() || got.cols() != ref.cols()) {
    throw std::runtime_error(ref_file.string() + ": reference is " + std::to_string(ref.rows()) +
                             " x " + std::to_string(ref.cols()) + ", funnel's output " +
                             std::to_string(got.rows()) + " x " + std::to_string(got.cols()));
  }
  Accuracy acc;
  double cosine_sum = 0.0;
  for (std::size_t r = 0; r < got.rows(); ++r) {
    const auto a = got.row(r);
    const auto b = ref.row(r);
    double dot = 0.0;
    double na = 0.0;
    double nb = 0.0;
    for (std::size_t c = 0; c < a.size(); ++c) {
      acc.max_abs_diff = std::max(acc.max_abs_diff, std::abs(double{a[c]} - double{b[c]}));
      dot += double{a[c]} * b[c];
      na += double{a[c]} * a[c];
      nb += double{b[c]} * b[c];
    }
    cosine_sum += dot / std::sqrt(na * nb);
  }
  acc.mean_cosine = cosine_sum / static_cast<double>(got.rows());
  return acc;
}

// Times calls, appending each call's ms to times_ms, until
// done(calls timed here, ms since the first of them) is true (at least one).
template <typename Call, typename Done>
void time_until(const Call& call, const Done& done, std::vector<double>& times_ms) {
  const auto begin = std::chrono::steady_clock::now();
  for (std::size_t n = 1;; ++n) {
    const auto t0 = std::chrono::steady_clock::now();
    [[maybe_unused]] const funnel::BertForwardResult result = call();
    const auto t1 = std::chrono::steady_clock::now();
    times_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    if (done(n, std::chrono::duration<double, std::milli>(t1 - begin).count())) return;
  }
}

// Self-timed mode: calls until at least min_runs and min_seconds (at most max_runs).
template <typename Call>
std::vector<double> time_calls(const Call& call, const Options& o) {
  std::vector<double> times_ms;
  time_until(
      call,
      [&](std::size_t n, double ms) {
        return n >= o.max_runs || (n >= o.min_runs && ms >= 1e3 * o.min_seconds);
      },
      times_ms);
  return times_ms;
}

// Driven mode (--serve 1): bursts of calls on the driver's command, until "end".
template <typename Call>
std::vector<double> serve_calls(const Call& call, std::size_t batch, std::size_t seq,
                                std::size_t threads) {
  std::printf("ready %zux%zu t=%zu\n", batch, seq, threads);
  std::fflush(stdout);
  std::vector<double> times_ms;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "end") {
      if (times_ms.empty()) throw std::invalid_argument("--serve: \"end\" before any burst");
      return times_ms;
    }
    double min_ms = 0.0;
    std::size_t max_calls = 0;
    std::size_t untimed = 0;
    if (std::sscanf(line.c_str(), "burst %lf %zu %zu", &min_ms, &max_calls, &untimed) != 3) {
      throw std::invalid_argument("--serve: unknown command '" + line + "'");
    }
    for (std::size_t i = 0; i < untimed; ++i) (void)call();
    const std::size_t first = times_ms.size();
    time_until(
        call, [&](std::size_t n, double ms) { return n >= max_calls || ms >= min_ms; }, times_ms);
    std::string answer = "done ";
    for (std::size_t i = first; i < times_ms.size(); ++i) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%s%.6f", i == first ? "" : ",", times_ms[i]);
      answer += buf;
    }
    std::printf("%s\n", answer.c_str());
    std::fflush(stdout);
  }
  throw std::runtime_error("--serve: stdin closed before \"end\"");
}

struct Input {
  std::size_t batch = 0;
  std::size_t seq = 0;
  funnel::Matrix<std::int64_t> ids;
  funnel::Matrix<std::int64_t> mask;
};

int run(const Options& o) {
  const std::string compute{funnel::to_string(o.compute)};
  std::FILE* out = std::fopen(o.out.c_str(), "a");
  if (out == nullptr) throw std::runtime_error("cannot open " + o.out.string());
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(out, &std::fclose);

  if (!funnel::BertEncoder::cpu_supports(o.compute)) {
    std::fprintf(out,
                 "{\"runtime\":\"funnel\",\"variant\":\"%s\",\"model\":\"%s\","
                 "\"unsupported\":true}\n",
                 compute.c_str(), o.model.c_str());
    std::printf("funnel %s: not supported by this CPU, skipped\n", compute.c_str());
    return 0;
  }

  const double start_rss_kib = status_kib("VmRSS");
  std::vector<Input> inputs;
  std::size_t max_batch = 1;
  for (const auto& [b, s] : o.shapes) {
    const fs::path file =
        o.models_dir / "inputs" / ("ids_" + std::to_string(b) + "x" + std::to_string(s) + ".npy");
    Input in{b, s, funnel::load_npy_i64(file), funnel::Matrix<std::int64_t>(b, s, 1)};
    if (in.ids.rows() != b || in.ids.cols() != s) {
      throw std::runtime_error(file.string() + " is " + std::to_string(in.ids.rows()) + " x " +
                               std::to_string(in.ids.cols()));
    }
    max_batch = std::max(max_batch, b);
    inputs.push_back(std::move(in));
  }

  double rss_anon_kib = 0.0;
  double rss_file_kib = 0.0;
  for (std::size_t ti = 0; ti < o.threads.size(); ++ti) {
    const std::size_t threads = o.threads[ti];
    funnel::BertEncoderConfig config;
    config.checkpoint_dir = o.models_dir / o.model;
    config.compute = o.compute;
    config.threads = threads;
    config.max_batch = max_batch;
    config.fp32_prepack = o.fp32_prepack;
    config.fp32_transposed_max_tokens = o.fp32_transposed_max_tokens;
    config.fp32_small_batch_max_tokens = o.fp32_small_batch_max_tokens;
    config.huge_pages = o.huge_pages;
    const funnel::BertEncoder encoder(config);

    for (const Input& in : inputs) {
      const auto call = [&] { return encoder.forward(in.ids.view(), in.mask.view()); };
      std::string accuracy;
      std::string accuracy_text;
      const funnel::BertForwardResult first = call();
      const fs::path ref_file = o.ref_dir / ("ort_" + o.model + "_" + std::to_string(in.batch) +
                                             "x" + std::to_string(in.seq) + ".npy");
      if (!o.ref_dir.empty() && fs::exists(ref_file)) {
        const Accuracy acc = compare(first.hidden, funnel::load_npy_f32(ref_file), ref_file);
        char buf[128];
        std::snprintf(buf, sizeof buf, ",\"max_abs_diff\":%.6g,\"mean_cosine\":%.9f",
                      acc.max_abs_diff, acc.mean_cosine);
        accuracy = buf;
        std::snprintf(buf, sizeof buf, ", vs ORT: max |diff| %.2e, mean cosine %.6f",
                      acc.max_abs_diff, acc.mean_cosine);
        accuracy_text = buf;
      }

      for (std::size_t i = 0; i < o.warmup; ++i) (void)call();
      std::vector<double> times_ms =
          o.serve ? serve_calls(call, in.batch, in.seq, threads) : time_calls(call, o);
      std::sort(times_ms.begin(), times_ms.end());
      const double median = percentile(times_ms, 0.5);
      const double p90 = percentile(times_ms, 0.9);
      const double tokens_per_s = static_cast<double>(in.batch * in.seq) / (median / 1e3);
      std::fprintf(out,
                   "{\"runtime\":\"funnel\",\"variant\":\"%s\",\"model\":\"%s\",\"batch\":%zu,"
                   "\"seq\":%zu,\"threads\":%zu,\"runs\":%zu,\"median_ms\":%.6f,\"p90_ms\":%.6f,"
                   "\"tokens_per_s\":%.3f%s}\n",
                   compute.c_str(), o.model.c_str(), in.batch, in.seq, threads, times_ms.size(),
                   median, p90, tokens_per_s, accuracy.c_str());
      std::fflush(out);
      std::printf(
          "funnel %s %s %zux%zu t=%zu: median %.2f ms, p90 %.2f ms, %.0f tok/s (%zu runs)%s\n",
          compute.c_str(), o.model.c_str(), in.batch, in.seq, threads, median, p90, tokens_per_s,
          times_ms.size(), accuracy_text.c_str());
    }
    rss_anon_kib = std::max(rss_anon_kib, status_kib("RssAnon"));
    rss_file_kib = std::max(rss_file_kib, status_kib("RssFile"));
  }
  std::fprintf(out,
               "{\"runtime\":\"funnel\",\"variant\":\"%s\",\"model\":\"%s\",\"memory\":true,"
               "\"start_rss_mib\":%.3f,\"peak_rss_mib\":%.3f,\"rss_anon_mib\":%.3f,"
               "\"rss_file_mib\":%.3f}\n",
               compute.c_str(), o.model.c_str(), start_rss_kib / 1024, status_kib("VmHWM") / 1024,
               rss_anon_kib / 1024, rss_file_kib / 1024);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_bert_encoder: %s\n", e.what());
    return 1;
  }
}
