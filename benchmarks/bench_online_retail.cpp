// SPDX-License-Identifier: Apache-2.0
// bench_online_retail: the whole funnel on real purchases (UCI Online Retail,
// converted by funnel-retail-convert) against a popularity and an
// item-to-item co-purchase baseline, on one split by time.
//
//   bench_online_retail --data DIR [options]      (see --help)
//
// Protocol (docs/online-retail-benchmark.md states it for readers):
//  - Purchases before --cut train everything (the fine ranker, popularity,
//    co-purchase counts); purchases from the cut on are the test period.
//  - Test customers: a purchase before the cut and one in the test period.
//    Each is asked once, at the cut, with its whole history before the cut.
//  - Two variants: "all" (relevant = the distinct items bought in the test
//    period; already-bought items may be recommended: repeat purchases are
//    common in this shop) and "new" (relevant = test items not bought
//    before the cut; items bought before the cut are never recommended;
//    customers without such items are left out of this variant).
//  - Metrics per customer, averaged: recall@50 and recall@10 (denominator
//    min(k, relevant)), NDCG@10 (binary relevance), funnel::metrics.
//  - Coarse stage: ExactCoarseRanker (inner product) over HashingEncoder
//    vectors of the titles; the query is Pipeline::user_vector (or
//    user_vectors merged round robin with --interests > 1).
//  - Funnel: Pipeline::recommend (coarse_k candidates -> DeepFineRanker ->
//    fusion on its single "purchase" task), top 50.
//  - Popularity: training purchase events per item. Co-purchase: baskets =
//    a customer's purchases with one timestamp (one invoice); an item's
//    score is the sum over the customer's distinct past items h of the
//    number of training baskets holding both h and it; ties (and the many
//    items scored 0) in popularity order.

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <funnel/funnel.hpp>
#include <map>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace fs = std::filesystem;
using namespace funnel;

namespace {

struct Args {
  fs::path data;
  std::string cut = "2011-10-09";
  std::size_t dim = 256;
  std::size_t coarse_k = 300;
  std::size_t interests = 4;
  double half_life_days = 30.0;
  std::string fine = "deep";
  std::size_t negatives = 2;
  std::size_t epochs = 1;
  std::size_t history_length = 30;
  bool item_id = false;
  std::size_t threads = 2;
  std::uint64_t seed = 7;
};

void usage(std::FILE* out) {
  std::fprintf(
      out,
      "Usage: bench_online_retail --data DIR [options]\n"
      "  --data DIR          catalog.jsonl, users.jsonl, events.jsonl of\n"
      "                      funnel-retail-convert (required)\n"
      "  --cut YYYY-MM-DD    first day of the test period, 00:00 UTC (default 2011-10-09)\n"
      "  --dim N             HashingEncoder dimension (default 256)\n"
      "  --coarse-k N        candidates from the coarse stage (default 300)\n"
      "  --interests N       user vectors per request, merged round robin (default 4)\n"
      "  --half-life-days X  recency half-life of the user vector (default 30)\n"
      "  --fine deep|none    the fine stage: DeepFineRanker, or none (the funnel\n"
      "                      row then ranks by the coarse score; default deep)\n"
      "  --negatives N       sampled negatives per training purchase (default 2)\n"
      "  --epochs N          training epochs at most (default 1)\n"
      "  --history N         history events the fine ranker attends over (default 30)\n"
      "  --item-id on|off    the stock code as an item categorical feature of the\n"
      "                      fine ranker (an item-id embedding; default off)\n"
      "  --threads N         training threads (default 2)\n"
      "  --seed N            sampling and initialisation seed (default 7)\n");
}

std::size_t parse_count(std::string_view flag, std::string_view value) {
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    throw Error(
        ErrorCode::invalid_argument,
        std::string(flag) + ": expected a non-negative integer, got '" + std::string(value) + "'");
  }
  return v;
}

