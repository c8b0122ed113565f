// SPDX-License-Identifier: Apache-2.0
// End-to-end demo of funnel on a synthetic shop with a known ground truth
// (or on your own catalog/users/events JSON Lines with --data DIR):
//
//   1. generate the shop (seeded) and write it as JSON Lines, then load it
//      back with funnel's loaders, as a host would;
//   2. split the events by time: the last --holdout-days are held out;
//   3. encode the catalogue (HashingEncoder), index it (IvfCoarseRanker, or
//      ExactCoarseRanker with --index exact),
//      train the fine ranker on the past (DeepFineRanker: MMoE with target
//      attention over the history; and the first, logistic ranker as a
//      baseline), build the reason generator and the Pipeline;
//   4. print the top 10 of a few users with per-objective scores and reasons;
//   5. measure quality on the held-out days: AUC per objective (against the
//      logistic ranker, the true model's own AUC and a popularity baseline),
//      NDCG@10 and recall@10 of the funnel (and of the same funnel with the
//      logistic ranker) against a popularity baseline, the coarse
//      stage's hit rate and its recall against exact search, and per-stage
//      latency.
//
// Run: scripts/demo.sh [options]   (or ./build/examples/demo_shop --help)

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <funnel/funnel.hpp>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "shopgen/shopgen.hpp"

namespace fs = std::filesystem;
using namespace funnel;

namespace {

struct Args {
  fs::path out = "demo-shop";
  fs::path data;  // the user's own data; no ground truth then
  std::size_t items = 3000;
  std::size_t users = 2000;
  std::size_t days = 30;
  std::uint64_t seed = 1;
  std::size_t holdout_days = 5;
  std::size_t show = 3;
  std::size_t eval_users = 500;
  std::size_t coarse_k = 200;
  std::size_t top_n = 10;
  std::string index = "ivf";
  std::size_t nprobe = 16;
  std::size_t interests = 1;
  std::string fine = "deep";
  std::string body = "mmoe";
  std::size_t epochs = 8;
  std::size_t threads = 2;
};

void usage(std::FILE* out) {
  std::fprintf(
      out,
      "Usage: demo_shop [options]\n"
      "  --out DIR           where the generated shop is written (default demo-shop)\n"
      "  --data DIR          run on your own DIR/catalog.jsonl, users.jsonl, events.jsonl\n"
      "                      instead of a generated shop (no ground-truth columns then)\n"
      "  --items N           generated catalogue size (default 3000)\n"
      "  --users N           generated users (default 2000)\n"
      "  --days N            generated days (default 30)\n"
      "  --seed N            generator seed (default 1)\n"
      "  --holdout-days N    last days held out for evaluation (default 5)\n"
      "  --show N            users whose recommendations are printed (default 3)\n"
      "  --eval-users N      users in the ranking evaluation (default 500)\n"
      "  --coarse-k N        candidates from the coarse stage (default 200)\n"
      "  --top-n N           items recommended (default 10)\n"
      "  --index ivf|exact   coarse index (default ivf: IVF-Flat, about 4*sqrt(items) lists)\n"
      "  --nprobe N          lists probed per query by the IVF index (default 16)\n"
      "  --interests N       user vectors per request, one per interest cluster of the\n"
      "                      history, merged round robin (default 1)\n"
      "  --fine deep|logistic  the Pipeline's fine ranker (default deep: the multi-task\n"
      "                      DeepFineRanker; the logistic one is always trained too, as\n"
      "                      the baseline column)\n"
      "  --body mmoe|shared_bottom  body of the deep ranker (default mmoe)\n"
      "  --epochs N          deep ranker: training epochs at most (default 8)\n"
      "  --threads N         deep ranker: training threads (default 2)\n");
}

std::size_t parse_count(std::string_view flag, std::string_view value) {
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size()) {
    throw Error(
        ErrorCode::invalid_argument,
        std::string(flag) + ": expected a non-negative integer, got '" + std::string(value) + "'");
  }
  return v;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      usage(stdout);
      std::exit(0);
    }
    if (i + 1 >= argc)
      throw Error(ErrorCode::invalid_argument, std::string(flag) + ": missing value");
    const std::string_view value = argv[++i];
    if (flag == "--out")
      a.out = value;
    else if (flag == "--data")
      a.data = value;
    else if (flag == "--items")
      a.items = parse_count(flag, value);
    else if (flag == "--users")
      a.users = parse_count(flag, value);
    else if (flag == "--days")
      a.days = parse_count(flag, value);
    else if (flag == "--seed")
      a.seed = parse_count(flag, value);
    else if (flag == "--holdout-days")
      a.holdout_days = parse_count(flag, value);
    else if (flag == "--show")
      a.show = parse_count(flag, value);
    else if (flag == "--eval-users")
      a.eval_users = parse_count(flag, value);
    else if (flag == "--coarse-k")
      a.coarse_k = parse_count(flag, value);
    else if (flag == "--top-n")
      a.top_n = parse_count(flag, value);
    else if (flag == "--index")
      a.index = value;
    else if (flag == "--nprobe")
      a.nprobe = parse_count(flag, value);
    else if (flag == "--interests")
      a.interests = parse_count(flag, value);
    else if (flag == "--fine")
      a.fine = value;
    else if (flag == "--body")
      a.body = value;
    else if (flag == "--epochs")
      a.epochs = parse_count(flag, value);
    else if (flag == "--threads")
      a.threads = parse_count(flag, value);
    else
      throw Error(ErrorCode::invalid_argument,
                  "unknown option " + std::string(flag) + " (see --help)");
  }
  if (a.holdout_days == 0) throw Error(ErrorCode::invalid_argument, "--holdout-days must be > 0");
  if (a.index != "ivf" && a.index != "exact") {
    throw Error(ErrorCode::invalid_argument,
                "--index: expected ivf or exact, got '" + a.index + "'");
  }
  if (a.fine != "deep" && a.fine != "logistic") {
    throw Error(ErrorCode::invalid_argument,
                "--fine: expected deep or logistic, got '" + a.fine + "'");
  }
  if (a.body != "mmoe" && a.body != "shared_bottom") {
    throw Error(ErrorCode::invalid_argument,
                "--body: expected mmoe or shared_bottom, got '" + a.body + "'");
  }
  if (a.epochs == 0) throw Error(ErrorCode::invalid_argument, "--epochs must be > 0");
  if (a.threads == 0) throw Error(ErrorCode::invalid_argument, "--threads must be > 0");
  return a;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Text that represents an item to the encoder.
