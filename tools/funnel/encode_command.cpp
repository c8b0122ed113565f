// SPDX-License-Identifier: Apache-2.0
// `funnel encode`: texts (one per line, or one string field of JSON Lines)
// -> an n x dim float32 .npy of L2-normalised vectors, with a Hugging Face
// BERT checkpoint (BertEncoder) or the weight-free HashingEncoder.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"
#include "commands.hpp"
#include "funnel/bert_encoder.hpp"
#include "funnel/encoder.hpp"
#include "funnel/error.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/matrix.hpp"
#include "funnel/npy.hpp"
#include "internal/error_util.hpp"
#include "internal/jsonl.hpp"
#include "internal/utf8.hpp"

namespace funnel::cli {
namespace {

namespace fs = std::filesystem;

constexpr OptionSpec kEncodeOptions[] = {
    {"--model", "DIR", "Hugging Face BERT checkpoint directory (config.json, vocab.txt, ...)"},
    {"--hashing", "", "use the weight-free HashingEncoder instead of a checkpoint"},
    {"--hashing-dim", "N", "HashingEncoder output dimension (default 256)"},
    {"--input", "FILE", "texts, one per line (required; '-' reads standard input)"},
    {"--jsonl-field", "NAME", "read FILE as JSON Lines and encode this string field"},
    {"--out", "FILE", "output .npy, n x dim float32 (required)"},
    {"--role", "ROLE", "document or query: selects the prefix (default document)"},
    {"--compute", "TYPE", "auto, fp32, bf16 or int8 (default auto: bf16 where the CPU has it)"},
    {"--threads", "N", "threads per batch (default 1)"},
    {"--max-length", "N", "longest token sequence, [CLS] and [SEP] included (default 512)"},
    {"--batch", "N", "texts run through the transformer together (default 32)"},
    {"--query-prefix", "TEXT", "prepended to query texts (e5: 'query: ')"},
    {"--document-prefix", "TEXT", "prepended to document texts (e5: 'passage: ')"},
};

constexpr CommandSpec kEncodeSpec = {
    "funnel encode", "(--model DIR | --hashing) --input FILE --out FILE [options]",
    "Encodes texts into L2-normalised vectors (.npy), one row per text, in input order.",
    kEncodeOptions,
    "Plain input: every line is one text (a final newline does not add an empty text;\n"
    "an empty line is an empty text). With --jsonl-field every non-blank line must be a\n"
    "JSON object whose field is a string. Invalid UTF-8 is an error naming the line.\n"};

// Texts of a plain file: one per line, '\r' before '\n' dropped.
std::vector<std::string> read_lines(std::istream& in, const std::string& name) {
  std::vector<std::string> texts;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (const auto bad = detail::find_invalid_utf8(line)) {
      detail::fail(ErrorCode::format, name, ":", number, ": invalid UTF-8 at byte ", *bad);
    }
    texts.push_back(std::move(line));
  }
  if (in.bad()) detail::fail(ErrorCode::io, "cannot read '", name, "'");
  return texts;
}

std::vector<std::string> read_texts(const Args& args) {
  const std::string_view input = args.required("--input");
  if (const auto field = args.value("--jsonl-field")) {
    if (input == "-") args.fail("--jsonl-field needs a file, not standard input");
    std::vector<std::string> texts;
    const std::string name(*field);
    detail::for_each_jsonl(fs::path(input), [&](const detail::JsonLine& line) {
      texts.push_back(*line.string(name.c_str(), /*required=*/true));
    });
    return texts;
  }
  if (input == "-") return read_lines(std::cin, "<stdin>");
  std::ifstream in{fs::path(input)};
  if (!in) detail::fail(ErrorCode::io, "cannot open --input '", std::string(input), "'");
  return read_lines(in, std::string(input));
}

std::unique_ptr<Encoder> make_encoder(const Args& args) {
  const bool hashing = args.has("--hashing");
  if (hashing == args.has("--model")) args.fail("give exactly one of --model DIR and --hashing");
  if (hashing) {
    for (const std::string_view bert_only : {"--compute", "--threads", "--max-length", "--batch",
                                             "--query-prefix", "--document-prefix"}) {
      if (args.has(bert_only)) args.fail(std::string(bert_only) + " applies to --model only");
    }
    HashingEncoderConfig config;
    config.dim =
        args.number_or<std::size_t>("--hashing-dim", config.dim, 1, HashingEncoderConfig::kMaxDim);
    return std::make_unique<HashingEncoder>(config);
  }
  if (args.has("--hashing-dim")) args.fail("--hashing-dim applies to --hashing only");
  BertEncoderConfig config;
  config.checkpoint_dir = fs::path(args.required("--model"));
  const std::string_view compute =
      args.choice("--compute", {"auto", "fp32", "bf16", "int8"}, "auto");
  config.compute = compute == "fp32"   ? BertComputeType::fp32
                   : compute == "bf16" ? BertComputeType::bf16
                   : compute == "int8" ? BertComputeType::int8
                                       : BertComputeType::automatic;
  config.threads = args.number_or<std::size_t>("--threads", 1, 1, BertEncoderConfig::kMaxThreads);
  config.max_length = args.number_or<std::size_t>("--max-length", config.max_length, 2);
  config.max_batch = args.number_or<std::size_t>("--batch", config.max_batch, 1);
  config.query_prefix = std::string(args.value_or("--query-prefix", ""));
  config.document_prefix = std::string(args.value_or("--document-prefix", ""));
  return std::make_unique<BertEncoder>(config);
}

}  // namespace

int run_encode(const Invocation& invocation) {
  const Args args = Args::parse(kEncodeSpec, invocation.words);
  if (args.help()) {
    print_help(std::cout, kEncodeSpec);
    return kExitOk;
  }
  const fs::path out(args.required("--out"));
  const TextRole role = args.choice("--role", {"document", "query"}, "document") == "query"
                            ? TextRole::query
                            : TextRole::document;
  const auto start = std::chrono::steady_clock::now();
  const std::unique_ptr<Encoder> encoder = make_encoder(args);
  const auto loaded = std::chrono::steady_clock::now();
  const std::vector<std::string> texts = read_texts(args);
  const auto read = std::chrono::steady_clock::now();
  const Matrix<float> vectors = encoder->encode(texts, role);
  const auto encoded = std::chrono::steady_clock::now();
  save_npy(out, vectors.view());

  const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  const double encode_s = seconds(read, encoded);
  std::printf("encoded %zu texts with %s into %s (%zu x %zu)\n", texts.size(),
              encoder->name().c_str(), out.string().c_str(), vectors.rows(), vectors.cols());
  std::printf("load %.3f s, encode %.3f s (%.1f texts/s)\n", seconds(start, loaded), encode_s,
              encode_s > 0 ? static_cast<double>(texts.size()) / encode_s : 0.0);
  return kExitOk;
}

}  // namespace funnel::cli
