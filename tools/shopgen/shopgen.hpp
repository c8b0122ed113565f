// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// A deterministic, seeded generator of a synthetic shop (catalogue, users
/// and behaviour events in funnel's formats) whose events are drawn from a
/// known ground-truth model, so that demos and benchmarks can measure the
/// quality of a ranking against the truth.
///
/// Determinism: the same ShopConfig gives the same Shop and byte-identical
/// files on every platform. Only std::mt19937_64 (whose output the C++
/// standard specifies) is used as a bit source; every distribution is
/// implemented here. Each part of the shop draws from its own stream
/// (seeded from `seed` and the part's name and index), so that, for example,
/// the catalogue does not change when only the number of users changes.
///
/// The model (every term of p_click, p_purchase, dwell and the exposure
/// mixture) is documented in docs/shopgen.md.
///
/// Threading: generate_shop(), write_shop() and true_scores() are pure
/// functions of their arguments and may run concurrently on different (or
/// the same const) inputs.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/matrix.hpp"
#include "funnel/user.hpp"

namespace funnel::shopgen {

/// Coefficients of the ground-truth behaviour model (see docs/shopgen.md for
/// the formulas they enter). The defaults give a click-through rate of about
/// 5% of impressions and a conversion of about 10% of clicks.
struct ModelParams {
  // Click: logit = click_bias + click_interest*z_click + click_affinity*affinity
  //              + click_quality*quality + click_loyalty*loyalty
  //              - click_price*price_sensitivity*(over + price_under_weight*under)
  double click_bias = -4.9;          ///< intercept of the click logit
  double click_interest = 1.0;       ///< weight of the standardised latent match z_click
  double click_affinity = 0.8;       ///< weight of the demographic category affinity
  double click_quality = 0.35;       ///< weight of item quality
  double click_loyalty = 1.2;        ///< weight of loyalty (user's loyalty, favourite brand only)
  double click_price = 0.5;          ///< weight of the price mismatch
  double price_under_weight = 0.25;  ///< how much being far *below* budget hurts, vs. above

  // Purchase given click: logit = purchase_bias
  //   + purchase_interest*(rho*z_click + sqrt(1-rho^2)*z_buy)
  //   + purchase_quality*quality + purchase_loyalty*loyalty
  //   - purchase_price*price_sensitivity*over;  0 when out of stock.
  double purchase_bias = -2.9;     ///< intercept of the purchase logit
  double purchase_interest = 0.6;  ///< weight of the mixed click/purchase match
  double purchase_quality = 0.5;   ///< weight of item quality
  double purchase_loyalty = 1.5;   ///< weight of loyalty
  double purchase_price = 1.2;     ///< weight of the price excess over budget

  // Dwell: ln(dwell_s) ~ Normal(mu, dwell_sigma), clamped to [dwell_min_s, dwell_max_s],
  // mu = ln(dwell_median_s) + category offset + dwell_interest*z_click
  //    + dwell_quality*quality + dwell_affinity*affinity
  double dwell_median_s = 25.0;  ///< median dwell of a neutral click, seconds
  double dwell_sigma = 0.7;      ///< spread of ln(dwell)
  double dwell_interest = 0.25;  ///< weight of z_click
  double dwell_quality = 0.2;    ///< weight of item quality
  double dwell_affinity = 0.15;  ///< weight of the category affinity
  double dwell_min_s = 2.0;      ///< lower clamp, seconds
  double dwell_max_s = 600.0;    ///< upper clamp, seconds