std::string item_text(const Item& item) {
  std::string text = item.title;
  for (const std::string* part : {&item.brand, &item.category, &item.description}) {
    if (!part->empty()) text += " " + *part;
  }
  return text;
}

// Shortens UTF-8 text to at most `max` code points for table display.
std::string clip(std::string_view text, std::size_t max) {
  std::size_t pos = 0;
  std::size_t count = 0;
  while (pos < text.size() && count < max) {
    const auto b = static_cast<unsigned char>(text[pos]);
    pos += b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : 4;
    ++count;
  }
  return pos >= text.size() ? std::string(text) : std::string(text.substr(0, pos)) + "…";
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

// One held-out labelled example: a view (ctr), a click (cvr) or a click
// with dwell (dwell), scored with the history strictly before its ts.
struct HeldOut {
  std::size_t user = 0;    // index into users
  std::size_t prefix = 0;  // history events before the example
  ItemId item = kNoItem;
  std::int64_t ts = 0;
  int objective = 0;   // 0 ctr, 1 cvr, 2 dwell
  float label = 0.0F;  // 0/1, or log1p(dwell_s)
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    const auto t_total = Clock::now();

    // 1. The shop: generated (with its truth) or the user's own.
    std::optional<shopgen::Shop> shop;
    fs::path dir = args.data;
    if (dir.empty()) {
      shopgen::ShopConfig config;
      config.items = args.items;
      config.users = args.users;
      config.days = args.days;
      config.seed = args.seed;
      const auto t = Clock::now();
      shop = shopgen::generate_shop(config);
      shopgen::write_shop(*shop, args.out);
      dir = args.out;
      std::printf("generated a shop in %.2f s -> %s\n", seconds_since(t), dir.string().c_str());
    }
    auto t = Clock::now();
    auto catalog = std::make_shared<Catalog>(Catalog::load_jsonl(dir / "catalog.jsonl"));
    const std::vector<UserProfile> users = load_users_jsonl(dir / "users.jsonl");
    const std::vector<Event> events = load_events_jsonl(dir / "events.jsonl");
    std::printf("loaded %zu items, %zu users, %zu events in %.2f s\n", catalog->size(),
                users.size(), events.size(), seconds_since(t));
    if (events.empty()) throw Error(ErrorCode::invalid_argument, "the events file is empty");

    // 2. Split by time.
    std::int64_t max_ts = events.front().ts;
    for (const Event& e : events) max_ts = std::max(max_ts, e.ts);
    const std::int64_t day = 86400;
    const std::int64_t split_ts =
        (max_ts / day + 1 - static_cast<std::int64_t>(args.holdout_days)) * day;
    std::vector<Event> train_events;
    for (const Event& e : events) {
      if (e.ts < split_ts) train_events.push_back(e);
    }
    std::printf("train: %zu events before the split, held out: %zu events (last %zu days)\n",
                train_events.size(), events.size() - train_events.size(), args.holdout_days);

    // 3. Encode, index, train, explain, wire.
    t = Clock::now();
    auto encoder = std::make_shared<HashingEncoder>();
    std::vector<std::string> texts;
    texts.reserve(catalog->size());
    for (const Item& item : catalog->items()) texts.push_back(item_text(item));
    catalog->set_vectors(encoder->encode(texts));
    const double encode_s = seconds_since(t);
    t = Clock::now();
    // The exact index is the ground truth the IVF index is measured against.
    auto exact =
        std::make_shared<ExactCoarseRanker>(ExactCoarseRankerConfig{.dim = encoder->dim()});
    exact->add(catalog->vectors(), catalog->ids());
    std::shared_ptr<CoarseRanker> index = exact;
    if (args.index == "ivf") {
      // About 4 sqrt(n) lists (a power of two), as few as the training
      // sample (the catalogue itself) needs: at least 39 vectors per list.
      IvfCoarseRankerConfig ivf;
      ivf.dim = encoder->dim();
      std::size_t nlist = 1;
      const double target = 4.0 * std::sqrt(static_cast<double>(catalog->size()));
      while (nlist * 2 <= target && nlist * 2 * ivf.min_train_per_list <= catalog->size()) {
        nlist *= 2;
      }
      ivf.description = "IVF" + std::to_string(nlist) + ",Flat";
      ivf.default_nprobe = std::min(args.nprobe, nlist);
      std::shared_ptr<IvfCoarseRanker> trained = IvfCoarseRanker::train(ivf, catalog->vectors());
      trained->add(catalog->vectors(), catalog->ids());
      index = trained;
    }
    const double index_s = seconds_since(t);
    std::printf("encoded %zu items (%s) in %.2f s, indexed (%s) in %.3f s\n", catalog->size(),
                encoder->name().c_str(), encode_s, index->name().c_str(), index_s);

    t = Clock::now();
    std::vector<ObjectiveTrainReport> report;
    std::shared_ptr<const FineRanker> logistic =
        LogisticFineRanker::train(catalog, train_events, users, LogisticTrainConfig{}, &report);
    std::printf("trained the logistic fine ranker (the baseline) in %.2f s:\n", seconds_since(t));
    for (const ObjectiveTrainReport& r : report) {
      std::printf("  %-5s %7zu train / %6zu validation examples, %s %.4f after %zu epochs\n",
                  r.objective.c_str(), r.train_examples, r.validation_examples,
                  r.objective == "dwell" ? "RMSE(log dwell)" : "validation AUC",
                  r.validation_metric, r.epochs);
    }
    std::shared_ptr<const FineRanker> fine = logistic;
    FusionConfig fusion;
    if (args.fine == "deep") {
      t = Clock::now();
      DeepFineRankerTrainConfig deep_config;
      if (args.body == "shared_bottom") {
        deep_config.model.body = DeepRankerConfig::Body::shared_bottom;
        deep_config.model.experts = 1;
      }
      deep_config.train.max_epochs = args.epochs;
      deep_config.train.threads = args.threads;
      DeepTrainReport deep_report;
      auto deep = DeepFineRanker::train(catalog, train_events, users, deep_config, &deep_report);
      std::printf(
          "trained the deep fine ranker (%s) in %.2f s: %zu train / %zu validation examples, "
          "%zu epochs (kept epoch %zu), %.0f examples/s\n",
          deep->name().c_str(), seconds_since(t), deep_report.train_examples,
          deep_report.validation_examples, deep_report.epochs, deep_report.best_epoch,
          deep_report.examples_per_second);
      for (const DeepTaskMetrics& m : deep_report.validation) {
        if (std::isnan(m.rmse)) {
          std::printf("  %-5s validation AUC %.4f, log-loss %.4f (%zu examples)\n", m.task.c_str(),
                      m.auc, m.log_loss, m.examples);
        } else {
          std::printf("  %-5s validation RMSE(log dwell) %.4f (%zu examples)\n", m.task.c_str(),
                      m.rmse, m.examples);
        }
      }
      fusion = deep->model().config().fusion;
      fine = std::move(deep);
    }
    auto popularity = std::make_shared<Popularity>(
        Popularity::from_events(*catalog, train_events, users, split_ts));
    auto reasons = std::make_shared<TemplateReasonGenerator>(catalog, popularity);
    PipelineConfig pipeline_config;
    pipeline_config.coarse_k = args.coarse_k;
    pipeline_config.top_n = args.top_n;
    pipeline_config.interests = args.interests;
    pipeline_config.fusion = fusion;
    const Pipeline pipeline(catalog, encoder, index, fine, reasons, pipeline_config);
    // The same funnel with the first (logistic) fine ranker, for comparison.
    PipelineConfig baseline_config = pipeline_config;
    baseline_config.explain = false;
    baseline_config.fusion = FusionConfig{};
    const Pipeline baseline(catalog, encoder, index, logistic, reasons, baseline_config);

    // Per-user timelines over all events (sorted by ts).
    std::unordered_map<std::string, std::size_t> user_row;
    for (std::size_t u = 0; u < users.size(); ++u) user_row.emplace(users[u].id, u);
    std::vector<std::vector<HistoryEvent>> timeline(users.size());
    for (const Event& e : events) {
      const auto it = user_row.find(e.user);
      if (it != user_row.end() && catalog->contains(e.item)) {
        timeline[it->second].push_back({e.item, e.type, e.ts, e.dwell_s});
      }
    }
    for (auto& tl : timeline) {
      std::stable_sort(tl.begin(), tl.end(), [](auto& a, auto& b) { return a.ts < b.ts; });
    }
    auto context_at = [&](std::size_t u, std::size_t prefix, std::int64_t now, std::size_t k) {
      UserContext ctx;
      ctx.profile = users[u];
      ctx.history.assign(timeline[u].begin(),
                         timeline[u].begin() + static_cast<std::ptrdiff_t>(prefix));
      ctx.now_ts = now;
      ctx.locale = k % 2 == 0 ? "zh-CN" : "en";
      return ctx;
    };
    auto prefix_before = [&](std::size_t u, std::int64_t ts) {
      const auto& tl = timeline[u];
      return static_cast<std::size_t>(
          std::lower_bound(tl.begin(), tl.end(), ts,
                           [](const HistoryEvent& e, std::int64_t v) { return e.ts < v; }) -
          tl.begin());
    };

    // 4. Show a few users: the most active ones before the split.
    std::vector<std::size_t> by_activity(users.size());
    std::iota(by_activity.begin(), by_activity.end(), 0);
    std::stable_sort(by_activity.begin(), by_activity.end(), [&](std::size_t a, std::size_t b) {
      return prefix_before(a, split_ts) > prefix_before(b, split_ts);
    });
    for (std::size_t s = 0; s < std::min(args.show, users.size()); ++s) {
      const std::size_t u = by_activity[s * 7 % std::max<std::size_t>(users.size(), 1)];
      const UserContext ctx = context_at(u, prefix_before(u, split_ts), split_ts, s);
      const Recommendation rec = pipeline.recommend(ctx);
      const UserProfile& p = users[u];
      std::printf(
          "\nuser %s (%s, age %s, %s), %zu past events, locale %s; recent:", p.id.c_str(),
          p.gender.empty() ? "?" : p.gender.c_str(), p.age ? std::to_string(*p.age).c_str() : "?",
          p.location.empty() ? "?" : p.location.c_str(), ctx.history.size(), ctx.locale.c_str());
      std::size_t shown = 0;
      for (auto it = ctx.history.rbegin(); it != ctx.history.rend() && shown < 3; ++it) {
        if (it->type == EventType::view) continue;
        std::printf(" [%s] %s;", std::string(to_string(it->type)).c_str(),
                    clip(catalog->at(it->item).title, 22).c_str());
        ++shown;
      }
      std::printf("\n  #  %-28s %-12s %8s  %6s %6s %6s  %9s  reason\n", "item", "category", "price",
                  "ctr", "cvr", "dwell", "score");
      for (std::size_t r = 0; r < rec.items.size(); ++r) {
        const RecommendedItem& item = rec.items[r];
        const Item& meta = catalog->at(item.id);
        std::printf("  %-2zu %-28s %-12s %8.2f  %6.3f %6.3f %5.1fs  %9.2e  %s\n", r + 1,
                    clip(meta.title, 24).c_str(), clip(meta.category, 12).c_str(),
                    meta.price.value_or(0.0), item.objective_scores[0], item.objective_scores[1],
                    item.objective_scores[2], item.score, item.reason.text.c_str());
      }
      std::printf(
          "  stages: encode %.3f ms, coarse %.3f ms, fine %.3f ms, fusion %.3f ms, reasons %.3f "
          "ms\n",
          rec.timings.encode_ms, rec.timings.coarse_ms, rec.timings.fine_ms, rec.timings.fusion_ms,
          rec.timings.reason_ms);
    }

    // 5a. AUC per objective on held-out examples.
    std::vector<HeldOut> held_out;
    constexpr std::int64_t kWindow = 3600;  // the trainer's attribution window
    for (std::size_t u = 0; u < users.size(); ++u) {
      const auto& tl = timeline[u];
      std::map<std::pair<ItemId, int>, std::vector<std::int64_t>> times;  // (item, type) -> ts
      for (const HistoryEvent& e : tl) times[{e.item, static_cast<int>(e.type)}].push_back(e.ts);
      auto followed = [&](ItemId item, EventType type, std::int64_t ts) {
        const auto it = times.find({item, static_cast<int>(type)});
        if (it == times.end()) return false;
        return std::any_of(it->second.begin(), it->second.end(),
                           [&](std::int64_t v) { return v > ts && v <= ts + kWindow; });
      };
      for (const HistoryEvent& e : tl) {
        if (e.ts < split_ts) continue;
        const std::size_t prefix = prefix_before(u, e.ts);
        if (e.type == EventType::view) {
          held_out.push_back(
              {u, prefix, e.item, e.ts, 0, followed(e.item, EventType::click, e.ts) ? 1.0F : 0.0F});
        } else if (e.type == EventType::click) {
          held_out.push_back({u, prefix, e.item, e.ts, 1,
                              followed(e.item, EventType::purchase, e.ts) ? 1.0F : 0.0F});
          if (e.dwell_s) {
            held_out.push_back(
                {u, prefix, e.item, e.ts, 2, static_cast<float>(std::log1p(*e.dwell_s))});
          }
        }
      }
    }
    std::array<std::vector<float>, 3> model_scores, base_scores, truth_scores, pop_scores, labels;
    Matrix<float> one(1, fine->objectives().size());
    Matrix<float> one_base(1, logistic->objectives().size());
    std::vector<float> uvec(encoder->dim());
    for (const HeldOut& h : held_out) {
      const UserContext ctx = context_at(h.user, h.prefix, h.ts, 0);
      pipeline.user_vector(ctx, uvec);
      const std::span<const float> iv = catalog->vector(h.item);
      const float coarse = std::inner_product(uvec.begin(), uvec.end(), iv.begin(), 0.0F);
      const Candidate c{h.item, coarse};
      fine->score(ctx, std::span<const Candidate>(&c, 1), one.view());
      logistic->score(ctx, std::span<const Candidate>(&c, 1), one_base.view());
      const auto k = static_cast<std::size_t>(h.objective);
      model_scores[k].push_back(one(0, k));
      base_scores[k].push_back(one_base(0, k));
      labels[k].push_back(h.label);
      pop_scores[k].push_back(static_cast<float>(popularity->item_count(h.item)));
      if (shop) {
        const shopgen::TrueScores ts =
            shopgen::true_scores(*shop, h.user, catalog->index_of(h.item));
        truth_scores[k].push_back(static_cast<float>(k == 0   ? ts.p_click
                                                     : k == 1 ? ts.p_purchase_given_click
                                                              : std::log(ts.dwell_s)));
      }
    }
    std::printf("\nheld-out quality (%lld..%lld, %zu examples)\n", static_cast<long long>(split_ts),
                static_cast<long long>(max_ts), held_out.size());
    std::printf("  %-6s %8s %10s %10s %10s %12s\n", "", "examples", args.fine.c_str(), "logistic",
                "popularity", shop ? "true model" : "");
    const char* names[3] = {"ctr", "cvr", "dwell"};
    for (std::size_t k = 0; k < 3; ++k) {
      if (labels[k].empty()) continue;
      std::vector<int> binary(labels[k].size());
      if (k < 2) {
        for (std::size_t i = 0; i < binary.size(); ++i) binary[i] = labels[k][i] > 0.5F ? 1 : 0;
      } else {
        // Dwell: AUC of telling a long visit (above the median) from a short one.
        std::vector<float> sorted = labels[k];
        std::nth_element(sorted.begin(),
                         sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2),
                         sorted.end());
        const float median = sorted[sorted.size() / 2];
        for (std::size_t i = 0; i < binary.size(); ++i) binary[i] = labels[k][i] > median ? 1 : 0;
      }
      const auto positives = std::count(binary.begin(), binary.end(), 1);
      if (positives == 0 || positives == static_cast<long>(binary.size())) continue;
      std::printf("  %-6s %8zu %10.4f %10.4f %10.4f", names[k], binary.size(),
                  auc(model_scores[k], binary), auc(base_scores[k], binary),
                  auc(pop_scores[k], binary));
      if (shop) std::printf(" %12.4f", auc(truth_scores[k], binary));
      std::printf("   AUC%s\n", k == 2 ? " (long vs short dwell)" : "");
    }

    // 5b. Ranking quality on held-out clicks and purchases, and latency.
    const std::vector<std::pair<ItemId, double>> popular =
        popularity->top_items(args.coarse_k + 200);
    std::vector<std::size_t> eval;
    for (std::size_t u = 0; u < users.size() && eval.size() < args.eval_users; ++u) {
      bool positive = false;
      for (const HistoryEvent& e : timeline[u]) {
        positive = positive || (e.ts >= split_ts && e.type != EventType::view);
      }
      if (positive && prefix_before(u, split_ts) > 0) eval.push_back(u);
    }
    double ndcg_f = 0, ndcg_p = 0, recall_f = 0, recall_p = 0, coarse_hit = 0, coarse_recall = 0;
    double ndcg_b = 0, recall_b = 0;
    double truth_ndcg_f = 0, truth_ndcg_p = 0, truth_ndcg_b = 0;
    std::array<std::vector<double>, 6> stage_ms;
    for (std::size_t e = 0; e < eval.size(); ++e) {
      const std::size_t u = eval[e];
      const UserContext ctx = context_at(u, prefix_before(u, split_ts), split_ts, e);
      std::unordered_set<ItemId> purchased, relevant;
      for (const HistoryEvent& h : ctx.history) {
        if (h.type == EventType::purchase) purchased.insert(h.item);
      }
      for (const HistoryEvent& h : timeline[u]) {
        if (h.ts >= split_ts && h.type != EventType::view && !purchased.contains(h.item)) {
          relevant.insert(h.item);
        }
      }
      if (relevant.empty()) continue;
      const Recommendation rec = pipeline.recommend(ctx);
      std::vector<ItemId> ranked;
      for (const auto& item : rec.items) ranked.push_back(item.id);
      std::vector<ItemId> base_ranked;
      for (const auto& item : baseline.recommend(ctx).items) base_ranked.push_back(item.id);
      std::vector<ItemId> pop_ranked;
      for (const auto& [id, count] : popular) {
        if (!purchased.contains(id) && pop_ranked.size() < args.top_n) pop_ranked.push_back(id);
      }
      ndcg_f += ndcg_at_k(ranked, relevant, args.top_n);
      ndcg_b += ndcg_at_k(base_ranked, relevant, args.top_n);
      ndcg_p += ndcg_at_k(pop_ranked, relevant, args.top_n);
      recall_f += recall_at_k(ranked, relevant, args.top_n);
      recall_b += recall_at_k(base_ranked, relevant, args.top_n);
      recall_p += recall_at_k(pop_ranked, relevant, args.top_n);
      // Coarse stage: share of the held-out positives among its candidates,
      // and how many of exact search's candidates the index found.
      {
        const Matrix<float> q = pipeline.user_vectors(ctx);
        const DenyListFilter deny(std::vector<ItemId>(purchased.begin(), purchased.end()));
        SearchParams params;
        params.filter = &deny;
        std::unordered_set<ItemId> found;
        std::unordered_set<ItemId> exact_found;
        for (const MergedCandidate& c :
             search_merged(*index, q.view(), args.coarse_k, &params, MergeOrder::round_robin)) {
          found.insert(c.id);
        }
        for (const MergedCandidate& c :
             search_merged(*exact, q.view(), args.coarse_k, &params, MergeOrder::round_robin)) {
          exact_found.insert(c.id);
        }
        std::size_t hits = 0;
        for (const ItemId id : found) hits += relevant.contains(id) ? 1 : 0;
        coarse_hit += static_cast<double>(hits) / static_cast<double>(relevant.size());
        std::size_t same = 0;
        for (const ItemId id : exact_found) same += found.contains(id) ? 1 : 0;
        coarse_recall += exact_found.empty()
                             ? 1.0
                             : static_cast<double>(same) / static_cast<double>(exact_found.size());
      }
      if (shop) {
        // The truth's own top 10 for this user (by expected purchases per
        // impression), among items not yet bought.
        std::vector<std::pair<double, ItemId>> utility;
        for (std::size_t r = 0; r < catalog->size(); ++r) {
          const ItemId id = catalog->items()[r].id;
          if (purchased.contains(id)) continue;
          const shopgen::TrueScores ts = shopgen::true_scores(*shop, u, r);
          utility.emplace_back(ts.p_click * ts.p_purchase_given_click, id);
        }
        std::partial_sort(utility.begin(), utility.begin() + 10, utility.end(), std::greater<>());
        std::unordered_set<ItemId> best;
        for (std::size_t i = 0; i < 10; ++i) best.insert(utility[i].second);
        truth_ndcg_f += ndcg_at_k(ranked, best, args.top_n);
        truth_ndcg_b += ndcg_at_k(base_ranked, best, args.top_n);
        truth_ndcg_p += ndcg_at_k(pop_ranked, best, args.top_n);
      }
      const StageTimings& tm = rec.timings;
      const double values[6] = {tm.encode_ms, tm.coarse_ms, tm.fine_ms,
                                tm.fusion_ms, tm.reason_ms, tm.total_ms};
      for (std::size_t i = 0; i < 6; ++i) stage_ms[i].push_back(values[i]);
    }
    const double n = static_cast<double>(std::max<std::size_t>(stage_ms[0].size(), 1));
    std::printf("\nranking quality over %zu users with held-out clicks or purchases (top %zu)\n",
                stage_ms[0].size(), args.top_n);
    std::printf("  %-34s %8s %10s %10s\n", "", ("funnel/" + args.fine).c_str(), "f/logistic",
                "popularity");
    std::printf("  %-34s %8.4f %10.4f %10.4f\n", "NDCG@10 (held-out clicks+buys)", ndcg_f / n,
                ndcg_b / n, ndcg_p / n);
    std::printf("  %-34s %8.4f %10.4f %10.4f\n", "recall@10 (held-out clicks+buys)", recall_f / n,
                recall_b / n, recall_p / n);
    if (shop) {
      std::printf("  %-34s %8.4f %10.4f %10.4f\n", "NDCG@10 vs the true top 10", truth_ndcg_f / n,
                  truth_ndcg_b / n, truth_ndcg_p / n);
    }
    std::printf(
        "  coarse stage (%s): %.4f of held-out positives among its %zu candidates; recall@%zu "
        "against exact search %.4f\n",
        index->name().c_str(), coarse_hit / n, args.coarse_k, args.coarse_k, coarse_recall / n);
    std::printf("\nlatency per request over %zu requests (ms):\n  %-8s %8s %8s %8s\n",
                stage_ms[0].size(), "stage", "mean", "p50", "p99");
    const char* stage_names[6] = {"encode", "coarse", "fine", "fusion", "reasons", "total"};
    for (std::size_t i = 0; i < 6; ++i) {
      const double mean = std::accumulate(stage_ms[i].begin(), stage_ms[i].end(), 0.0) / n;
      std::printf("  %-8s %8.3f %8.3f %8.3f\n", stage_names[i], mean, percentile(stage_ms[i], 0.5),
                  percentile(stage_ms[i], 0.99));
    }
    std::printf("\ndemo finished in %.1f s\n", seconds_since(t_total));
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "demo_shop: error (%s): %s\n", std::string(to_string(e.code())).c_str(),
                 e.what());
    return 1;
  }
}
