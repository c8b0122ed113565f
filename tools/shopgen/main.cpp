// SPDX-License-Identifier: Apache-2.0
// funnel-gen-shop: writes a synthetic shop with a known ground truth.

#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <system_error>

#include "funnel/error.hpp"
#include "shopgen/shopgen.hpp"

namespace {

constexpr int kUsageError = 2;

void print_usage(std::ostream& out) {
  const funnel::shopgen::ShopConfig d;
  out << "Usage: funnel-gen-shop --out DIR [options]\n"
         "\n"
         "Generates a synthetic shop (catalog.jsonl, users.jsonl, events.jsonl) whose\n"
         "events are drawn from a known model, and writes the model under DIR/truth/.\n"
         "The same options always give byte-identical files.\n"
         "\n"
         "Options:\n"
         "  --out DIR                 output directory (created if needed; required)\n"
         "  --items N                 catalogue size (default "
      << d.items
      << ")\n"
         "  --users N                 number of users (default "
      << d.users
      << ")\n"
         "  --days N                  simulated days (default "
      << d.days
      << ")\n"
         "  --seed N                  random seed (default "
      << d.seed
      << ")\n"
         "  --task-correlation X      click/purchase driver correlation in [-1, 1] (default "
      << d.task_correlation
      << ")\n"
         "  --sessions-per-day X      mean sessions per user per day (default "
      << d.sessions_per_user_per_day
      << ")\n"
         "  --impressions-per-session N  mean impressions per session (default "
      << d.impressions_per_session
      << ")\n"
         "  --start-ts N              first day, Unix seconds (default "
      << d.start_ts
      << ")\n"
         "  -q, --quiet               print nothing on success\n"
         "  -h, --help                show this help\n"
         "\n"
         "Exit status: 0 on success, 1 when writing fails, 2 for bad options.\n"
         "See docs/shopgen.md for the model.\n";
}

/// Thrown for a bad command line; main() prints it with the usage hint.
struct UsageError {
  std::string message;
};

template <class T>
T parse_number(std::string_view flag, std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end || text.empty()) {
    throw UsageError{std::string(flag) + ": not a valid number: '" + std::string(text) + "'"};
  }
  return value;
}

struct Options {
  funnel::shopgen::ShopConfig config;
  std::filesystem::path out;
  bool quiet = false;
  bool help = false;
};

Options parse_args(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      opt.help = true;
      return opt;
    }
    if (arg == "-q" || arg == "--quiet") {
      opt.quiet = true;
      continue;
    }
    std::string_view flag = arg;
    std::string_view value;
    bool has_value = false;
    if (const std::size_t eq = arg.find('=');
        arg.starts_with("--") && eq != std::string_view::npos) {
      flag = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    const auto next = [&]() -> std::string_view {
      if (has_value) return value;
      if (i + 1 >= argc) throw UsageError{std::string(flag) + ": missing value"};
      return argv[++i];
    };
    auto& c = opt.config;
    if (flag == "--out") {
      opt.out = std::string(next());
    } else if (flag == "--items") {
      c.items = parse_number<std::size_t>(flag, next());
    } else if (flag == "--users") {
      c.users = parse_number<std::size_t>(flag, next());
    } else if (flag == "--days") {
      c.days = parse_number<std::size_t>(flag, next());
    } else if (flag == "--seed") {
      c.seed = parse_number<std::uint64_t>(flag, next());
    } else if (flag == "--task-correlation") {
      c.task_correlation = parse_number<double>(flag, next());
    } else if (flag == "--sessions-per-day") {
      c.sessions_per_user_per_day = parse_number<double>(flag, next());
    } else if (flag == "--impressions-per-session") {
      c.impressions_per_session = parse_number<std::size_t>(flag, next());
    } else if (flag == "--start-ts") {
      c.start_ts = parse_number<std::int64_t>(flag, next());
    } else {
      throw UsageError{"unknown option '" + std::string(arg) + "'"};
    }
  }
  if (opt.out.empty()) throw UsageError{"--out DIR is required"};
  return opt;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  try {
    opt = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "funnel-gen-shop: " << e.message << "\n(try --help)\n";
    return kUsageError;
  }
  if (opt.help) {
    print_usage(std::cout);
    return EXIT_SUCCESS;
  }
  try {
    opt.config.validate();
  } catch (const funnel::Error& e) {
    std::cerr << "funnel-gen-shop: " << e.what() << "\n(try --help)\n";
    return kUsageError;
  }
  try {
    const auto t0 = std::chrono::steady_clock::now();
    const funnel::shopgen::Shop shop = funnel::shopgen::generate_shop(opt.config);
    const auto t1 = std::chrono::steady_clock::now();
    funnel::shopgen::write_shop(shop, opt.out);
    const auto t2 = std::chrono::steady_clock::now();
    if (!opt.quiet) {
      std::size_t counts[4] = {0, 0, 0, 0};
      for (const funnel::Event& e : shop.events) ++counts[static_cast<std::size_t>(e.type)];
      const auto ms = [](auto a, auto b) {
        return std::chrono::duration<double, std::milli>(b - a).count();
      };
      const double ctr = counts[0] ? static_cast<double>(counts[1]) / counts[0] : 0.0;
      const double cvr = counts[1] ? static_cast<double>(counts[3]) / counts[1] : 0.0;
      std::printf(
          "wrote %s: %zu items, %zu users, %zu events (%zu views, %zu clicks, %zu carts, "
          "%zu purchases; CTR %.2f%%, CVR %.2f%%) in %.0f ms (+%.0f ms writing)\n",
          opt.out.string().c_str(), shop.catalog.size(), shop.users.size(), shop.events.size(),
          counts[0], counts[1], counts[2], counts[3], 100.0 * ctr, 100.0 * cvr, ms(t0, t1),
          ms(t1, t2));
    }
  } catch (const funnel::Error& e) {
    std::cerr << "funnel-gen-shop: " << e.what() << "\n";
    return EXIT_FAILURE;
  } catch (const std::exception& e) {
    std::cerr << "funnel-gen-shop: " << e.what() << "\n";
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