  // Carts: a purchase is preceded by a cart with probability cart_before_purchase;
  // a click without purchase leaves an abandoned cart with probability
  // min(cart_abandon_max, cart_abandon_scale * p_purchase).
  double cart_before_purchase = 0.8;  ///< P(cart | purchase)
  double cart_abandon_scale = 1.0;    ///< abandoned carts grow with purchase intent
  double cart_abandon_max = 0.5;      ///< cap of P(cart | click, no purchase)
};

/// What to generate. Plain struct with defaults; call validate() (generate_shop does).
struct ShopConfig {
  std::size_t items = 3000;  ///< catalogue size
  std::size_t users = 2000;  ///< number of users
  std::size_t days = 30;     ///< simulated days
  /// Mean sessions per user per day (scaled per user by an activity factor).
  double sessions_per_user_per_day = 0.45;
  /// Mean impressions per session (Poisson, at least 1).
  std::size_t impressions_per_session = 8;
  std::uint64_t seed = 1;  ///< the one source of randomness
  /// Correlation in [-1, 1] between the pair-specific drivers of click and
  /// purchase (rho in the purchase logit): 1 = the user buys what they like to
  /// click, 0 = purchase interest is independent of click interest.
  double task_correlation = 0.3;
  std::int64_t start_ts = 1767225600;   ///< first simulated day, Unix seconds (2026-01-01 UTC)
  std::size_t categories = 14;          ///< how many of the built-in categories to use (1..14)
  std::size_t brands_per_category = 6;  ///< brands in each category (1..20)
  std::size_t latent_dim = 16;          ///< dimension of the click taste/item latent space
  std::size_t purchase_latent_dim = 8;  ///< dimension of the purchase-only latent space

  /// Exposure mixture of the feed: relative weights of the four sources an
  /// impression slot is filled from (normalised; the sum must be > 0).
  double exposure_popular = 0.30;    ///< global popularity
  double exposure_preferred = 0.35;  ///< popular items of the user's preferred categories
  double exposure_similar = 0.20;    ///< items like one of the user's recent clicks
  double exposure_random = 0.15;     ///< uniformly random items

  ModelParams model;  ///< ground-truth coefficients

