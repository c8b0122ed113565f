// SPDX-License-Identifier: Apache-2.0
#include "funnel/template_reason_generator.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"
#include "internal/utf8.hpp"
#include "reason_templates.hpp"

namespace funnel {
namespace {

constexpr std::int64_t kDay = 86400;
constexpr std::string_view kBuiltinName = "<built-in reason templates>";
constexpr std::string_view kObjectivePrefix = "objective.";
constexpr std::string_view kEllipsis = "\u2026";

// Placeholders, as bits so that each key can say which it may use.
enum Placeholder : unsigned {
  kTitle = 1U << 0U,
  kHistoryTitle = 1U << 1U,
  kVerb = 1U << 2U,
  kWhen = 1U << 3U,
  kCategory = 1U << 4U,
  kBrand = 1U << 5U,
  kLocation = 1U << 6U,
};

struct PlaceholderName {
  std::string_view name;
  Placeholder bit;
};

constexpr std::array<PlaceholderName, 7> kPlaceholders = {{
    {"title", kTitle},
    {"history_title", kHistoryTitle},
    {"verb", kVerb},
    {"when", kWhen},
    {"category", kCategory},
    {"brand", kBrand},
    {"location", kLocation},
}};

struct KeySpec {
  std::string_view key;
  unsigned allowed;  // Placeholder bits
};

// Every locale must define all of these. "objective.<name>" keys beyond the
// three default objectives are optional (they enable objective evidence for
// a host's own objectives).
constexpr std::array<KeySpec, 19> kRequiredKeys = {{
    {"similar_to_history", kTitle | kHistoryTitle | kVerb | kWhen},
    {"category_affinity", kTitle | kCategory},
    {"brand_affinity", kTitle | kBrand},
    {"price_band", kTitle},
    {"popular_in_location", kTitle | kCategory | kLocation},
    {"objective.ctr", kTitle},
    {"objective.cvr", kTitle},
    {"objective.dwell", kTitle},
    {"none", kTitle},
    {"verb.view", 0},
    {"verb.click", 0},
    {"verb.cart", 0},
    {"verb.purchase", 0},
    {"when.today", 0},
    {"when.yesterday", 0},
    {"when.this_week", 0},
    {"when.last_week", 0},
    {"when.recently", 0},
    {"when.earlier", 0},
}};

std::optional<Placeholder> placeholder_by_name(std::string_view name) {
  for (const auto& p : kPlaceholders) {
    if (p.name == name) return p.bit;
  }
  return std::nullopt;
}

std::string placeholder_list(unsigned allowed) {
  std::string s;
  for (const auto& p : kPlaceholders) {
    if ((allowed & p.bit) == 0) continue;
    if (!s.empty()) s += ", ";
    s += detail::cat("{", p.name, "}");
  }
  return s.empty() ? std::string("none") : s;
}

// The placeholders a key may use, or nullopt for a key that is not known.
std::optional<unsigned> allowed_placeholders(std::string_view key) {
  for (const auto& spec : kRequiredKeys) {
    if (spec.key == key) return spec.allowed;
  }
  if (key.size() > kObjectivePrefix.size() && key.starts_with(kObjectivePrefix)) return kTitle;
  return std::nullopt;
}

// Checks the placeholders of one template text; errors name where it is.
void check_template_text(std::string_view text, unsigned allowed, const std::string& where) {
  if (text.empty()) detail::fail(ErrorCode::format, where, ": empty text");
  std::size_t pos = 0;
  while ((pos = text.find('{', pos)) != std::string_view::npos) {
    const std::size_t close = text.find('}', pos + 1);
    if (close == std::string_view::npos) {
      detail::fail(ErrorCode::format, where, ": unterminated placeholder at byte ", pos,
                   " (a '{' must start a placeholder such as {title})");
    }
    const std::string_view name = text.substr(pos + 1, close - pos - 1);
    const auto bit = placeholder_by_name(name);
    if (!bit) {
      detail::fail(ErrorCode::format, where, ": unknown placeholder {", name,
                   "} (known: ", placeholder_list(~0U), ")");
    }
    if ((allowed & *bit) == 0) {
      detail::fail(ErrorCode::format, where, ": placeholder {", name,
                   "} is not available for this key (available: ", placeholder_list(allowed), ")");
    }
    pos = close + 1;
  }
}

std::size_t line_of(std::string_view bytes, std::size_t offset) {
  return 1 + static_cast<std::size_t>(std::count(
                 bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(offset), '\n'));
}

using LocaleTemplates = std::map<std::string, std::string, std::less<>>;
using Templates = std::map<std::string, LocaleTemplates, std::less<>>;

// Parses and validates a template file's contents; `source` names it in errors.
Templates parse_templates(std::string_view bytes, const std::string& source) {
  if (const auto bad = detail::find_invalid_utf8(bytes)) {
    detail::fail(ErrorCode::format, source, ": invalid UTF-8 at byte ", *bad, " (line ",
                 line_of(bytes, *bad), ")");
  }
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(bytes.begin(), bytes.end());
  } catch (const nlohmann::json::parse_error& e) {
    detail::fail(ErrorCode::format, source, ": not valid JSON: ", e.what());
  }
  if (!doc.is_object() || doc.empty()) {
    detail::fail(ErrorCode::format, source,
                 ": expected an object {\"<locale>\": {\"<key>\": \"<text>\", ...}, ...} with at "
                 "least one locale, got ",
                 doc.type_name());
  }
  Templates result;
  for (const auto& [locale, entries] : doc.items()) {
    if (locale.empty()) detail::fail(ErrorCode::format, source, ": empty locale name");
    if (!entries.is_object()) {
      detail::fail(ErrorCode::format, source, ": locale '", locale,
                   "': expected an object of key -> text, got ", entries.type_name());
    }
    LocaleTemplates texts;
    for (const auto& [key, value] : entries.items()) {
      const std::string where = detail::cat(source, ": locale '", locale, "': key '", key, "'");
      const auto allowed = allowed_placeholders(key);
      if (!allowed) {
        detail::fail(ErrorCode::format, where,
                     ": unknown key (see docs/reasons.md for the template keys)");
      }
      if (!value.is_string()) {
        detail::fail(ErrorCode::format, where, ": expected a string, got ", value.type_name());
      }
      auto text = value.get<std::string>();
      check_template_text(text, *allowed, where);
      texts.emplace(key, std::move(text));
    }
    for (const auto& spec : kRequiredKeys) {
      if (!texts.contains(spec.key)) {
        detail::fail(ErrorCode::format, source, ": locale '", locale, "': missing key '", spec.key,
                     "'");
      }
    }
    result.emplace(locale, std::move(texts));
  }
  return result;
}

// Lower case, '_' read as '-': BCP-47 tags compare case-insensitively.
std::string normalize_locale(std::string_view locale) {
  std::string s(locale);
  for (char& c : s) {
    if (c == '_') c = '-';
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

std::string_view language_of(std::string_view normalized) {
  return normalized.substr(0, normalized.find('-'));
}

// Shortens a title to at most max_chars grapheme clusters, ending in an
// ellipsis when cut. Cuts only between clusters, hence never inside a code
// point (nor between a letter and its combining marks).
std::string shorten_title(std::string_view title, std::size_t max_chars) {
  assert(max_chars >= 2);
  std::size_t pos = 0;
  std::size_t clusters = 0;
  std::size_t keep_end = 0;  // byte end of the first max_chars - 1 clusters
  utf8proc_int32_t state = 0;
  std::optional<char32_t> prev;
  while (pos < title.size()) {
    const std::size_t start = pos;
    const auto cp = detail::decode_utf8(title, pos);
    if (!cp) {
      // Catalog validates titles; should one still be broken, cut before it.
      keep_end = (clusters < max_chars) ? start : keep_end;
      clusters = max_chars + 1;
      break;
    }
    const bool boundary =
        !prev || utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(*prev),
                                                  static_cast<utf8proc_int32_t>(*cp), &state);
    prev = cp;
    if (boundary) {
      if (clusters == max_chars - 1) keep_end = start;
      ++clusters;
    }
  }
  if (clusters <= max_chars) return std::string(title);
  std::string_view kept = title.substr(0, keep_end);
  while (!kept.empty() && (kept.back() == ' ' || kept.back() == '\t')) kept.remove_suffix(1);
  std::string out(kept);
  out += kEllipsis;
  return out;
}

// The request time as HistoryProfile sees it: an unset now_ts (0) means the
// latest history timestamp. Time phrases must use the same clock as the
// profile, or "today" could describe an event the profile dated otherwise.
std::int64_t request_now(const UserContext& user) {
  if (user.now_ts != 0) return user.now_ts;
  std::int64_t now = std::numeric_limits<std::int64_t>::min();
  for (const HistoryEvent& event : user.history) now = std::max(now, event.ts);
  return now;
}

// Template key of the time phrase for an event `age_s` seconds old.
std::string_view when_key(std::int64_t age_s) {
  if (age_s < kDay) return "when.today";
  if (age_s < 2 * kDay) return "when.yesterday";
  if (age_s < 7 * kDay) return "when.this_week";
  if (age_s < 14 * kDay) return "when.last_week";
  if (age_s < 30 * kDay) return "when.recently";
  return "when.earlier";
}

std::string_view verb_key(EventType type) {
  switch (type) {
    case EventType::view: return "verb.view";
    case EventType::click: return "verb.click";
    case EventType::cart: return "verb.cart";
    case EventType::purchase: return "verb.purchase";
  }
  return "verb.view";
}

// Values substituted into a template.
struct Fill {
  std::string title;
  std::string history_title;
  std::string_view verb;
  std::string_view when;
  std::string_view category;
  std::string_view brand;
  std::string_view location;
};

// Substitutes placeholders in one pass, so that a title containing "{brand}"
// is copied verbatim rather than expanded. The text was validated on load.
std::string render(std::string_view text, const Fill& fill) {
  std::string out;
  out.reserve(text.size() + 32);
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t open = text.find('{', pos);
    if (open == std::string_view::npos) {
      out.append(text.substr(pos));
      break;
    }
    out.append(text.substr(pos, open - pos));
    const std::size_t close = text.find('}', open + 1);
    assert(close != std::string_view::npos);
    const auto bit = placeholder_by_name(text.substr(open + 1, close - open - 1));
    assert(bit);
    switch (bit.value_or(kTitle)) {
      case kTitle: out += fill.title; break;
      case kHistoryTitle: out += fill.history_title; break;
      case kVerb: out += fill.verb; break;
      case kWhen: out += fill.when; break;
      case kCategory: out += fill.category; break;
      case kBrand: out += fill.brand; break;
      case kLocation: out += fill.location; break;
    }
    pos = close + 1;
  }
  return out;
}

// Batch mean and (population) standard deviation of one objective.
struct ObjectiveStats {
  double sum = 0.0;
  double sum_sq = 0.0;
  std::size_t count = 0;
  [[nodiscard]] double mean() const { return sum / static_cast<double>(count); }
  [[nodiscard]] double stddev() const {
    const double m = mean();
    return std::sqrt(std::max(0.0, sum_sq / static_cast<double>(count) - m * m));
  }
};

// What makes two reasons the same text: the kind and its subject.
std::string reason_signature(const Evidence& e) {
  switch (e.kind) {
    case EvidenceKind::similar_to_history: return detail::cat("similar:", e.history_item);
    case EvidenceKind::category_affinity: return "category:" + e.category;
    case EvidenceKind::brand_affinity: return "brand:" + e.brand;
    case EvidenceKind::popular_in_location: return "location:" + e.location + "\n" + e.category;
    case EvidenceKind::price_band: return "price";
    case EvidenceKind::objective: return "objective:" + e.objective;
    case EvidenceKind::none: return "none";
  }
  return "none";
}

}  // namespace

