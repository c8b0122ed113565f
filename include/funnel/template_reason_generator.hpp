// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// TemplateReasonGenerator: grounded reasons from templates, in zh-CN and en
/// (and any locale a template file adds).
///
/// For each item it collects the evidence that actually holds (a similar item
/// in the history with its event type and time; a category or brand the user
/// engages with; a price band the user buys in; the category's popularity in
/// the user's location; the objective that ranked the item), picks the
/// strongest, and fills the matching template. It never states a fact the
/// evidence does not hold: "you bought" only for a purchase event, "last week"
/// only for an event 7-14 days before the request, "popular in X in Y" only
/// when X ranks in the top categories of location Y.
///
/// Evidence rules, in priority order (the first that holds is the strongest):
///  1. similar_to_history: the history item most similar to the candidate
///     (HistoryProfile::most_similar, the candidate itself excluded) has
///     similarity >= min_similarity. Fields: history_item, history_type,
///     history_ts, value = similarity.
///  2. brand_affinity: the item's brand has HistoryProfile::brand_share >=
///     min_brand_share. Fields: brand, value = share.
///  3. category_affinity: the item's category has category_share >=
///     min_category_share. Fields: category, value = share.
///  4. popular_in_location: the user's profile location is known and the
///     item's category ranks <= max_location_rank there
///     (Popularity::category_rank_in_location). Fields: category, location,
///     value = rank.
///  5. price_band: the profile has a price band and the item a price > 0, and
///     |log(price) - mean_log_price| <= std_log_price. Fields: value =
///     |log(price) - mean| / std (0 when std is 0).
///  6. objective: among the objectives of the batch that have a template
///     ("objective.<name>") in the locale, the one where this item's score is
///     furthest above the batch mean in batch standard deviations (z-score),
///     when that z-score is >= min_objective_z. Needs >= 2 items carrying the
///     objective and a non-zero spread. Fields: objective, value = the score.
///  7. none: nothing above holds.
/// Time phrases ("when.*" keys) come from age = now_ts - history_ts: today
/// (< 1 day), yesterday (1-2 days), this_week (2-7), last_week (7-14),
/// recently (14-30), earlier (>= 30). An unset now_ts (0) means the latest
/// history timestamp, as in HistoryProfile.
/// Variety: items are handled in input (rank) order; once a reason (same kind
/// and same subject: history item, brand, category, location+category,
/// objective) has been given max_same_reason times in the batch, the next
/// holding evidence in priority order is used instead, if there is one.
///
/// Template file (JSON): {"<locale>": {"<key>": "<text with {placeholders}>", ...}, ...}.
/// Keys and placeholders are documented in docs/reasons.md; the built-in
/// defaults are the file src/templates/reasons.json of the source tree.
///
/// Locale resolution (case-insensitive, '_' read as '-'): an exact match;
/// else a template locale with the same language subtag ("zh" -> "zh-CN",
/// "en-GB" -> "en"; a language-only locale is preferred, then the first in
/// sorted order); else fallback_locale. Reason::locale is the template locale
/// used, spelled as in the file.
///
/// Threading: immutable after construction; explain() may run concurrently.
/// The generator shares ownership of the catalogue and popularity stats.

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/history_profile.hpp"
#include "funnel/popularity.hpp"
#include "funnel/reason_generator.hpp"

namespace funnel {

/// Settings of a TemplateReasonGenerator.
struct TemplateReasonConfig {
  /// Template file; empty uses the built-in templates.
  std::filesystem::path templates;
  float min_similarity = 0.5F;        ///< similar_to_history needs at least this similarity
  double min_category_share = 0.25;   ///< category_affinity needs at least this share
  double min_brand_share = 0.2;       ///< brand_affinity needs at least this share
  std::size_t max_location_rank = 3;  ///< popular_in_location needs a rank <= this
  /// objective evidence needs the item's score at least this many batch
  /// standard deviations above the batch mean.
  double min_objective_z = 1.0;
  /// A reason (same kind and subject) is given at most this many times per
  /// batch while another holding evidence is available; 0 turns variety off.
  std::size_t max_same_reason = 3;
  /// Titles longer than this many characters (grapheme clusters) are
  /// shortened to max_title_chars - 1 characters plus an ellipsis.
  std::size_t max_title_chars = 24;
  std::string fallback_locale = "en";
  HistoryProfileConfig history;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

/// Template-based ReasonGenerator; see the file comment for the evidence rules.
class TemplateReasonGenerator final : public ReasonGenerator {
 public:
  /// @param[in] catalog    items looked up by id; must not be null
  /// @param[in] popularity popularity stats; may be null (then no
  ///                       popular_in_location evidence)
  /// @param[in] config     settings, validated here
  /// @throws Error(invalid_argument) for a bad config, a null catalog, or a
  ///         fallback_locale the templates do not provide;
  ///         Error(io) for an unreadable template file;
  ///         Error(format) for a malformed one (not JSON, invalid UTF-8,
  ///         missing or unknown keys, unknown placeholders), naming the file,
  ///         locale and key.
  TemplateReasonGenerator(std::shared_ptr<const Catalog> catalog,
                          std::shared_ptr<const Popularity> popularity,
                          TemplateReasonConfig config = {});

  [[nodiscard]] std::string name() const override { return "template"; }

  /// One reason per item; see ReasonGenerator::explain. Also throws
  /// Error(invalid_argument) when an item's objective_names and
  /// objective_scores differ in size or a score is not finite.
  void explain(const UserContext& user, std::span<const ReasonInput> items,
               std::span<Reason> out) const override;

  /// All evidence that holds for each item, strongest first (the priority
  /// order of the file comment); explain() picks one reason per item from
  /// these. Objective evidence depends on the templates of user.locale.
  /// @return items.size() lists; an empty list means no evidence (a generic reason)
  /// @throws Error(invalid_argument) as explain() does for bad items.
  [[nodiscard]] std::vector<std::vector<Evidence>> collect_evidence(
      const UserContext& user, std::span<const ReasonInput> items) const;

  /// The template locale used for a requested locale (see the file comment).
  [[nodiscard]] const std::string& resolve_locale(std::string_view requested) const;

  /// Locales the templates provide, sorted.
  [[nodiscard]] std::vector<std::string> locales() const;

  /// The settings in use.
  [[nodiscard]] const TemplateReasonConfig& config() const noexcept { return config_; }

 private:
  using LocaleTemplates = std::map<std::string, std::string, std::less<>>;  // key -> text

  [[nodiscard]] const std::string* match_locale(std::string_view requested) const;

  std::shared_ptr<const Catalog> catalog_;
  std::shared_ptr<const Popularity> popularity_;
  TemplateReasonConfig config_;
  std::map<std::string, LocaleTemplates, std::less<>> templates_;  // locale -> key -> text
  std::string fallback_;  // template locale that fallback_locale resolves to
};

}  // namespace funnel
