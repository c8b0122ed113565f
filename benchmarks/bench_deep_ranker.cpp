// SPDX-License-Identifier: Apache-2.0
// funnel side of the fine-ranker benchmark (benchmarks/run_deep_ranker_benchmark.sh
// runs it beside ONNX Runtime and PyTorch; see docs/fine-ranker-benchmark.md).
//
// Three modes, one per process:
//
//  serve  Loads <models-dir>/<model> (a funnel model directory written by
//         benchmarks/deep_ranker/make_models.py through the PyTorch twin)
//         with DeepRankerModel::load at the given precision and 1 thread,
//         and times DeepRankerModel::forward() on each request
//         <model>/requests/nc<n>.safetensors (one user with a full history,
//         n candidates, as the arrays of a DeepRankerBatch; the file every
//         runtime reads). Loading the request into a DeepRankerBatch is
//         outside the timed region, as the peers' input tensors are. The first call's outputs go to
//         --outputs-dir as funnel-<precision>_<model>_nc<n>.npy (the report checks every runtime
//         against them). Besides wall time, the process CPU time of the timed calls is recorded:
//         cpu / wall near 1 shows that one thread did the work.
//  gemm   The reference FLOP rate: dnnl_sgemm of --size^3 (row-major, no
//         transposes) on 1 OpenMP thread, --reps timed calls after two
//         warm-ups; GFLOP/s of the median call.
//  train  Training throughput of train_deep_ranker on <model>/train/
//         (config.json, train.safetensors, validation.safetensors): one
//         epoch, --batch-size rows per step, --threads threads, the trainer's
//         defaults otherwise (Adam, lr 1e-3, L2 1e-5, dropout from the
//         config). Records DeepTrainReport::examples_per_second and the wall
//         time of the whole call.
//
// Each mode appends JSON lines to --out.
//
// Usage: bench_deep_ranker --mode serve --models-dir DIR --model NAME --out FILE
//                          --outputs-dir DIR [--precision fp32|bf16]
//                          [--candidates 1,100,1000] [--warmup 3] [--min-runs 100]
//                          [--min-seconds 2] [--max-seconds 10] [--max-runs 2000]
//        bench_deep_ranker --mode gemm --out FILE [--size 1024] [--reps 10]
//        bench_deep_ranker --mode train --models-dir DIR --model NAME --out FILE
//                          [--threads 2] [--batch-size 512]

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <dnnl.h>

#include "funnel/deep_ranker.hpp"
#include "funnel/error.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"
#include "funnel/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string mode;
  fs::path models_dir;
  std::string model;
  fs::path out;
  fs::path outputs_dir;
  funnel::DeepRankerServeOptions::Precision precision =
      funnel::DeepRankerServeOptions::Precision::fp32;
  std::vector<std::size_t> candidates = {1, 100, 1000};
  std::size_t warmup = 3;
  std::size_t min_runs = 100;
  double min_seconds = 2.0;
  double max_seconds = 10.0;
  std::size_t max_runs = 2000;
  std::size_t size = 1024;
  std::size_t reps = 10;
  std::size_t threads = 2;
  std::size_t batch_size = 512;
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
    if (arg == "--mode") {
      o.mode = value;
    } else if (arg == "--models-dir") {
      o.models_dir = value;
    } else if (arg == "--model") {
      o.model = value;
    } else if (arg == "--out") {
      o.out = value;
    } else if (arg == "--outputs-dir") {
      o.outputs_dir = value;
    } else if (arg == "--precision") {
      if (value == "fp32") {
        o.precision = funnel::DeepRankerServeOptions::Precision::fp32;
      } else if (value == "bf16") {
        o.precision = funnel::DeepRankerServeOptions::Precision::bf16;
      } else {
        throw std::invalid_argument("--precision is fp32 or bf16, not " + value);
      }
    } else if (arg == "--candidates") {
      o.candidates.clear();
      for (const auto& n : split(value, ',')) o.candidates.push_back(to_size(n));
    } else if (arg == "--warmup") {
      o.warmup = to_size(value);
    } else if (arg == "--min-runs") {
      o.min_runs = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--min-seconds") {
      o.min_seconds = std::stod(value);
    } else if (arg == "--max-seconds") {
      o.max_seconds = std::stod(value);
    } else if (arg == "--max-runs") {
      o.max_runs = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--size") {
      o.size = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--reps") {
      o.reps = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--threads") {
      o.threads = std::max<std::size_t>(1, to_size(value));
    } else if (arg == "--batch-size") {
      o.batch_size = std::max<std::size_t>(1, to_size(value));
    } else {
      throw std::invalid_argument("unknown option " + std::string(arg));
    }
  }
  if (o.out.empty()) throw std::invalid_argument("--out is required");
  if (o.mode != "serve" && o.mode != "gemm" && o.mode != "train") {
    throw std::invalid_argument("--mode is serve, gemm or train, not '" + o.mode + "'");
  }
  if (o.mode != "gemm" && (o.models_dir.empty() || o.model.empty())) {
    throw std::invalid_argument("--models-dir and --model are required");
  }
  if (o.mode == "serve" && o.outputs_dir.empty()) {
    throw std::invalid_argument("serve needs --outputs-dir");
  }
  return o;
}