  /// @throws Error(invalid_argument) naming the first field out of range
  ///         (e.g. "ShopConfig.items must be >= 1, got 0").
  void validate() const;
};

/// Where an impression came from (the exposure mixture).
enum class ExposureSource : std::uint8_t { popular = 0, preferred = 1, similar = 2, random = 3 };

/// "popular", "preferred", "similar" or "random".
const char* to_string(ExposureSource source) noexcept;

/// Ground truth of one category.
struct CategoryTruth {
  std::string key;                  ///< stable English key, the catalogue's `category` ("phones")
  std::string name_zh;              ///< display name in Chinese ("手机")
  std::string name_en;              ///< display name in English ("Phones")
  double share = 1.0;               ///< relative number of catalogue items
  double median_price = 0.0;        ///< median price (CNY) of a brand with premium 0
  double price_sigma = 0.0;         ///< spread of ln(price) within a brand
  double dwell_offset = 0.0;        ///< added to mu of ln(dwell)
  double gender_f = 0.0;            ///< affinity of female users
  double gender_m = 0.0;            ///< affinity of male users
  double age_slope = 0.0;           ///< affinity per 15 years above 35
  std::vector<std::size_t> brands;  ///< indices into Truth::brands
};

/// Ground truth of one brand.
struct BrandTruth {
  std::string name;                 ///< as written in the catalogue
  std::size_t category = 0;         ///< index into Truth::categories
  double quality = 0.0;             ///< mean quality of its items
  double price_premium = 0.0;       ///< added to ln(price)
  double share = 0.0;               ///< share of its category's items and favourites (sums to 1)
  std::vector<std::string> series;  ///< product-line words used in its titles
};

/// Ground truth of one item (row r belongs to catalog.items()[r]).
struct ItemTruth {
  std::size_t category = 0;      ///< index into Truth::categories
  std::size_t brand = 0;         ///< index into Truth::brands
  double quality = 0.0;          ///< quality scalar (about N(0, 0.64))
  double popularity = 0.0;       ///< exposure weight (> 0)
  double log_price_ratio = 0.0;  ///< ln(price / category median price)
  bool in_stock = true;          ///< out-of-stock items are never bought
};

/// Ground truth of one user (index u belongs to users[u]).
struct UserTruth {
  int age = 0;                                    ///< the (always known) age
  std::size_t gender = 2;                         ///< 0 = f, 1 = m, 2 = unknown
  std::size_t location = 0;                       ///< index into Truth::locations
  std::vector<std::size_t> preferred_categories;  ///< 1..3 category indices
  std::vector<double> preference_weights;         ///< mixture weights (sum 1)
  std::vector<std::size_t> favorite_brands;       ///< one per preferred category
  double price_sensitivity = 1.0;                 ///< multiplies the price mismatch
  double budget = 0.0;                            ///< preferred ln(price / category median)
  double brand_loyalty = 0.0;                     ///< in [0, 1]
  double activity = 1.0;                          ///< multiplies sessions_per_user_per_day
};

/// One impression (a `view` event) with its true click probability.
struct Impression {
  std::size_t event = 0;                            ///< index of the view in Shop::events
  std::uint32_t user = 0;                           ///< user index
  std::uint32_t item = 0;                           ///< item row
  double p_click = 0.0;                             ///< the probability the click was drawn with
  bool clicked = false;                             ///< whether a click followed
  bool purchased = false;                           ///< whether a purchase followed the click
  ExposureSource source = ExposureSource::popular;  ///< exposure mixture component
};

/// Everything the model knows that the observable files do not say directly.
struct Truth {
  std::vector<std::string> locations;    ///< city names, as in users.jsonl
  std::vector<double> location_weights;  ///< share of users per city (sums to 1)
  /// Category affinity bias per city: locations.size() x categories.size().
  Matrix<double> location_bias;
  std::vector<CategoryTruth> categories;  ///< the categories in use
  std::vector<BrandTruth> brands;         ///< all brands
  std::vector<ItemTruth> items;           ///< one per catalogue row
  std::vector<UserTruth> users;           ///< one per user
  Matrix<float> item_latent;              ///< items x latent_dim
  Matrix<float> user_latent;              ///< users x latent_dim
  Matrix<float> item_purchase_latent;     ///< items x purchase_latent_dim
  Matrix<float> user_purchase_latent;     ///< users x purchase_latent_dim
  /// Mean and standard deviation of <user_latent, item_latent> over random
  /// pairs; z_click = (dot - interest_mean) / interest_sd.
  double interest_mean = 0.0;
  double interest_sd = 1.0;
  /// Same for the purchase latents; z_buy = (dot - purchase_mean) / purchase_sd.
  double purchase_mean = 0.0;
  double purchase_sd = 1.0;
  std::vector<Impression> impressions;  ///< every view, in Shop::events order
};

/// A generated shop. Item ids are 100001, 100002, ... in catalogue order;
/// user ids are "u1", "u2", ... in users order.
struct Shop {
  ShopConfig config;               ///< what it was generated from
  Catalog catalog;                 ///< the items
  std::vector<UserProfile> users;  ///< observable profiles
  /// All events, sorted by ts, then user id, then item id, then type.
  std::vector<Event> events;
  Truth truth;  ///< the ground truth the events were drawn from
};

/// The true behaviour of one user towards one item.
struct TrueScores {
  double p_click = 0.0;                 ///< P(click | impression)
  double p_purchase_given_click = 0.0;  ///< P(purchase | click)
  double dwell_s = 0.0;                 ///< E[dwell_s | click], seconds (before 0.1 s rounding)
};

/// Generates a shop. Validates the config first.
/// @throws Error(invalid_argument) from ShopConfig::validate().
Shop generate_shop(const ShopConfig& config);

/// Writes the shop to `dir` (created if needed): catalog.jsonl, users.jsonl,
/// events.jsonl, and under truth/: params.json (config, model parameters,
/// categories, brands, locations, summary statistics), item_truth.jsonl,
/// user_truth.jsonl, item_latent.npy, user_latent.npy,
/// item_purchase_latent.npy, user_purchase_latent.npy. Every file is written
/// atomically.
/// @throws Error(io) when a file cannot be written.
void write_shop(const Shop& shop, const std::filesystem::path& dir);

/// The true click / purchase probabilities and expected dwell of a pair.
/// @param[in] user_index index into shop.users
/// @param[in] item_row   row in shop.catalog.items()
/// @throws Error(invalid_argument) when an index is out of range.
TrueScores true_scores(const Shop& shop, std::size_t user_index, std::size_t item_row);

}  // namespace funnel::shopgen