void TemplateReasonConfig::validate() const {
  detail::require(
      std::isfinite(min_similarity) && min_similarity >= -1.0F && min_similarity <= 1.0F,
      "TemplateReasonConfig.min_similarity must be in [-1, 1], got ", min_similarity);
  detail::require(min_category_share >= 0.0 && min_category_share <= 1.0,
                  "TemplateReasonConfig.min_category_share must be in [0, 1], got ",
                  min_category_share);
  detail::require(min_brand_share >= 0.0 && min_brand_share <= 1.0,
                  "TemplateReasonConfig.min_brand_share must be in [0, 1], got ", min_brand_share);
  detail::require(max_location_rank >= 1,
                  "TemplateReasonConfig.max_location_rank must be >= 1, got ", max_location_rank);
  detail::require(std::isfinite(min_objective_z),
                  "TemplateReasonConfig.min_objective_z must be finite, got ", min_objective_z);
  detail::require(max_title_chars >= 2, "TemplateReasonConfig.max_title_chars must be >= 2, got ",
                  max_title_chars);
  detail::require(!fallback_locale.empty(), "TemplateReasonConfig.fallback_locale is empty");
  history.validate();
}

TemplateReasonGenerator::TemplateReasonGenerator(std::shared_ptr<const Catalog> catalog,
                                                 std::shared_ptr<const Popularity> popularity,
                                                 TemplateReasonConfig config)
    : catalog_(std::move(catalog)), popularity_(std::move(popularity)), config_(std::move(config)) {
  detail::require(catalog_ != nullptr, "TemplateReasonGenerator: catalog is null");
  config_.validate();
  if (config_.templates.empty()) {
    templates_ = parse_templates(detail::kBuiltinReasonTemplates, std::string(kBuiltinName));
  } else {
    templates_ = parse_templates(detail::read_file(config_.templates), config_.templates.string());
  }
  const std::string* fallback = match_locale(config_.fallback_locale);
  if (fallback == nullptr) {
    std::string have;
    for (const auto& [locale, texts] : templates_) have += (have.empty() ? "" : ", ") + locale;
    detail::fail(ErrorCode::invalid_argument, "TemplateReasonConfig.fallback_locale '",
                 config_.fallback_locale, "' is not provided by ",
                 config_.templates.empty() ? std::string(kBuiltinName) : config_.templates.string(),
                 " (locales: ", have, ")");
  }
  fallback_ = *fallback;
}