// Nearest rank: the smallest value with at least p of the runs at or below it.
double percentile(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::max<std::size_t>(rank, 1) - 1];
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Appends one line to the results file (opened per line: runs are long, lines few).
void append_line(const fs::path& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  if (!out) throw std::runtime_error("cannot open " + path.string());
  out << line << '\n';
}

std::string fmt(const char* format, double value) {
  std::vector<char> buf(64);
  const int n = std::snprintf(buf.data(), buf.size(), format, value);
  return std::string(buf.data(), static_cast<std::size_t>(std::max(n, 0)));
}

struct Timing {
  std::size_t runs = 0;
  double p50_ms = 0.0;
  double p99_ms = 0.0;
  double mean_ms = 0.0;
  double cpu_per_wall = 0.0;
};

template <class Call>
Timing time_calls(const Call& call, const Options& o) {
  for (std::size_t i = 0; i < o.warmup; ++i) call();
  std::vector<double> times_ms;
  times_ms.reserve(o.max_runs);
  const double cpu0 = process_cpu_seconds();
  const auto begin = Clock::now();
  for (;;) {
    const auto t0 = Clock::now();
    call();
    const auto t1 = Clock::now();
    times_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    const double elapsed = std::chrono::duration<double>(t1 - begin).count();
    if (times_ms.size() >= o.max_runs) break;
    if (times_ms.size() >= o.min_runs && elapsed >= o.min_seconds) break;
    if (times_ms.size() >= 10 && elapsed >= o.max_seconds) break;
  }
  const double wall = std::chrono::duration<double>(Clock::now() - begin).count();
  const double cpu = process_cpu_seconds() - cpu0;
  Timing t;
  t.runs = times_ms.size();
  double sum = 0.0;
  for (const double v : times_ms) sum += v;
  t.mean_ms = sum / static_cast<double>(t.runs);
  std::sort(times_ms.begin(), times_ms.end());
  t.p50_ms = percentile(times_ms, 0.5);
  t.p99_ms = percentile(times_ms, 0.99);
  t.cpu_per_wall = cpu / wall;
  return t;
}

// One request as the arrays of a DeepRankerBatch (the file every runtime
// reads; make_models.py writes it with the batch's member names).
struct Request {
  std::size_t users = 0;
  std::size_t candidates = 0;
  std::vector<std::int32_t> user_categorical;
  std::vector<float> user_numeric;
  std::vector<std::int64_t> history_offsets;
  std::vector<float> history_vectors;
  std::vector<std::int32_t> history_category;
  std::vector<std::int32_t> history_type;
  std::vector<std::int32_t> history_recency;
  std::vector<std::int32_t> candidate_user;
  std::vector<float> candidate_vectors;
  std::vector<std::int32_t> candidate_categorical;
  std::vector<float> candidate_numeric;

  [[nodiscard]] funnel::DeepRankerBatch batch() const {
    funnel::DeepRankerBatch b;
    b.users = users;
    b.user_categorical = user_categorical;
    b.user_numeric = user_numeric;
    b.history_offsets = history_offsets;
    b.history_vectors = history_vectors;
    b.history_category = history_category;
    b.history_type = history_type;
    b.history_recency = history_recency;
    b.candidates = candidates;
    b.candidate_user = candidate_user;
    b.candidate_vectors = candidate_vectors;
    b.candidate_categorical = candidate_categorical;
    b.candidate_numeric = candidate_numeric;
    return b;
  }
};

