// SPDX-License-Identifier: Apache-2.0
// funnel-retail-convert: the UCI Online Retail transactions (CSV) as funnel's
// catalog.jsonl, users.jsonl and events.jsonl. The rules are in
// tools/online_retail/README.md; this file implements exactly them.

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "funnel/catalog.hpp"
#include "funnel/error.hpp"
#include "funnel/event.hpp"
#include "funnel/user.hpp"
#include "internal/error_util.hpp"
#include "internal/utf8.hpp"

namespace fs = std::filesystem;
using funnel::ErrorCode;
using funnel::detail::fail;

namespace {

constexpr int kUsageError = 2;

constexpr std::array<std::string_view, 8> kColumns = {"InvoiceNo",  "StockCode",   "Description",
                                                      "Quantity",   "InvoiceDate", "UnitPrice",
                                                      "CustomerID", "Country"};

void print_usage(std::ostream& out) {
  out << "Usage: funnel-retail-convert --out DIR [INPUT]\n"
         "\n"
         "Converts the UCI Online Retail transactions (CSV with the columns\n"
         "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country)\n"
         "into DIR/catalog.jsonl, DIR/users.jsonl and DIR/events.jsonl, and prints what\n"
         "it kept and dropped. INPUT is a file, or '-' / nothing for standard input\n"
         "(e.g. gzip -dc online-retail.csv.gz | funnel-retail-convert --out DIR).\n"
         "\n"
         "Options:\n"
         "  --out DIR    output directory (created if needed; required)\n"
         "  -h, --help   show this help\n"
         "\n"
         "Exit status: 0 on success, 1 for bad input or a failed write, 2 for bad options.\n"
         "See tools/online_retail/README.md for the rules.\n";
}

// ---------------------------------------------------------------------------
// CSV (RFC 4180: comma separated, fields optionally in double quotes, ""
// inside quotes is one quote; LF or CRLF line ends).

struct CsvRecord {
  std::size_t line = 0;  // 1-based line where the record starts
  std::vector<std::string> fields;
};

class CsvReader {
 public:
  CsvReader(std::string_view text, std::string source) : text_(text), source_(std::move(source)) {}

  // Reads the next record; false at the end of the input.
  bool next(CsvRecord& record) {
    if (pos_ >= text_.size()) return false;
    record.line = line_;
    record.fields.clear();
    std::string field;
    bool quoted = false;       // inside a quoted field
    bool was_quoted = false;   // the current field began with a quote
    bool after_quote = false;  // a quoted field just closed
    while (pos_ < text_.size()) {
      const char c = text_[pos_++];
      if (quoted) {
        if (c == '"') {
          if (pos_ < text_.size() && text_[pos_] == '"') {
            field += '"';
            ++pos_;
          } else {
            quoted = false;
            after_quote = true;
          }
        } else {
          if (c == '\n') ++line_;
          field += c;
        }
        continue;
      }
      if (c == ',') {
        record.fields.push_back(std::move(field));
        field.clear();
        was_quoted = false;
        after_quote = false;
      } else if (c == '\n' || c == '\r') {
        if (c == '\r') {
          if (pos_ >= text_.size() || text_[pos_] != '\n') {
            fail(ErrorCode::format, source_, ":", line_, ": a carriage return outside quotes");
          }
          ++pos_;
        }
        ++line_;
        record.fields.push_back(std::move(field));
        return true;
      } else if (c == '"' && field.empty() && !was_quoted) {
        quoted = true;
        was_quoted = true;
      } else if (after_quote || c == '"') {
        fail(ErrorCode::format, source_, ":", line_, ": field ", record.fields.size() + 1,
             after_quote ? ": text after a closing quote" : ": a quote inside an unquoted field");
      } else {
        field += c;
      }
    }
    if (quoted) {
      fail(ErrorCode::format, source_, ":", record.line,
           ": a quoted field is not closed before the end of the input");
    }
    record.fields.push_back(std::move(field));
    return true;
  }