double parse_number(std::string_view flag, std::string_view value) {
  double v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() ||
      !std::isfinite(v) || v <= 0) {
    throw Error(
        ErrorCode::invalid_argument,
        std::string(flag) + ": expected a positive number, got '" + std::string(value) + "'");
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
    if (i + 1 >= argc) {
      throw Error(ErrorCode::invalid_argument, std::string(flag) + ": missing value");
    }
    const std::string_view value = argv[++i];
    if (flag == "--data") {
      a.data = value;
    } else if (flag == "--cut") {
      a.cut = value;
    } else if (flag == "--dim") {
      a.dim = parse_count(flag, value);
    } else if (flag == "--coarse-k") {
      a.coarse_k = parse_count(flag, value);
    } else if (flag == "--interests") {
      a.interests = parse_count(flag, value);
    } else if (flag == "--half-life-days") {
      a.half_life_days = parse_number(flag, value);
    } else if (flag == "--fine") {
      a.fine = value;
    } else if (flag == "--negatives") {
      a.negatives = parse_count(flag, value);
    } else if (flag == "--epochs") {
      a.epochs = parse_count(flag, value);
    } else if (flag == "--history") {
      a.history_length = parse_count(flag, value);
    } else if (flag == "--item-id") {
      if (value != "on" && value != "off") {
        throw Error(ErrorCode::invalid_argument,
                    "--item-id: expected on or off, got '" + std::string(value) + "'");
      }
      a.item_id = value == "on";
    } else if (flag == "--threads") {
      a.threads = parse_count(flag, value);
    } else if (flag == "--seed") {
      a.seed = parse_count(flag, value);
    } else {
      throw Error(ErrorCode::invalid_argument,
                  "unknown option " + std::string(flag) + " (see --help)");
    }
  }
  if (a.data.empty()) throw Error(ErrorCode::invalid_argument, "--data is required");
  if (a.fine != "deep" && a.fine != "none") {
    throw Error(ErrorCode::invalid_argument, "--fine: expected deep or none, got '" + a.fine + "'");
  }
  if (a.coarse_k < 50) throw Error(ErrorCode::invalid_argument, "--coarse-k must be at least 50");
  return a;
}

// "YYYY-MM-DD" as Unix seconds at 00:00 UTC.
std::int64_t parse_day(std::string_view text) {
  int y = 0;
  int m = 0;
  int d = 0;
  if (text.size() != 10 || std::sscanf(std::string(text).c_str(), "%4d-%2d-%2d", &y, &m, &d) != 3 ||
      m < 1 || m > 12 || d < 1 || d > 31) {
    throw Error(ErrorCode::invalid_argument,
                "--cut: expected YYYY-MM-DD, got '" + std::string(text) + "'");
  }
  // days_from_civil (Howard Hinnant's algorithm).
  const int yy = y - (m <= 2 ? 1 : 0);
  const int era = (yy >= 0 ? yy : yy - 399) / 400;
  const int yoe = yy - era * 400;
  const int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return (static_cast<std::int64_t>(era) * 146097 + doe - 719468) * 86400;
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The FineRanker of "--fine none": the coarse score itself, so that the
// pipeline's ranking is the coarse stage's (a funnel without a fine stage).
class CoarseScoreRanker final : public FineRanker {
 public:
  [[nodiscard]] std::span<const std::string> objectives() const override { return names_; }
  [[nodiscard]] std::string name() const override { return "coarse score"; }
  void score(const UserContext& /*user*/, std::span<const Candidate> candidates,
             MatrixView<float> scores) const override {
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      // Fusion's weighted product needs scores >= 0: inner products of unit
      // vectors lie in [-1, 1].
      scores(i, 0) = candidates[i].coarse_score + 1.0F;
    }
  }

 private:
  std::vector<std::string> names_{"purchase"};
};

// Mean metrics of one method in one variant.
struct Scores {
  double recall50 = 0;
  double ndcg10 = 0;
  double recall10 = 0;
  std::size_t users = 0;
  bool present = false;

  void add(std::span<const ItemId> ranked, const std::unordered_set<ItemId>& relevant) {
    recall50 += recall_at_k(ranked, relevant, 50);
    ndcg10 += ndcg_at_k(ranked, relevant, 10);
    recall10 += recall_at_k(ranked, relevant, 10);
    ++users;
    present = true;
  }
  [[nodiscard]] Scores mean() const {
    Scores s = *this;
    if (users > 0) {
      const auto n = static_cast<double>(users);
      s.recall50 /= n;
      s.ndcg10 /= n;
      s.recall10 /= n;
    }
    return s;
  }
};