template <class T>
std::vector<T> read_tensor(const funnel::SafetensorsFile& file, std::string_view name,
                           funnel::TensorDType dtype) {
  const funnel::TensorInfo& t = file.at(name);
  if (t.dtype != dtype) {
    throw std::runtime_error(file.path().string() + ": tensor " + std::string(name) + " is " +
                             std::string(funnel::to_string(t.dtype)) + ", expected " +
                             std::string(funnel::to_string(dtype)));
  }
  std::vector<T> out(t.elements());
  const auto bytes = file.bytes(t);
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

Request load_request(const fs::path& path) {
  using funnel::TensorDType;
  const funnel::SafetensorsFile file = funnel::SafetensorsFile::open(path);
  Request r;
  r.user_categorical = read_tensor<std::int32_t>(file, "user_categorical", TensorDType::i32);
  r.user_numeric = read_tensor<float>(file, "user_numeric", TensorDType::f32);
  r.history_offsets = read_tensor<std::int64_t>(file, "history_offsets", TensorDType::i64);
  r.history_vectors = read_tensor<float>(file, "history_vectors", TensorDType::f32);
  r.history_category = read_tensor<std::int32_t>(file, "history_category", TensorDType::i32);
  r.history_type = read_tensor<std::int32_t>(file, "history_type", TensorDType::i32);
  r.history_recency = read_tensor<std::int32_t>(file, "history_recency", TensorDType::i32);
  r.candidate_user = read_tensor<std::int32_t>(file, "candidate_user", TensorDType::i32);
  r.candidate_vectors = read_tensor<float>(file, "candidate_vectors", TensorDType::f32);
  r.candidate_categorical =
      read_tensor<std::int32_t>(file, "candidate_categorical", TensorDType::i32);
  r.candidate_numeric = read_tensor<float>(file, "candidate_numeric", TensorDType::f32);
  if (r.history_offsets.empty()) throw std::runtime_error(path.string() + ": no history_offsets");
  r.users = r.history_offsets.size() - 1;
  r.candidates = r.candidate_user.size();
  return r;
}

int run_serve(const Options& o) {
  const bool bf16 = o.precision == funnel::DeepRankerServeOptions::Precision::bf16;
  const std::string variant = bf16 ? "bf16" : "fp32";
  const fs::path model_dir = o.models_dir / o.model;
  funnel::DeepRankerServeOptions serve;
  serve.precision = o.precision;
  serve.threads = 1;
  std::unique_ptr<funnel::DeepRankerModel> model;
  try {
    model = funnel::DeepRankerModel::load(model_dir, serve);
  } catch (const funnel::Error& e) {
    if (e.code() != funnel::ErrorCode::unsupported) throw;
    append_line(o.out, "{\"runtime\":\"funnel\",\"variant\":\"" + variant + "\",\"model\":\"" +
                           o.model + "\",\"unsupported\":true}");
    std::printf("funnel %s: not supported by this CPU (%s), skipped\n", variant.c_str(), e.what());
    return 0;
  }
  const std::size_t tasks = model->config().tasks.size();
  for (const std::size_t nc : o.candidates) {
    const Request request =
        load_request(model_dir / "requests" / ("nc" + std::to_string(nc) + ".safetensors"));
    if (request.candidates != nc || request.users != 1) {
      throw std::runtime_error("request nc" + std::to_string(nc) + " holds " +
                               std::to_string(request.users) + " users and " +
                               std::to_string(request.candidates) + " candidates");
    }
    const funnel::DeepRankerBatch batch = request.batch();
    batch.validate(model->config());
    funnel::Matrix<float> outputs(nc, tasks);
    model->forward(batch, outputs.view());
    funnel::save_npy(
        o.outputs_dir / ("funnel-" + variant + "_" + o.model + "_nc" + std::to_string(nc) + ".npy"),
        std::as_const(outputs).view());
    const Timing t = time_calls([&] { model->forward(batch, outputs.view()); }, o);
    const double per_s = static_cast<double>(nc) / (t.p50_ms / 1e3);
    append_line(o.out, "{\"runtime\":\"funnel\",\"variant\":\"" + variant + "\",\"model\":\"" +
                           o.model + "\",\"candidates\":" + std::to_string(nc) +
                           ",\"threads\":1,\"runs\":" + std::to_string(t.runs) + ",\"p50_ms\":" +
                           fmt("%.6f", t.p50_ms) + ",\"p99_ms\":" + fmt("%.6f", t.p99_ms) +
                           ",\"mean_ms\":" + fmt("%.6f", t.mean_ms) +
                           ",\"candidates_per_s\":" + fmt("%.3f", per_s) +
                           ",\"cpu_per_wall\":" + fmt("%.4f", t.cpu_per_wall) + "}");
    std::printf(
        "funnel %s %s nc=%zu: p50 %.3f ms, p99 %.3f ms, %.0f candidates/s (%zu runs, cpu/wall "
        "%.2f)\n",
        variant.c_str(), o.model.c_str(), nc, t.p50_ms, t.p99_ms, per_s, t.runs, t.cpu_per_wall);
  }
  return 0;
}

int run_gemm(const Options& o) {
  // The benchmark process owns its OpenMP runtime: one thread, as the rows.
  omp_set_num_threads(1);
  const std::size_t n = o.size;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.0F, 1.0F);
  std::vector<float> a(n * n);
  std::vector<float> b(n * n);
  std::vector<float> c(n * n, 0.0F);
  for (float& v : a) v = dist(rng);
  for (float& v : b) v = dist(rng);
  const auto dim = static_cast<dnnl_dim_t>(n);
  const auto call = [&] {
    if (dnnl_sgemm('N', 'N', dim, dim, dim, 1.0F, a.data(), dim, b.data(), dim, 0.0F, c.data(),
                   dim) != dnnl_success) {
      throw std::runtime_error("dnnl_sgemm failed");
    }
  };
  call();
  call();
  std::vector<double> times_s;
  const double cpu0 = process_cpu_seconds();
  const auto begin = Clock::now();
  for (std::size_t i = 0; i < o.reps; ++i) {
    const auto t0 = Clock::now();
    call();
    times_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double cpu_per_wall =
      (process_cpu_seconds() - cpu0) / std::chrono::duration<double>(Clock::now() - begin).count();
  std::sort(times_s.begin(), times_s.end());
  const double flops =
      2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  const double median_gflops = flops / percentile(times_s, 0.5) / 1e9;
  const double best_gflops = flops / times_s.front() / 1e9;
  append_line(o.out, "{\"runtime\":\"gemm\",\"variant\":\"dnnl_sgemm\",\"size\":" +
                         std::to_string(n) + ",\"threads\":1,\"reps\":" + std::to_string(o.reps) +
                         ",\"gflops\":" + fmt("%.3f", median_gflops) +
                         ",\"best_gflops\":" + fmt("%.3f", best_gflops) +
                         ",\"cpu_per_wall\":" + fmt("%.4f", cpu_per_wall) + "}");
  std::printf(
      "dnnl_sgemm %zux%zux%zu, 1 thread: %.1f GFLOP/s (median of %zu), best %.1f, cpu/wall "
      "%.2f\n",
      n, n, n, median_gflops, o.reps, best_gflops, cpu_per_wall);
  return 0;
}

int run_train(const Options& o) {
  const fs::path dir = o.models_dir / o.model / "train";
  const funnel::DeepRankerConfig config = funnel::DeepRankerConfig::from_json(
      read_text(dir / "config.json"), (dir / "config.json").string());
  const funnel::DeepRankerExamples training =
      funnel::DeepRankerExamples::load(dir / "train.safetensors", config);
  const funnel::DeepRankerExamples validation =
      funnel::DeepRankerExamples::load(dir / "validation.safetensors", config);
  funnel::DeepTrainConfig train;
  train.batch_size = o.batch_size;
  train.max_epochs = 1;
  train.patience = 1;
  train.threads = o.threads;
  train.seed = 42;
  funnel::DeepTrainReport report;
  const auto t0 = Clock::now();
  const funnel::DeepRankerParameters parameters =
      funnel::train_deep_ranker(config, training, validation, train, &report);
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  if (parameters.empty()) throw std::runtime_error("train_deep_ranker returned no parameters");
  const std::size_t steps = (training.candidates + o.batch_size - 1) / o.batch_size;
  append_line(o.out, "{\"runtime\":\"funnel\",\"variant\":\"train\",\"model\":\"" + o.model +
                         "\",\"threads\":" + std::to_string(o.threads) +
                         ",\"examples\":" + std::to_string(training.candidates) +
                         ",\"batch_size\":" + std::to_string(o.batch_size) + ",\"steps\":" +
                         std::to_string(steps) + ",\"seconds\":" + fmt("%.4f", wall) +
                         ",\"examples_per_s\":" + fmt("%.3f", report.examples_per_second) +
                         ",\"examples_per_s_whole_call\":" +
                         fmt("%.3f", static_cast<double>(training.candidates) / wall) + "}");
  std::printf(
      "funnel train %s: %zu examples in %zu steps of %zu, %zu threads: %.0f examples/s "
      "(trainer's report), whole call %.2f s\n",
      o.model.c_str(), training.candidates, steps, o.batch_size, o.threads,
      report.examples_per_second, wall);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse_options(argc, argv);
    if (o.mode == "serve") return run_serve(o);
    if (o.mode == "gemm") return run_gemm(o);
    return run_train(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_deep_ranker: %s\n", e.what());
    return 1;
  }
}
