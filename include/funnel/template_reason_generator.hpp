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
/// Template file (JSON): {"<locale>": {"<key>": "<text with {placeholders}>", ...}, ...}.
/// Keys and placeholders are documented in docs/reasons.md; the built-in
/// defaults are the file templates/reasons.json of the source tree.
///
/// Threading: immutable after construction; explain() may run concurrently.
/// The generator shares ownership of the catalogue and popularity stats.

#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

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
  std::string fallback_locale = "en";
  HistoryProfileConfig history;

  /// @throws Error(invalid_argument) naming the bad field.
  void validate() const;
};

class TemplateReasonGenerator final : public ReasonGenerator {
 public:
  /// @throws Error(io/format) for an unreadable or malformed template file
  ///         (missing keys, unknown placeholders, invalid UTF-8).
  TemplateReasonGenerator(std::shared_ptr<const Catalog> catalog,
                          std::shared_ptr<const Popularity> popularity,
                          TemplateReasonConfig config = {});

  [[nodiscard]] std::string name() const override { return "template"; }
  void explain(const UserContext& user, std::span<const ReasonInput> items,
               std::span<Reason> out) const override;

 private:
  std::shared_ptr<const Catalog> catalog_;
  std::shared_ptr<const Popularity> popularity_;
  TemplateReasonConfig config_;
  std::map<std::string, std::map<std::string, std::string>> templates_;  // locale -> key -> text
};

}  // namespace funnel
