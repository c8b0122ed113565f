// SPDX-License-Identifier: Apache-2.0
// The smallest complete funnel: a six-item catalogue in memory, funnel's own
// four stages, and one recommendation with reasons. Built and run as a test.
//
// Build: cmake --preset release && cmake --build --preset release --target quickstart
// Run:   ./build/examples/quickstart

#include <cstdio>
#include <funnel/funnel.hpp>
#include <memory>
#include <vector>

int main() {
  using namespace funnel;
  try {
    // 1. Catalogue (a host would use Catalog::load_jsonl).
    auto catalog = std::make_shared<Catalog>();
    catalog->add({.id = 1,
                  .title = "Stainless steel water bottle 500ml",
                  .category = "bottles",
                  .brand = "Zojo",
                  .price = 89.0});
    catalog->add({.id = 2,
                  .title = "Insulated steel water bottle 750ml",
                  .category = "bottles",
                  .brand = "Zojo",
                  .price = 109.0});
    catalog->add({.id = 3,
                  .title = "女士 真丝 连衣裙 夏季",
                  .category = "dresses",
                  .brand = "Lanyu",
                  .price = 399.0});
    catalog->add({.id = 4,
                  .title = "夏季 碎花 连衣裙 女",
                  .category = "dresses",
                  .brand = "Lanyu",
                  .price = 259.0});
    catalog->add({.id = 5,
                  .title = "Kids breathable running shoes",
                  .category = "shoes",
                  .brand = "Fleet",
                  .price = 199.0});
    catalog->add({.id = 6,
                  .title = "Lightweight running shoes for men",
                  .category = "shoes",
                  .brand = "Fleet",
                  .price = 329.0});

    // 2. Encode the item titles and index the vectors.
    auto encoder = std::make_shared<HashingEncoder>();
    std::vector<std::string> titles;
    for (const Item& item : catalog->items()) titles.push_back(item.title);
    catalog->set_vectors(encoder->encode(titles));
    auto index =
        std::make_shared<ExactCoarseRanker>(ExactCoarseRankerConfig{.dim = encoder->dim()});
    const std::vector<ItemId> ids = catalog->ids();
    index->add(catalog->vectors(), ids);

    // 3. A behaviour log to learn from: six users, two per category, see
    //    every item; each clicks (and sometimes buys) in their own category.
    const std::vector<std::string> taste = {"bottles", "dresses", "shoes"};
    std::vector<UserProfile> users;
    users.reserve(6);
    std::vector<Event> events;
    std::int64_t ts = 1767225600;
    for (int u = 0; u < 6; ++u) {
      users.push_back({.id = "u" + std::to_string(u),
                       .age = 25 + u,
                       .location = u % 2 == 0 ? "Shanghai" : "Beijing"});
    }
    for (int round = 0; round < 20; ++round) {
      for (int u = 0; u < 6; ++u) {
        for (ItemId item : ids) {
          const std::string& user = users[static_cast<std::size_t>(u)].id;
          const bool liked = catalog->at(item).category == taste[static_cast<std::size_t>(u % 3)];
          events.push_back({.user = user, .item = item, .type = EventType::view, .ts = ts});
          if (liked && (round + item) % 3 != 0) {
            events.push_back({.user = user,
                              .item = item,
                              .type = EventType::click,
                              .dwell_s = 20.0 + static_cast<double>(item),
                              .ts = ts + 5});
            if ((round + item + u) % 4 == 0) {
              events.push_back(
                  {.user = user, .item = item, .type = EventType::purchase, .ts = ts + 60});
            }
          }
          ts += 120;
        }
      }
    }
    LogisticTrainConfig train;
    train.validation_fraction = 0.2;
    std::shared_ptr<const FineRanker> fine =
        LogisticFineRanker::train(catalog, events, users, train);
    auto popularity =
        std::make_shared<Popularity>(Popularity::from_events(*catalog, events, users));
    auto reasons = std::make_shared<TemplateReasonGenerator>(catalog, popularity);

    // 4. The pipeline, and a request for a bottle lover who just clicked a bottle.
    PipelineConfig config;
    config.coarse_k = 6;
    config.top_n = 3;
    const Pipeline pipeline(catalog, encoder, index, fine, reasons, config);
    UserContext user;
    user.profile = users[0];
    user.locale = "en";
    user.now_ts = ts + 86400;
    user.history = {{.item = 1, .type = EventType::click, .ts = ts}};
    const Recommendation rec = pipeline.recommend(user);

    std::printf("top %zu of %zu candidates (ctr, cvr, dwell -> score):\n", rec.items.size(),
                rec.candidates);
    for (const RecommendedItem& item : rec.items) {
      std::printf("  %-36s %.3f %.3f %5.1fs -> %.5f  | %s\n", catalog->at(item.id).title.c_str(),
                  item.objective_scores[0], item.objective_scores[1], item.objective_scores[2],
                  item.score, item.reason.text.c_str());
    }
    // The bottles this user cares about must come first.
    return !rec.items.empty() && catalog->at(rec.items[0].id).category == "bottles" ? 0 : 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "quickstart: %s\n", e.what());
    return 1;
  }
}