const std::string* TemplateReasonGenerator::match_locale(std::string_view requested) const {
  const std::string want = normalize_locale(requested);
  for (const auto& [locale, texts] : templates_) {
    if (normalize_locale(locale) == want) return &locale;
  }
  const std::string_view language = language_of(want);
  const std::string* first = nullptr;
  for (const auto& [locale, texts] : templates_) {
    const std::string have = normalize_locale(locale);
    if (language_of(have) != language) continue;
    if (have == language) return &locale;
    if (first == nullptr) first = &locale;
  }
  return first;
}

const std::string& TemplateReasonGenerator::resolve_locale(std::string_view requested) const {
  const std::string* found = match_locale(requested);
  return found != nullptr ? *found : fallback_;
}

std::vector<std::string> TemplateReasonGenerator::locales() const {
  std::vector<std::string> out;
  out.reserve(templates_.size());
  for (const auto& [locale, texts] : templates_) out.push_back(locale);
  return out;
}

std::vector<std::vector<Evidence>> TemplateReasonGenerator::collect_evidence(
    const UserContext& user, std::span<const ReasonInput> items) const {
  std::unordered_map<std::string_view, ObjectiveStats> objective_stats;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ReasonInput& in = items[i];
    detail::require(catalog_->contains(in.item), "TemplateReasonGenerator: items[", i,
                    "]: unknown item id ", in.item);
    detail::require(in.objective_names.size() == in.objective_scores.size(),
                    "TemplateReasonGenerator: items[", i, "] (item ", in.item,
                    "): ", in.objective_names.size(), " objective names but ",
                    in.objective_scores.size(), " scores");
    for (std::size_t j = 0; j < in.objective_names.size(); ++j) {
      const float score = in.objective_scores[j];
      detail::require(std::isfinite(score), "TemplateReasonGenerator: items[", i, "] (item ",
                      in.item, "): objective '", in.objective_names[j], "' score is not finite");
      auto& stats = objective_stats[in.objective_names[j]];
      stats.sum += score;
      stats.sum_sq += static_cast<double>(score) * score;
      ++stats.count;
    }
  }

  const LocaleTemplates& texts = templates_.find(resolve_locale(user.locale))->second;
  const HistoryProfile profile(*catalog_, user, config_.history);
  const std::string& location = user.profile.location;
  const auto mean_log_price = profile.mean_log_price();
  const auto std_log_price = profile.std_log_price();

  std::vector<std::vector<Evidence>> result(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ReasonInput& in = items[i];
    const Item& item = catalog_->at(in.item);
    std::vector<Evidence>& holding = result[i];

    // Collected in priority order (see the header).
    if (const auto vec = catalog_->vector(in.item); !vec.empty()) {
      const auto match = profile.most_similar(vec, in.item);
      if (match && match->item != kNoItem && match->similarity >= config_.min_similarity) {
        Evidence e;
        e.kind = EvidenceKind::similar_to_history;
        e.history_item = match->item;
        e.history_type = match->type;
        e.history_ts = match->ts;
        e.value = match->similarity;
        holding.push_back(std::move(e));
      }
    }
    if (!item.brand.empty()) {
      const double share = profile.brand_share(item.brand);
      if (share > 0.0 && share >= config_.min_brand_share) {
        Evidence e;
        e.kind = EvidenceKind::brand_affinity;
        e.brand = item.brand;
        e.value = share;
        holding.push_back(std::move(e));
      }
    }
    if (!item.category.empty()) {
      const double share = profile.category_share(item.category);
      if (share > 0.0 && share >= config_.min_category_share) {
        Evidence e;
        e.kind = EvidenceKind::category_affinity;
        e.category = item.category;
        e.value = share;
        holding.push_back(std::move(e));
      }
    }
    if (popularity_ && !location.empty() && !item.category.empty()) {
      const auto rank = popularity_->category_rank_in_location(location, item.category);
      if (rank && rank->first >= 1 && rank->first <= config_.max_location_rank) {
        Evidence e;
        e.kind = EvidenceKind::popular_in_location;
        e.category = item.category;
        e.location = location;
        e.value = static_cast<double>(rank->first);
        holding.push_back(std::move(e));
      }
    }
    if (mean_log_price && std_log_price && item.price && *item.price > 0.0) {
      // The tolerance keeps a one-price history (std 0) matching its own price
      // despite rounding in the profile's mean.
      const double distance = std::abs(std::log(*item.price) - *mean_log_price);
      if (distance <= *std_log_price + 1e-9) {
        Evidence e;
        e.kind = EvidenceKind::price_band;
        e.value = *std_log_price > 0.0 ? distance / *std_log_price : 0.0;
        holding.push_back(std::move(e));
      }
    }
    std::optional<std::size_t> best;
    double best_z = 0.0;
    for (std::size_t j = 0; j < in.objective_names.size(); ++j) {
      const std::string& objective = in.objective_names[j];
      if (!texts.contains(detail::cat(kObjectivePrefix, objective))) continue;
      const ObjectiveStats& stats = objective_stats.find(objective)->second;
      const double sd = stats.stddev();
      if (stats.count < 2 || !(sd > 0.0)) continue;
      const double z = (in.objective_scores[j] - stats.mean()) / sd;
      if (z >= config_.min_objective_z && (!best || z > best_z)) {
        best = j;
        best_z = z;
      }
    }
    if (best) {
      Evidence e;
      e.kind = EvidenceKind::objective;
      e.objective = in.objective_names[*best];
      e.value = in.objective_scores[*best];
      holding.push_back(std::move(e));
    }
  }
  return result;
}