struct Row {
  std::string method;
  Scores all;
  Scores fresh;  // the "new" variant
};

// The first n items of `order` that `allowed` accepts.
template <class Allowed>
std::vector<ItemId> take(std::span<const ItemId> order, std::size_t n, Allowed allowed) {
  std::vector<ItemId> out;
  for (const ItemId id : order) {
    if (out.size() == n) break;
    if (allowed(id)) out.push_back(id);
  }
  return out;
}

std::string cell(const Scores& s, double value) {
  if (!s.present) return "—";
  std::array<char, 32> buf{};
  std::snprintf(buf.data(), buf.size(), "%.4f", value);
  return buf.data();
}

std::string ratio(double a, double b) {
  if (b <= 0) return "—";
  std::array<char, 32> buf{};
  std::snprintf(buf.data(), buf.size(), "%.2fx", a / b);
  return buf.data();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parse_args(argc, argv);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines show up through a pipe
    const auto t_start = Clock::now();
    const std::int64_t cut = parse_day(args.cut);

    // 1. Data.
    auto t = Clock::now();
    auto catalog = std::make_shared<Catalog>(Catalog::load_jsonl(args.data / "catalog.jsonl"));
    const std::vector<UserProfile> users = load_users_jsonl(args.data / "users.jsonl");
    const std::vector<Event> events = load_events_jsonl(args.data / "events.jsonl");
    std::vector<Event> train;
    std::vector<Event> test;
    for (const Event& e : events) {
      if (e.type != EventType::purchase || !catalog->contains(e.item)) continue;
      (e.ts < cut ? train : test).push_back(e);
    }
    if (train.empty() || test.empty()) {
      throw Error(ErrorCode::invalid_argument,
                  "--cut " + args.cut + " leaves no training or no test purchases");
    }
    std::printf(
        "loaded %zu items, %zu users, %zu events in %.1f s; cut %s: %zu training, %zu "
        "test purchases\n",
        catalog->size(), users.size(), events.size(), seconds_since(t), args.cut.c_str(),
        train.size(), test.size());

    std::printf(
        "settings: --dim %zu --coarse-k %zu --interests %zu --half-life-days %g --fine %s "
        "--negatives %zu --epochs %zu --history %zu --item-id %s --threads %zu --seed "
        "%llu\n",
        args.dim, args.coarse_k, args.interests, args.half_life_days, args.fine.c_str(),
        args.negatives, args.epochs, args.history_length, args.item_id ? "on" : "off", args.threads,
        static_cast<unsigned long long>(args.seed));

    // Histories before the cut (oldest first) and the test period's items.
    std::unordered_map<std::string, std::vector<HistoryEvent>> history =
        group_histories(train, cut);
    std::map<std::string, std::unordered_set<ItemId>> bought_later;  // ordered: stable runs
    std::unordered_map<std::string, std::vector<const Event*>> test_events_of;
    for (const Event& e : test) {
      bought_later[e.user].insert(e.item);
      test_events_of[e.user].push_back(&e);
    }
    std::unordered_map<std::string, const UserProfile*> profile_of;
    for (const UserProfile& u : users) profile_of.emplace(u.id, &u);

    // 2. Vectors, index.
    t = Clock::now();
    HashingEncoderConfig encoder_config;
    encoder_config.dim = args.dim;
    auto encoder = std::make_shared<HashingEncoder>(encoder_config);
    std::vector<std::string> titles;
    titles.reserve(catalog->size());
    for (const Item& item : catalog->items()) titles.push_back(item.title);
    catalog->set_vectors(encoder->encode(titles));
    auto coarse = std::make_shared<ExactCoarseRanker>(ExactCoarseRankerConfig{.dim = args.dim});
    coarse->add(catalog->vectors(), catalog->ids());
    std::printf("encoded and indexed %zu titles (%s, %s) in %.1f s\n", catalog->size(),
                encoder->name().c_str(), coarse->name().c_str(), seconds_since(t));

    // 3. Baselines' counts.
    std::unordered_map<ItemId, std::size_t> count;
    for (const Event& e : train) ++count[e.item];
    std::vector<ItemId> popular = catalog->ids();
    std::stable_sort(popular.begin(), popular.end(), [&](ItemId a, ItemId b) {
      const std::size_t ca = count.contains(a) ? count.at(a) : 0;
      const std::size_t cb = count.contains(b) ? count.at(b) : 0;
      return ca > cb || (ca == cb && a < b);
    });
    std::vector<std::size_t> popularity_rank(catalog->size());
    for (std::size_t r = 0; r < popular.size(); ++r) {
      popularity_rank[catalog->index_of(popular[r])] = r;
    }
    const std::size_t n_items = catalog->size();
    std::vector<std::uint32_t> co(n_items * n_items, 0);  // baskets holding both rows
    {
      std::map<std::pair<std::string, std::int64_t>, std::vector<std::size_t>> baskets;
      for (const Event& e : train) baskets[{e.user, e.ts}].push_back(catalog->index_of(e.item));
      for (auto& [key, rows] : baskets) {
        std::sort(rows.begin(), rows.end());
        rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
        for (const std::size_t a : rows) {
          for (const std::size_t b : rows) {
            if (a != b) ++co[a * n_items + b];
          }
        }
      }
      std::printf("co-purchase counts from %zu training baskets\n", baskets.size());
    }

    // 4. The fine stage and the pipeline.
    std::shared_ptr<const FineRanker> fine;
    if (args.fine == "deep") {
      t = Clock::now();
      DeepFineRankerTrainConfig config;
      config.model.tasks = {{"purchase", DeepTaskKind::binary, "", 1.0F, "purchase"}};
      config.model.fusion.weights = {{"purchase", 1.0F}};
      config.model.history_length = args.history_length;
      config.model.expert_hidden = {128, 64};
      config.model.tower_hidden = {32};
      config.features.user_categorical = {"location"};
      config.features.user_numeric = {"log_history_events"};
      config.features.item_categorical = {"category", "price_band"};
      if (args.item_id) config.features.item_categorical.emplace_back("attr:stock_code");
      config.features.item_numeric = {"coarse_score", "log_price", "log_popularity"};
      config.features.history_category = "category";
      config.examples.sampled_negatives = args.negatives;
      config.examples.seed = args.seed;
      config.train.max_epochs = args.epochs;
      config.train.patience = 1;
      config.train.threads = args.threads;
      config.train.seed = args.seed;
      DeepTrainReport report;
      fine = DeepFineRanker::train(catalog, train, users, config, &report);
      std::printf(
          "trained %s in %.1f s: %zu train / %zu validation examples, %zu epochs (best "
          "%zu), validation AUC %.4f, %.0f examples/s\n",
          fine->name().c_str(), seconds_since(t), report.train_examples, report.validation_examples,
          report.epochs, report.best_epoch, report.best_validation_auc, report.examples_per_second);
    } else {
      fine = std::make_shared<CoarseScoreRanker>();
    }
    PipelineConfig pc;
    pc.coarse_k = args.coarse_k;
    pc.top_n = 50;
    pc.interests = args.interests;
    pc.history_half_life_s = args.half_life_days * 86400.0;
    pc.explain = false;
    pc.fusion.weights = {{"purchase", 1.0F}};
    pc.exclude_purchased = false;
    const Pipeline with_repeats(catalog, encoder, coarse, fine, nullptr, pc);
    pc.exclude_purchased = true;
    const Pipeline without_repeats(catalog, encoder, coarse, fine, nullptr, pc);

    // 5. Evaluation.
    t = Clock::now();
    Row popularity_row{"popularity (training purchases)", {}, {}};
    Row copurchase_row{"co-purchase (item-to-item)", {}, {}};
    Row repeat_row{"repeat: own past items by count, then popularity", {}, {}};
    Row coarse_row{"coarse stage alone (exact IP, k=50)", {}, {}};
    Row funnel_row{
        args.fine == "deep"
            ? "funnel: coarse " + std::to_string(args.coarse_k) + " -> DeepFineRanker -> top 50"
            : "funnel: coarse " + std::to_string(args.coarse_k) + " -> no fine stage -> top 50",
        {},
        {}};
    std::size_t customers = 0;
    std::size_t test_purchases = 0;    // of the test customers
    std::size_t repeat_purchases = 0;  // of those, items the customer had bought before the cut
    double candidate_recall_all = 0;
    double candidate_recall_fresh = 0;
    double fine_ms = 0;
    std::size_t requests = 0;
    std::vector<float> score(n_items);
    std::vector<std::size_t> order(n_items);
    for (const auto& entry : bought_later) {
      // (Named references: lambdas below capture them, which C++20 does not
      // allow for structured bindings in every compiler.)
      const std::string& user = entry.first;
      const std::unordered_set<ItemId>& later = entry.second;
      const auto h = history.find(user);
      if (h == history.end() || h->second.empty()) continue;
      ++customers;
      UserContext ctx;
      const auto p = profile_of.find(user);
      if (p != profile_of.end()) ctx.profile = *p->second;
      ctx.profile.id = user;
      ctx.history = h->second;
      ctx.now_ts = cut;

      std::unordered_set<ItemId> past;
      std::unordered_map<ItemId, std::pair<std::size_t, std::int64_t>> past_count;  // n, last ts
      for (const HistoryEvent& e : ctx.history) {
        past.insert(e.item);
        auto& [n, last] = past_count[e.item];
        ++n;
        last = std::max(last, e.ts);
      }
      for (const Event* e : test_events_of[user]) {
        ++test_purchases;
        if (past.contains(e->item)) ++repeat_purchases;
      }
      std::unordered_set<ItemId> fresh;
      for (const ItemId id : later) {
        if (!past.contains(id)) fresh.insert(id);
      }
      const auto any = [](ItemId) { return true; };
      const auto unseen = [&](ItemId id) { return !past.contains(id); };
      const auto evaluate = [&](Row& row, std::span<const ItemId> all_order,
                                std::span<const ItemId> fresh_order) {
        row.all.add(all_order, later);
        if (!fresh.empty()) row.fresh.add(fresh_order, fresh);
      };

      // Popularity.
      evaluate(popularity_row, take(popular, 50, any), take(popular, 50, unseen));

      // Co-purchase: summed basket co-occurrence with the distinct past items.
      std::fill(score.begin(), score.end(), 0.0F);
      for (const ItemId id : past) {
        const std::size_t a = catalog->index_of(id);
        const std::uint32_t* co_row = &co[a * n_items];
        for (std::size_t b = 0; b < n_items; ++b) score[b] += static_cast<float>(co_row[b]);
      }
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::partial_sort(order.begin(),
                        order.begin() + static_cast<std::ptrdiff_t>(
                                            std::min<std::size_t>(n_items, 50 + past.size())),
                        order.end(), [&](std::size_t a, std::size_t b) {
                          return score[a] > score[b] ||
                                 (score[a] == score[b] && popularity_rank[a] < popularity_rank[b]);
                        });
      std::vector<ItemId> co_order;
      co_order.reserve(50 + past.size());
      for (std::size_t r = 0; r < std::min<std::size_t>(n_items, 50 + past.size()); ++r) {
        co_order.push_back(catalog->items()[order[r]].id);
      }
      evaluate(copurchase_row, take(co_order, 50, any), take(co_order, 50, unseen));

      // Repeat: the customer's own items by purchase count (then recency),
      // filled up with popularity; only meaningful in the "all" variant.
      std::vector<ItemId> own(past.begin(), past.end());
      std::sort(own.begin(), own.end(), [&](ItemId a, ItemId b) {
        const auto& ca = past_count.at(a);
        const auto& cb = past_count.at(b);
        return ca.first > cb.first || (ca.first == cb.first && ca.second > cb.second) ||
               (ca.first == cb.first && ca.second == cb.second && a < b);
      });
      for (const ItemId id : take(popular, 50, unseen)) own.push_back(id);
      repeat_row.all.add(take(own, 50, any), later);

      // Coarse stage alone: the pipeline's query vector(s), exact search.
      const Matrix<float> queries = with_repeats.user_vectors(ctx);
      const DenyListFilter deny(std::vector<ItemId>(past.begin(), past.end()));
      SearchParams params;
      std::vector<ItemId> coarse_all;
      std::vector<ItemId> coarse_fresh;
      for (const bool exclude : {false, true}) {
        params.filter = exclude ? &deny : nullptr;
        std::vector<ItemId>& out = exclude ? coarse_fresh : coarse_all;
        for (const MergedCandidate& c :
             search_merged(*coarse, queries.view(), 50, &params, MergeOrder::round_robin)) {
          out.push_back(c.id);
        }
      }
      evaluate(coarse_row, coarse_all, coarse_fresh);
      // The candidate set the fine stage sees: its recall bounds the funnel's.
      for (const bool exclude : {false, true}) {
        if (exclude && fresh.empty()) continue;
        params.filter = exclude ? &deny : nullptr;
        std::vector<ItemId> ids;
        for (const MergedCandidate& c : search_merged(*coarse, queries.view(), args.coarse_k,
                                                      &params, MergeOrder::round_robin)) {
          ids.push_back(c.id);
        }
        (exclude ? candidate_recall_fresh : candidate_recall_all) +=
            recall_at_k(ids, exclude ? fresh : later, args.coarse_k);
      }

      // The whole funnel.
      const Recommendation rec_all = with_repeats.recommend(ctx);
      std::vector<ItemId> funnel_all;
      for (const RecommendedItem& item : rec_all.items) funnel_all.push_back(item.id);
      fine_ms += rec_all.timings.fine_ms;
      ++requests;
      std::vector<ItemId> funnel_fresh;
      if (!fresh.empty()) {
        const Recommendation rec_fresh = without_repeats.recommend(ctx);
        for (const RecommendedItem& item : rec_fresh.items) funnel_fresh.push_back(item.id);
        fine_ms += rec_fresh.timings.fine_ms;
        ++requests;
      }
      evaluate(funnel_row, funnel_all, funnel_fresh);
    }
    std::printf(
        "evaluated %zu test customers (%zu with new items) in %.1f s; fine stage %.2f ms "
        "per request\n\n",
        customers, funnel_row.fresh.users, seconds_since(t),
        requests > 0 ? fine_ms / static_cast<double>(requests) : 0.0);

    // 6. The table (Markdown) and the ratios.
    std::printf(
        "| method | all: recall@50 | all: NDCG@10 | all: recall@10 | new: recall@50 | "
        "new: NDCG@10 | new: recall@10 |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (const Row* row :
         {&popularity_row, &copurchase_row, &repeat_row, &coarse_row, &funnel_row}) {
      const Scores a = row->all.mean();
      const Scores f = row->fresh.mean();
      std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", row->method.c_str(),
                  cell(a, a.recall50).c_str(), cell(a, a.ndcg10).c_str(),
                  cell(a, a.recall10).c_str(), cell(f, f.recall50).c_str(),
                  cell(f, f.ndcg10).c_str(), cell(f, f.recall10).c_str());
    }
    const Scores fa = funnel_row.all.mean();
    const Scores ff = funnel_row.fresh.mean();
    std::printf("\nfunnel / baseline (NDCG@10, recall@10):\n");
    for (const Row* row : {&popularity_row, &copurchase_row}) {
      const Scores a = row->all.mean();
      const Scores f = row->fresh.mean();
      std::printf("  vs %-32s all: %s, %s   new: %s, %s\n", row->method.c_str(),
                  ratio(fa.ndcg10, a.ndcg10).c_str(), ratio(fa.recall10, a.recall10).c_str(),
                  ratio(ff.ndcg10, f.ndcg10).c_str(), ratio(ff.recall10, f.recall10).c_str());
    }
    std::printf("\ncandidate recall@%zu (the coarse stage's whole list): all %.4f, new %.4f\n",
                args.coarse_k,
                candidate_recall_all / static_cast<double>(std::max<std::size_t>(customers, 1)),
                candidate_recall_fresh /
                    static_cast<double>(std::max<std::size_t>(funnel_row.fresh.users, 1)));
    std::printf(
        "test customers: %zu (all), %zu (new); %zu test purchases, %.1f%% of them "
        "repeat an item the customer bought before the cut; total time %.1f s\n",
        customers, funnel_row.fresh.users, test_purchases,
        100.0 * static_cast<double>(repeat_purchases) /
            static_cast<double>(std::max<std::size_t>(test_purchases, 1)),
        seconds_since(t_start));
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "bench_online_retail: error (%s): %s\n",
                 std::string(to_string(e.code())).c_str(), e.what());
    return 1;
  }
}