 private:
  std::string_view text_;
  std::string source_;
  std::size_t pos_ = 0;
  std::size_t line_ = 1;
};

// ---------------------------------------------------------------------------
// Field parsing; every failure names the source, line and column.

struct Where {
  const std::string* source = nullptr;
  std::size_t line = 0;
};

[[noreturn]] void bad_field(const Where& where, std::string_view column, std::string_view value,
                            std::string_view expected) {
  fail(ErrorCode::format, *where.source, ":", where.line, ": ", column, ": expected ", expected,
       ", got '", value, "'");
}

std::int64_t parse_int(const Where& where, std::string_view column, std::string_view value) {
  std::int64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    bad_field(where, column, value, "an integer");
  }
  return v;
}

double parse_price(const Where& where, std::string_view value) {
  double v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() ||
      !std::isfinite(v)) {
    bad_field(where, "UnitPrice", value, "a finite decimal number");
  }
  return v;
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
// days_from_civil algorithm, written out from its description).
std::int64_t days_from_civil(std::int64_t y, std::int64_t m, std::int64_t d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

bool leap_year(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// "YYYY-MM-DD HH:MM:SS", read as UTC, to Unix seconds.
std::int64_t parse_date(const Where& where, std::string_view value) {
  constexpr std::string_view kExpected = "a date 'YYYY-MM-DD HH:MM:SS'";
  constexpr std::string_view kPattern = "dddd-dd-dd dd:dd:dd";
  if (value.size() != kPattern.size()) bad_field(where, "InvoiceDate", value, kExpected);
  for (std::size_t i = 0; i < kPattern.size(); ++i) {
    const bool digit = value[i] >= '0' && value[i] <= '9';
    if (kPattern[i] == 'd' ? !digit : value[i] != kPattern[i]) {
      bad_field(where, "InvoiceDate", value, kExpected);
    }
  }
  auto number = [&](std::size_t pos, std::size_t len) {
    std::int64_t v = 0;
    for (std::size_t i = pos; i < pos + len; ++i) v = v * 10 + (value[i] - '0');
    return v;
  };
  const std::int64_t y = number(0, 4);
  const std::int64_t mo = number(5, 2);
  const std::int64_t d = number(8, 2);
  const std::int64_t h = number(11, 2);
  const std::int64_t mi = number(14, 2);
  const std::int64_t s = number(17, 2);
  constexpr std::array<std::int64_t, 12> kMonthDays = {31, 28, 31, 30, 31, 30,
                                                       31, 31, 30, 31, 30, 31};
  const bool month_ok = mo >= 1 && mo <= 12;
  const std::int64_t month_days =
      month_ok ? kMonthDays[static_cast<std::size_t>(mo - 1)] + (mo == 2 && leap_year(y) ? 1 : 0)
               : 0;
  if (!month_ok || d < 1 || d > month_days || h > 23 || mi > 59 || s > 59) {
    bad_field(where, "InvoiceDate", value, "a valid calendar date and time");
  }
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

// "17850.0" (the float spelling of this copy) or "17850" -> "17850"; "" stays "".
std::string parse_customer(const Where& where, std::string_view value) {
  if (value.empty()) return {};
  const std::size_t dot = value.find('.');
  const std::string_view digits = value.substr(0, dot);
  bool ok = !digits.empty() &&
            std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (dot != std::string_view::npos) {
    const std::string_view frac = value.substr(dot + 1);
    ok = ok && !frac.empty() &&
         std::all_of(frac.begin(), frac.end(), [](char c) { return c == '0'; });
  }
  if (!ok) bad_field(where, "CustomerID", value, "an integer customer number (e.g. 17850.0)");
  // Leading zeros would make "017850" and "17850" two users.
  const std::size_t first = std::min(digits.find_first_not_of('0'), digits.size() - 1);
  return std::string(digits.substr(first));
}

// Trims the text and collapses runs of spaces, so that spelling variants
// that differ only in spacing count as one description.
std::string clean_text(std::string_view text) {
  std::string out;
  bool space = false;
  for (const char c : text) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
    } else {
      if (space) out += ' ';
      space = false;
      out += c;
    }
  }
  return out;
}

std::string upper_ascii(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

// A product's stock code: five digits, then optional letters (upper-cased
// before the test). Everything else is postage, fees, adjustments, vouchers
// or the few DCGS codes of another sales channel (see the README).
bool is_product_code(std::string_view code) {
  if (code.size() < 5) return false;
  for (std::size_t i = 0; i < code.size(); ++i) {
    const char c = code[i];
    const bool ok = i < 5 ? (c >= '0' && c <= '9') : (c >= 'A' && c <= 'Z');
    if (!ok) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Category from the title (the data has no category column; see the README).

bool is_modifier(std::string_view word) {
  // Colours, sizes and pattern names that end many titles ("JUMBO BAG PINK
  // POLKADOT") without saying what the product is.
  static constexpr std::array<std::string_view, 40> kModifiers = {
      "assorted", "beige",  "big",   "black",    "blue",    "brown",     "clear",     "colour",
      "colours",  "copper", "cream", "design",   "designs", "double",    "giant",     "gold",
      "green",    "grey",   "ivory", "jumbo",    "large",   "lilac",     "medium",    "mini",
      "orange",   "pastel", "pink",  "polkadot", "purple",  "red",       "retrospot", "silver",
      "single",   "size",   "small", "spot",     "spots",   "turquoise", "vintage",   "white"};
  return std::find(kModifiers.begin(), kModifiers.end(), word) != kModifiers.end();
}

std::string singular(std::string word) {
  auto ends_with = [&](std::string_view s) { return word.ends_with(s); };
  if (word.size() > 4 && ends_with("ies")) {
    word.replace(word.size() - 3, 3, "y");
  } else if (ends_with("sses") || ends_with("xes") || ends_with("ches") || ends_with("shes")) {
    word.resize(word.size() - 2);
  } else if (ends_with("s") && !ends_with("ss") && !ends_with("us") && !ends_with("is") &&
             !ends_with("mas")) {  // "christmas", "xmas"
    word.pop_back();
  }
  return word;
}

std::string category_of(std::string_view title) {
  std::vector<std::string> words;  // runs of ASCII letters with 3 or more letters, lower-cased
  std::string word;
  auto flush = [&] {
    if (word.size() >= 3) words.push_back(word);
    word.clear();
  };
  for (const char c : title) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
      word += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    } else {
      flush();
    }
  }
  flush();
  if (words.empty()) return {};
  for (auto it = words.rbegin(); it != words.rend(); ++it) {
    if (!is_modifier(*it)) return singular(*it);
  }
  return singular(words.back());
}

// ---------------------------------------------------------------------------
// The conversion.

struct Purchase {
  std::string invoice;
  std::string customer;
  std::string code;
  std::int64_t ts = 0;
  std::size_t line = 0;       // first line of the purchase
  std::int64_t quantity = 0;  // remaining after cancellations
};

struct Cancellation {
  std::string customer;
  std::string code;
  std::int64_t ts = 0;
  std::size_t line = 0;
  std::int64_t quantity = 0;  // positive: the units cancelled
};

struct ItemStats {
  std::map<std::string, std::size_t> descriptions;  // cleaned, non-empty -> lines
  std::vector<double> prices;                       // one per sale line
};

struct Summary {
  std::size_t rows = 0;
  std::size_t sale_lines = 0;
  std::size_t cancellation_lines = 0;
  std::size_t cancellations_exceeding = 0;
  std::size_t dropped_non_product = 0;
  std::size_t dropped_no_customer = 0;
  std::size_t dropped_quantity_sign = 0;
  std::size_t dropped_price = 0;
  std::size_t dropped_unmatched = 0;
  std::size_t purchases = 0;
  std::size_t purchases_removed = 0;
  std::size_t purchases_reduced = 0;
};

std::string date_of(std::int64_t ts) {
  // Inverse of days_from_civil (civil_from_days), for the summary's range.
  const std::int64_t z = (ts >= 0 ? ts : ts - 86399) / 86400 + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  std::array<char, 80> buf{};  // room for any three int64 values
  std::snprintf(buf.data(), buf.size(), "%04lld-%02lld-%02lld", static_cast<long long>(y),
                static_cast<long long>(m), static_cast<long long>(d));
  return buf.data();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

// The most frequent key (ties: the smallest key, as std::map iterates in order).
template <class Map>
std::string most_frequent(const Map& counts) {
  std::string best;
  std::size_t best_count = 0;
  for (const auto& [key, count] : counts) {
    if (count > best_count) {
      best = key;
      best_count = count;
    }
  }
  return best;
}

int convert(std::string_view text, const std::string& source, const fs::path& out_dir) {
  CsvReader reader(text, source);
  CsvRecord record;
  if (!reader.next(record)) fail(ErrorCode::format, source, ": the input is empty");
  if (!record.fields.empty() && record.fields[0].starts_with("\xEF\xBB\xBF")) {
    record.fields[0].erase(0, 3);  // a UTF-8 byte order mark
  }
  if (!std::equal(record.fields.begin(), record.fields.end(), kColumns.begin(), kColumns.end())) {
    std::string got;
    for (const std::string& f : record.fields) got += (got.empty() ? "" : ",") + f;
    fail(ErrorCode::format, source, ":1: expected the header ",
         "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
         ", got '", got, "'");
  }

  Summary summary;
  std::map<std::string, ItemStats> items;  // by normalised stock code (sorted: ids follow)
  std::unordered_map<std::string, std::map<std::string, std::size_t>> countries;
  std::vector<Purchase> purchases;
  std::map<std::tuple<std::string, std::string, std::string>, std::size_t> purchase_of;
  std::vector<Cancellation> cancellations;

  while (reader.next(record)) {
    ++summary.rows;
    const Where where{&source, record.line};
    if (record.fields.size() != kColumns.size()) {
      fail(ErrorCode::format, source, ":", record.line, ": expected ", kColumns.size(),
           " comma-separated fields, got ", record.fields.size());
    }
    for (std::size_t c = 0; c < kColumns.size(); ++c) {
      if (const auto bad = funnel::detail::find_invalid_utf8(record.fields[c])) {
        fail(ErrorCode::format, source, ":", record.line, ": ", kColumns[c],
             ": invalid UTF-8 at byte ", *bad);
      }
    }
    const std::string& invoice = record.fields[0];
    if (invoice.empty()) bad_field(where, "InvoiceNo", invoice, "an invoice number");
    const std::string code = upper_ascii(record.fields[1]);
    if (code.empty()) bad_field(where, "StockCode", code, "a stock code");
    const std::string description = clean_text(record.fields[2]);
    const std::int64_t quantity = parse_int(where, "Quantity", record.fields[3]);
    const std::int64_t ts = parse_date(where, record.fields[4]);
    const double price = parse_price(where, record.fields[5]);
    const std::string customer = parse_customer(where, record.fields[6]);
    const std::string country = clean_text(record.fields[7]);
    const bool cancellation = invoice.front() == 'C';

    if (!customer.empty() && !country.empty()) ++countries[customer][country];
    if (!is_product_code(code)) {
      ++summary.dropped_non_product;
      continue;
    }
    // Every sale line of a product at a positive price describes the item,
    // with or without a customer.
    if (!cancellation && quantity > 0 && price > 0) {
      ItemStats& stats = items[code];
      if (!description.empty()) ++stats.descriptions[description];
      stats.prices.push_back(price);
    }
    if (customer.empty()) {
      ++summary.dropped_no_customer;
    } else if (cancellation ? quantity >= 0 : quantity <= 0) {
      ++summary.dropped_quantity_sign;
    } else if (price <= 0) {
      ++summary.dropped_price;
    } else if (cancellation) {
      cancellations.push_back({customer, code, ts, record.line, -quantity});
    } else {
      ++summary.sale_lines;
      auto [it, added] = purchase_of.try_emplace({invoice, customer, code}, purchases.size());
      if (added) {
        purchases.push_back({invoice, customer, code, ts, record.line, quantity});
      } else {
        Purchase& p = purchases[it->second];
        p.quantity += quantity;
        p.ts = std::min(p.ts, ts);
      }
    }
  }
  summary.purchases = purchases.size();

  // Cancellations in time order (file order for equal times), each against
  // the same customer's earlier purchases of the item, latest first.
  std::map<std::pair<std::string, std::string>, std::vector<std::size_t>> by_customer_item;
  for (std::size_t i = 0; i < purchases.size(); ++i) {
    by_customer_item[{purchases[i].customer, purchases[i].code}].push_back(i);
  }
  for (auto& [key, list] : by_customer_item) {
    std::sort(list.begin(), list.end(), [&](std::size_t a, std::size_t b) {
      return std::pair(purchases[a].ts, purchases[a].line) <
             std::pair(purchases[b].ts, purchases[b].line);
    });
  }
  std::stable_sort(cancellations.begin(), cancellations.end(),
                   [](const Cancellation& a, const Cancellation& b) {
                     return std::pair(a.ts, a.line) < std::pair(b.ts, b.line);
                   });
  std::vector<bool> reduced(purchases.size(), false);
  for (const Cancellation& c : cancellations) {
    const auto it = by_customer_item.find({c.customer, c.code});
    std::int64_t left = c.quantity;
    bool matched = false;
    if (it != by_customer_item.end()) {
      const std::vector<std::size_t>& list = it->second;
      for (auto p = list.rbegin(); p != list.rend() && left > 0; ++p) {
        Purchase& purchase = purchases[*p];
        if (purchase.ts > c.ts || purchase.quantity == 0) continue;
        const std::int64_t taken = std::min(left, purchase.quantity);
        purchase.quantity -= taken;
        left -= taken;
        reduced[*p] = true;
        matched = true;
      }
    }
    if (!matched) {
      ++summary.dropped_unmatched;
      continue;
    }
    ++summary.cancellation_lines;
    if (left > 0) ++summary.cancellations_exceeding;
  }

  // Items: ids in stock-code order.
  funnel::Catalog catalog;
  std::map<std::string, funnel::ItemId> id_of;
  for (const auto& [code, stats] : items) {
    funnel::Item item;
    item.id = static_cast<funnel::ItemId>(id_of.size());
    item.title = stats.descriptions.empty() ? code : most_frequent(stats.descriptions);
    item.category = category_of(item.title);
    item.price = median(stats.prices);
    item.attrs["stock_code"] = code;
    id_of.emplace(code, item.id);
    catalog.add(std::move(item));
  }

  // Events: the purchases that cancellations left, by time (file order for ties).
  std::vector<const Purchase*> kept;
  for (std::size_t i = 0; i < purchases.size(); ++i) {
    if (purchases[i].quantity > 0) {
      kept.push_back(&purchases[i]);
      if (reduced[i]) ++summary.purchases_reduced;
    } else {
      ++summary.purchases_removed;
    }
  }
  std::stable_sort(kept.begin(), kept.end(), [](const Purchase* a, const Purchase* b) {
    return std::pair(a->ts, a->line) < std::pair(b->ts, b->line);
  });
  std::vector<funnel::Event> events;
  events.reserve(kept.size());
  std::set<std::pair<std::size_t, std::string>> buyers;  // (digits, id): numeric order
  for (const Purchase* p : kept) {
    events.push_back(
        {p->customer, id_of.at(p->code), funnel::EventType::purchase, std::nullopt, p->ts});
    buyers.emplace(p->customer.size(), p->customer);
  }

  // Users: customers with at least one event, in numeric order.
  std::vector<funnel::UserProfile> users;
  users.reserve(buyers.size());
  for (const auto& key : buyers) {
    funnel::UserProfile user;
    user.id = key.second;
    const auto c = countries.find(user.id);
    if (c != countries.end()) user.location = most_frequent(c->second);
    users.push_back(std::move(user));
  }

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec)
    fail(ErrorCode::io, "cannot create the directory '", out_dir.string(), "': ", ec.message());
  catalog.save_jsonl(out_dir / "catalog.jsonl");
  funnel::save_users_jsonl(out_dir / "users.jsonl", users);
  funnel::save_events_jsonl(out_dir / "events.jsonl", events);

  std::printf("rows read: %zu\n", summary.rows);
  std::printf("  sale lines kept: %zu\n", summary.sale_lines);
  std::printf("  cancellation lines applied: %zu (%zu cancelled more than was bought before)\n",
              summary.cancellation_lines, summary.cancellations_exceeding);
  std::printf("  dropped, non-product stock code: %zu\n", summary.dropped_non_product);
  std::printf("  dropped, no CustomerID: %zu\n", summary.dropped_no_customer);
  std::printf("  dropped, quantity sign (sale <= 0 or cancellation >= 0): %zu\n",
              summary.dropped_quantity_sign);
  std::printf("  dropped, price <= 0: %zu\n", summary.dropped_price);
  std::printf("  dropped, unmatched cancellation: %zu\n", summary.dropped_unmatched);
  std::printf("purchases (invoice, customer, stock code): %zu\n", summary.purchases);
  std::printf("  removed by cancellations: %zu\n", summary.purchases_removed);
  std::printf("  reduced by cancellations: %zu\n", summary.purchases_reduced);
  if (events.empty()) {
    std::printf("events written: 0\n");
  } else {
    std::printf("events written: %zu (%s .. %s)\n", events.size(),
                date_of(events.front().ts).c_str(), date_of(events.back().ts).c_str());
  }
  std::printf("items written: %zu\n", catalog.size());
  std::printf("users written: %zu\n", users.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path out_dir;
  std::string input;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      print_usage(std::cout);
      return 0;
    }
    if (arg == "--out") {
      if (i + 1 >= argc) {
        std::cerr << "funnel-retail-convert: --out needs a value\n";
        return kUsageError;
      }
      if (!out_dir.empty()) {
        std::cerr << "funnel-retail-convert: --out given twice\n";
        return kUsageError;
      }
      out_dir = argv[++i];
      if (out_dir.empty()) {
        std::cerr << "funnel-retail-convert: --out needs a non-empty value\n";
        return kUsageError;
      }
    } else if (arg.size() > 1 && arg.front() == '-') {
      std::cerr << "funnel-retail-convert: unknown option '" << arg << "' (see --help)\n";
      return kUsageError;
    } else if (!input.empty()) {
      std::cerr << "funnel-retail-convert: more than one input ('" << input << "', '" << arg
                << "')\n";
      return kUsageError;
    } else {
      input = arg;
    }
  }
  if (out_dir.empty()) {
    std::cerr << "funnel-retail-convert: --out is required (see --help)\n";
    return kUsageError;
  }
  try {
    std::string text;
    std::string source;
    if (input.empty() || input == "-") {
      source = "<stdin>";
      std::ostringstream buffer;
      buffer << std::cin.rdbuf();
      if (std::cin.bad()) fail(ErrorCode::io, "cannot read the standard input");
      text = std::move(buffer).str();
    } else {
      source = input;
      std::ifstream file(input, std::ios::binary);
      if (!file) fail(ErrorCode::io, "cannot open the input file '", input, "'");
      text.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
      if (file.bad()) fail(ErrorCode::io, "cannot read the input file '", input, "'");
    }
    return convert(text, source, out_dir);
  } catch (const std::exception& e) {
    std::cerr << "funnel-retail-convert: " << e.what() << "\n";
    return 1;
  }
}