void TemplateReasonGenerator::explain(const UserContext& user, std::span<const ReasonInput> items,
                                      std::span<Reason> out) const {
  detail::require(out.size() == items.size(), "TemplateReasonGenerator::explain: out has ",
                  out.size(), " elements, expected one per item (", items.size(), ")");
  // All checks happen here, before anything is written to `out`.
  std::vector<std::vector<Evidence>> evidence = collect_evidence(user, items);

  const std::string& locale = resolve_locale(user.locale);
  const LocaleTemplates& texts = templates_.find(locale)->second;
  std::unordered_map<std::string, std::size_t> given;  // reason signature -> times given
  for (std::size_t i = 0; i < items.size(); ++i) {
    std::vector<Evidence>& holding = evidence[i];
    Evidence chosen;  // none unless something holds
    if (!holding.empty()) {
      std::size_t pick = 0;
      if (config_.max_same_reason > 0) {
        for (std::size_t k = 0; k < holding.size(); ++k) {
          if (given[reason_signature(holding[k])] < config_.max_same_reason) {
            pick = k;
            break;
          }
        }
      }
      chosen = std::move(holding[pick]);
      ++given[reason_signature(chosen)];
    }

    const Item& item = catalog_->at(items[i].item);
    Fill fill;
    fill.title = shorten_title(item.title, config_.max_title_chars);
    std::string key(to_string(chosen.kind));
    switch (chosen.kind) {
      case EvidenceKind::similar_to_history: {
        const Item& past = catalog_->at(chosen.history_item);
        fill.history_title = shorten_title(past.title, config_.max_title_chars);
        fill.verb = texts.find(verb_key(chosen.history_type))->second;
        fill.when = texts.find(when_key(request_now(user) - chosen.history_ts))->second;
        break;
      }
      case EvidenceKind::category_affinity: fill.category = chosen.category; break;
      case EvidenceKind::brand_affinity: fill.brand = chosen.brand; break;
      case EvidenceKind::popular_in_location:
        fill.category = chosen.category;
        fill.location = chosen.location;
        break;
      case EvidenceKind::objective: key = detail::cat(kObjectivePrefix, chosen.objective); break;
      case EvidenceKind::price_band:
      case EvidenceKind::none: break;
    }
    Reason& reason = out[i];
    reason.text = render(texts.find(key)->second, fill);
    reason.locale = locale;
    reason.evidence = std::move(chosen);
  }
}

}  // namespace funnel
