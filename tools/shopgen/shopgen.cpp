// SPDX-License-Identifier: Apache-2.0
#include "shopgen/shopgen.hpp"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "funnel/npy.hpp"
#include "internal/atomic_file.hpp"
#include "internal/error_util.hpp"

namespace funnel::shopgen {

// ---------------------------------------------------------------------------
// Random numbers. std::mt19937_64's output sequence is fixed by the standard;
// the standard library's distributions are not (libstdc++, libc++ and MSVC
// differ), so every distribution below is written out here.
// ---------------------------------------------------------------------------
namespace {

constexpr double kTwoPowMinus53 = 1.0 / 9007199254740992.0;  // 2^-53

/// SplitMix64's finaliser: a bijective 64-bit mix used to derive stream seeds.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27U)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31U);
}

/// Independent streams per part of the shop, so that e.g. the catalogue does
/// not depend on how many users are generated.
enum class Stream : std::uint64_t {
  locations = 1,
  centroids = 2,
  brands = 3,
  items = 4,
  users = 5,
  normalisation = 6,
  events = 7,
};

std::uint64_t stream_seed(std::uint64_t seed, Stream stream, std::uint64_t index) noexcept {
  return mix64(mix64(seed ^ mix64(static_cast<std::uint64_t>(stream))) + index);
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  Rng(std::uint64_t seed, Stream stream, std::uint64_t index = 0)
      : engine_(stream_seed(seed, stream, index)) {}

  std::uint64_t bits() { return engine_(); }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(bits() >> 11U) * kTwoPowMinus53; }
  /// Uniform in (0, 1], safe for log().
  double uniform_pos() { return (static_cast<double>(bits() >> 11U) + 1.0) * kTwoPowMinus53; }

  /// Uniform integer in [0, n), without modulo bias. n must be > 0.
  std::size_t below(std::size_t n) {
    assert(n > 0);
    const std::uint64_t range = n;
    const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() -
                                std::numeric_limits<std::uint64_t>::max() % range;
    std::uint64_t x = bits();
    while (x >= limit) x = bits();
    return static_cast<std::size_t>(x % range);
  }

  bool bernoulli(double p) { return uniform() < p; }

  /// Standard normal by the polar form of the Box-Muller transform.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u = 0.0;
    double v = 0.0;
    double s = 0.0;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    spare_ = v * f;
    has_spare_ = true;
    return u * f;
  }
  double normal(double mean, double sd) { return mean + sd * normal(); }

  double exponential(double mean) { return -mean * std::log(uniform_pos()); }

  /// Gamma(shape, 1) by Marsaglia and Tsang; shape < 1 by the boost
  /// Gamma(shape + 1) * U^(1/shape).
  double gamma(double shape) {
    assert(shape > 0.0);
    if (shape < 1.0) return gamma(shape + 1.0) * std::pow(uniform_pos(), 1.0 / shape);
    const double d = shape - 1.0 / 3.0;
    const double c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x = 0.0;
      double v = 0.0;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = uniform_pos();
      if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
      if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

  /// Poisson(mean) by Knuth's product of uniforms, in blocks of mean <= 30 so
  /// that exp(-mean) never underflows (a sum of Poissons is Poisson).
  std::size_t poisson(double mean) {
    std::size_t total = 0;
    while (mean > 0.0) {
      const double part = std::min(mean, 30.0);
      mean -= part;
      const double limit = std::exp(-part);
      double product = uniform_pos();
      while (product > limit) {
        ++total;
        product *= uniform_pos();
      }
    }
    return total;
  }

  /// Index drawn with probability proportional to the weights whose running
  /// sums are `cumulative` (non-decreasing, last element > 0).
  std::size_t categorical(std::span<const double> cumulative) {
    assert(!cumulative.empty() && cumulative.back() > 0.0);
    const double x = uniform() * cumulative.back();
    const auto it = std::upper_bound(cumulative.begin(), cumulative.end(), x);
    const auto index = static_cast<std::size_t>(it - cumulative.begin());
    return std::min(index, cumulative.size() - 1);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

std::vector<double> cumulative_of(std::span<const double> weights) {
  std::vector<double> out(weights.size());
  double sum = 0.0;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    sum += weights[i];
    out[i] = sum;
  }
  return out;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// ---------------------------------------------------------------------------
// Vocabulary: categories, colours, brand-name parts, cities.
// ---------------------------------------------------------------------------

struct Words {
  std::string_view zh;
  std::string_view en;
};

struct CategorySpec {
  std::string_view key;
  std::string_view zh;
  std::string_view en;
  double share;
  double median_price;
  double price_sigma;
  double dwell_offset;
  double gender_f;
  double gender_m;
  double age_slope;
  bool color_in_title;
  std::array<Words, 4> nouns;
  std::array<Words, 5> adjectives;
  std::array<Words, 4> specs;
  std::array<Words, 4> features;
};

// One row per category. Columns: key, zh, en, share of items, median price
// (CNY), sigma of ln price, dwell offset, affinity of female users, of male
// users, affinity per 15 years above 35, colour in title; then nouns,
// adjectives, specs and description features as zh/en pairs.
// clang-format off
constexpr std::array<CategorySpec, 14> kCategories = {{
    {"phones", "手机", "Phones", 1.0, 2500.0, 0.45, 0.35, -0.1, 0.3, -0.15, true,
     {{{"智能手机", "Smartphone"}, {"5G手机", "5G Phone"}, {"拍照手机", "Camera Phone"},
       {"折叠屏手机", "Foldable Phone"}}},
     {{{"轻薄", "Slim"}, {"旗舰", "Flagship"}, {"长续航", "Long-battery"},
       {"高刷", "High-refresh"}, {"影像", "Pro-camera"}}},
     {{{"8+128GB", "8+128GB"}, {"12+256GB", "12+256GB"}, {"16+512GB", "16+512GB"},
       {"双卡双待", "Dual SIM"}}},
     {{{"超长续航一整天", "all-day battery life"}, {"一亿像素主摄", "a 100MP main camera"},
       {"120Hz高刷屏", "a 120Hz display"}, {"65W快充", "65W fast charging"}}}},
    {"dresses", "连衣裙", "Dresses", 1.4, 260.0, 0.45, 0.1, 1.0, -2.0, -0.25, true,
     {{{"连衣裙", "Dress"}, {"碎花裙", "Floral Dress"}, {"长裙", "Maxi Dress"},
       {"衬衫裙", "Shirt Dress"}}},
     {{{"法式", "French-style"}, {"收腰", "Waisted"}, {"复古", "Vintage"},
       {"宽松", "Loose-fit"}, {"优雅", "Elegant"}}},
     {{{"S码", "Size S"}, {"M码", "Size M"}, {"L码", "Size L"}, {"XL码", "Size XL"}}},
     {{{"雪纺面料清爽透气", "breathable chiffon"}, {"纯棉亲肤", "soft pure cotton"},
       {"显瘦A字版型", "a flattering A-line cut"}, {"通勤约会都合适", "made for office and dates"}}}},
    {"running_shoes", "运动鞋", "Running shoes", 1.1, 450.0, 0.4, 0.0, 0.1, 0.3, -0.1, true,
     {{{"跑步鞋", "Running Shoes"}, {"运动鞋", "Sneakers"}, {"缓震跑鞋", "Cushioned Runners"},
       {"训练鞋", "Training Shoes"}}},
     {{{"轻量", "Lightweight"}, {"透气", "Breathable"}, {"回弹", "Responsive"},
       {"防滑", "Non-slip"}, {"专业", "Pro"}}},
     {{{"39码", "EU 39"}, {"41码", "EU 41"}, {"42码", "EU 42"}, {"44码", "EU 44"}}},
     {{{"高回弹中底", "a springy midsole"}, {"网面透气鞋面", "a breathable mesh upper"},
       {"耐磨橡胶大底", "a durable rubber outsole"}, {"适合马拉松训练", "marathon-ready grip"}}}},
    {"water_bottles", "保温杯", "Water bottles", 0.9, 90.0, 0.45, -0.3, 0.2, 0.0, 0.1, true,
     {{{"保温杯", "Insulated Bottle"}, {"保温壶", "Thermos Flask"}, {"吸管杯", "Straw Bottle"},
       {"随行杯", "Travel Mug"}}},
     {{{"不锈钢", "Stainless-steel"}, {"大容量", "Large-capacity"}, {"便携", "Portable"},
       {"防漏", "Leak-proof"}, {"轻巧", "Compact"}}},
     {{{"350ml", "350ml"}, {"500ml", "500ml"}, {"750ml", "750ml"}, {"1L", "1L"}}},
     {{{"12小时保温保冷", "12 hours hot or cold"}, {"316不锈钢内胆", "a 316 stainless liner"},
       {"一键开盖", "a one-touch lid"}, {"办公户外都能用", "use at the office or outdoors"}}}},
    {"skincare", "护肤品", "Skincare", 1.2, 180.0, 0.55, 0.05, 0.8, -0.7, -0.05, false,
     {{{"面霜", "Face Cream"}, {"精华液", "Serum"}, {"爽肤水", "Toner"}, {"防晒霜", "Sunscreen"}}},
     {{{"保湿", "Moisturizing"}, {"修护", "Repairing"}, {"亮肤", "Brightening"},
       {"温和", "Gentle"}, {"抗老", "Anti-aging"}}},
     {{{"30ml", "30ml"}, {"50ml", "50ml"}, {"100ml", "100ml"}, {"旅行装", "Travel size"}}},
     {{{"玻尿酸深层补水", "hyaluronic acid hydration"}, {"敏感肌可用", "safe for sensitive skin"},
       {"清爽不油腻", "a light non-greasy feel"}, {"烟酰胺提亮肤色", "niacinamide for even tone"}}}},
    {"snacks", "零食", "Snacks", 1.2, 35.0, 0.45, -0.5, 0.2, 0.1, -0.3, false,
     {{{"坚果礼盒", "Nut Gift Box"}, {"牛肉干", "Beef Jerky"}, {"薯片", "Potato Chips"},
       {"饼干", "Cookies"}}},
     {{{"香辣", "Spicy"}, {"原味", "Original"}, {"低糖", "Low-sugar"}, {"每日", "Daily"},
       {"网红", "Trending"}}},
     {{{"200g", "200g"}, {"500g", "500g"}, {"1kg", "1kg"}, {"30包", "30 packs"}}},
     {{{"独立小包装", "individually wrapped"}, {"追剧办公必备", "perfect for binge-watching"},
       {"香脆可口", "crunchy and tasty"}, {"精选原料", "selected ingredients"}}}},
    {"headphones", "耳机", "Headphones", 0.9, 400.0, 0.6, 0.15, -0.1, 0.3, -0.3, true,
     {{{"蓝牙耳机", "Bluetooth Earbuds"}, {"头戴式耳机", "Over-ear Headphones"},
       {"降噪耳机", "Noise-cancelling Headphones"}, {"运动耳机", "Sports Earphones"}}},
     {{{"无线", "Wireless"}, {"入耳式", "In-ear"}, {"低延迟", "Low-latency"},
       {"高保真", "Hi-Fi"}, {"长续航", "Long-battery"}}},
     {{{"蓝牙5.3", "Bluetooth 5.3"}, {"40小时续航", "40h playtime"}, {"IPX5防水", "IPX5"},
       {"Type-C快充", "USB-C charging"}}},
     {{{"主动降噪", "active noise cancellation"}, {"通透模式", "a transparency mode"},
       {"双设备连接", "multipoint pairing"}, {"游戏低延迟", "a low-latency game mode"}}}},
    {"books", "图书", "Books", 1.3, 45.0, 0.35, 0.45, 0.2, 0.0, 0.25, false,
     {{{"长篇小说", "Novel"}, {"编程指南", "Programming Guide"}, {"历史读物", "History Book"},
       {"儿童绘本", "Picture Book"}}},
     {{{"畅销", "Bestselling"}, {"经典", "Classic"}, {"精装", "Hardcover"},
       {"插图版", "Illustrated"}, {"新版", "New-edition"}}},
     {{{"第2版", "2nd Edition"}, {"全3册", "3-volume Set"}, {"中英双语", "Bilingual"},
       {"平装", "Paperback"}}},
     {{{"读者高分推荐", "loved by readers"}, {"名家翻译", "an acclaimed translation"},
       {"附赠书签", "a free bookmark"}, {"适合入门阅读", "a great first read"}}}},
    {"toys", "玩具", "Toys", 1.0, 120.0, 0.55, -0.1, 0.1, 0.0, 0.15, true,
     {{{"积木", "Building Blocks"}, {"毛绒玩具", "Plush Toy"}, {"遥控车", "RC Car"},
       {"拼图", "Jigsaw Puzzle"}}},
     {{{"创意", "Creative"}, {"儿童", "Kids"}, {"可爱", "Cute"}, {"益智", "Educational"},
       {"经典", "Classic"}}},
     {{{"3岁以上", "Ages 3+"}, {"6岁以上", "Ages 6+"}, {"500片", "500 pieces"},
       {"大号", "Large"}}},
     {{{"锻炼动手能力", "hands-on skill building"}, {"环保ABS材质", "eco-friendly ABS"},
       {"亲子互动", "family play time"}, {"生日礼物首选", "a top birthday gift"}}}},
    {"cookware", "厨具", "Cookware", 0.9, 220.0, 0.5, 0.0, 0.3, -0.2, 0.3, true,
     {{{"炒锅", "Wok"}, {"不粘锅", "Non-stick Pan"}, {"汤锅", "Stock Pot"},
       {"刀具套装", "Knife Set"}}},
     {{{"铸铁", "Cast-iron"}, {"家用", "Household"}, {"加厚", "Heavy-duty"},
       {"少油烟", "Low-smoke"}, {"多功能", "Multi-purpose"}}},
     {{{"28cm", "28cm"}, {"32cm", "32cm"}, {"3件套", "3-piece"}, {"电磁炉通用", "Induction-ready"}}},
     {{{"麦饭石涂层", "a stone-derived coating"}, {"受热均匀", "even heating"},
       {"易清洗", "easy cleaning"}, {"无涂层更健康", "a healthy uncoated surface"}}}},
    {"backpacks", "背包", "Backpacks", 0.9, 200.0, 0.45, -0.1, 0.1, 0.2, -0.15, true,
     {{{"双肩包", "Backpack"}, {"电脑包", "Laptop Backpack"}, {"旅行包", "Travel Backpack"},
       {"书包", "School Bag"}}},
     {{{"大容量", "Large-capacity"}, {"防泼水", "Water-repellent"}, {"轻便", "Lightweight"},
       {"商务", "Business"}, {"休闲", "Casual"}}},
     {{{"15.6英寸", "15.6-inch"}, {"20L", "20L"}, {"35L", "35L"}, {"USB充电口", "USB port"}}},
     {{{"多隔层收纳", "many compartments"}, {"减压肩带", "padded straps"},
       {"防盗拉链", "anti-theft zippers"}, {"通勤出差都合适", "ready for commutes and trips"}}}},
    {"tea", "茶叶", "Tea", 0.8, 150.0, 0.65, 0.0, 0.0, 0.2, 0.55, false,
     {{{"绿茶", "Green Tea"}, {"龙井", "Longjing Tea"}, {"普洱", "Pu-erh Tea"},
       {"乌龙茶", "Oolong Tea"}}},
     {{{"明前", "Pre-Qingming"}, {"特级", "Premium-grade"}, {"高山", "High-mountain"},
       {"陈年", "Aged"}, {"浓香", "Rich-aroma"}}},
     {{{"100g", "100g"}, {"250g", "250g"}, {"500g", "500g"}, {"礼盒装", "Gift Box"}}},
     {{{"原产地直发", "shipped from origin"}, {"手工采摘", "hand-picked leaves"},
       {"回甘持久", "a long sweet finish"}, {"送礼自饮皆宜", "for gifting or yourself"}}}},
    {"smartwatches", "智能手表", "Smartwatches", 0.8, 1200.0, 0.5, 0.2, 0.0, 0.3, -0.1, true,
     {{{"智能手表", "Smartwatch"}, {"运动手环", "Fitness Band"}, {"儿童手表", "Kids Watch"},
       {"GPS手表", "GPS Watch"}}},
     {{{"运动", "Sport"}, {"健康监测", "Health-tracking"}, {"超长待机", "Long-standby"},
       {"防水", "Waterproof"}, {"时尚", "Stylish"}}},
     {{{"46mm", "46mm"}, {"42mm", "42mm"}, {"eSIM版", "eSIM"}, {"蓝牙版", "Bluetooth"}}},
     {{{"心率血氧监测", "heart-rate and SpO2 tracking"}, {"14天续航", "14-day battery"},
       {"100+运动模式", "100+ sport modes"}, {"NFC支付", "NFC payments"}}}},
    {"pet_supplies", "宠物用品", "Pet supplies", 0.9, 80.0, 0.6, -0.2, 0.3, 0.0, 0.0, false,
     {{{"猫粮", "Cat Food"}, {"狗粮", "Dog Food"}, {"猫砂", "Cat Litter"}, {"宠物窝", "Pet Bed"}}},
     {{{"天然", "Natural"}, {"全价", "Complete"}, {"除臭", "Odor-control"}, {"柔软", "Soft"},
       {"无谷", "Grain-free"}}},
     {{{"2kg", "2kg"}, {"5kg", "5kg"}, {"10L", "10L"}, {"中号", "Medium"}}},
     {{{"高蛋白配方", "a high-protein formula"}, {"适口性好", "a taste pets love"},
       {"低尘结团", "low-dust clumping"}, {"四季通用", "all-season comfort"}}}},
}};
// clang-format on

constexpr std::array<Words, 12> kColors = {{{"黑色", "black"},
                                            {"白色", "white"},
                                            {"灰色", "grey"},
                                            {"藏青", "navy"},
                                            {"红色", "red"},
                                            {"粉色", "pink"},
                                            {"米色", "beige"},
                                            {"绿色", "green"},
                                            {"蓝色", "blue"},
                                            {"紫色", "purple"},
                                            {"金色", "gold"},
                                            {"银色", "silver"}}};

constexpr std::array<std::string_view, 26> kLatinHeads = {
    "Ar",  "Bel", "Cor", "Dax",  "El",  "Fen", "Gal", "Hux", "Iri", "Jun", "Kel", "Lum", "Mor",
    "Nix", "Orb", "Pax", "Quin", "Ros", "Sol", "Tal", "Ulo", "Vex", "Wyn", "Xan", "Yor", "Zen"};
constexpr std::array<std::string_view, 10> kLatinTails = {"a",  "o",  "ix",  "on", "us",
                                                          "io", "ex", "ara", "en", "ik"};
constexpr std::array<std::string_view, 20> kHanHeads = {"星", "云", "山", "海", "禾", "木", "青",
                                                        "白", "乐", "安", "优", "美", "嘉", "悦",
                                                        "宜", "初", "拾", "元", "森", "光"};
constexpr std::array<std::string_view, 16> kHanTails = {
    "野", "品", "家", "源", "研", "选", "物", "造", "坊", "宝", "诺", "川", "舍", "屿", "然", "格"};
constexpr std::array<std::string_view, 20> kSeries = {
    "Air",  "Pro",  "Max",  "Lite", "Neo",     "Go",    "Plus",  "Ultra",  "Mini",  "One",
    "Flex", "Edge", "Pure", "Nova", "Classic", "Prime", "Swift", "Active", "Urban", "Zen"};

struct City {
  std::string_view name;
  double weight;
};
constexpr std::array<City, 10> kCities = {{{"Shanghai", 0.17},
                                           {"Beijing", 0.15},
                                           {"Shenzhen", 0.12},
                                           {"Guangzhou", 0.11},
                                           {"Hangzhou", 0.09},
                                           {"Chengdu", 0.09},
                                           {"Wuhan", 0.08},
                                           {"Xi'an", 0.07},
                                           {"Nanjing", 0.07},
                                           {"Chongqing", 0.05}}};

/// Regional tastes everyone in China would recognise; the rest of the
/// city x category table is small seeded noise.
struct CityTaste {
  std::string_view city;
  std::string_view category;
  double bias;
};
constexpr std::array<CityTaste, 20> kCityTastes = {{
    {"Hangzhou", "tea", 0.7},          {"Chengdu", "snacks", 0.5},
    {"Chengdu", "tea", 0.3},           {"Chongqing", "snacks", 0.5},
    {"Chongqing", "cookware", 0.2},    {"Shenzhen", "phones", 0.5},
    {"Shenzhen", "headphones", 0.4},   {"Shenzhen", "smartwatches", 0.4},
    {"Shanghai", "skincare", 0.4},     {"Shanghai", "dresses", 0.3},
    {"Shanghai", "pet_supplies", 0.3}, {"Beijing", "books", 0.5},
    {"Beijing", "running_shoes", 0.2}, {"Guangzhou", "tea", 0.4},
    {"Guangzhou", "cookware", 0.3},    {"Wuhan", "backpacks", 0.3},
    {"Wuhan", "water_bottles", 0.3},   {"Xi'an", "snacks", 0.3},
    {"Nanjing", "books", 0.3},         {"Nanjing", "dresses", 0.2},
}};

/// Share of sessions starting in each local (UTC+8) hour: quiet at night,
/// a lunch bump and an evening peak, like a typical shopping app.
constexpr std::array<double, 24> kDiurnal = {0.6, 0.3, 0.15, 0.1, 0.1, 0.15, 0.4, 0.9,
                                             1.3, 1.4, 1.4,  1.5, 1.9, 1.6,  1.3, 1.3,
                                             1.4, 1.5, 1.8,  2.4, 2.9, 3.0,  2.5, 1.4};
constexpr std::int64_t kLocalUtcOffsetHours = 8;

constexpr std::int64_t kFirstItemId = 100001;
constexpr std::int64_t kReshowWindowS = 7200;  // see docs/shopgen.md, "Exposure"
constexpr std::size_t kRecentClicks = 5;
constexpr std::size_t kNormalisationPairs = 20000;
constexpr int kMaxDrawAttempts = 10;

// Fixed shape constants of the generator (documented in docs/shopgen.md).
constexpr double kBrandQualitySd = 0.4;
constexpr double kItemQualitySd = 0.5;
constexpr double kBrandOffsetSd = 0.15;
constexpr double kItemNoiseSd = 0.12;
constexpr double kUserNoiseSd = 0.15;
constexpr double kPopularitySd = 0.9;
constexpr double kInStockRate = 0.95;
constexpr double kOutOfStockExposure = 0.3;
constexpr double kSignatureNounRate = 0.6;
constexpr double kSameBrandSimilarRate = 0.5;
constexpr double kPreferenceSharpness = 1.5;

// ---------------------------------------------------------------------------
// The model's pair terms, shared by the event simulation and true_scores().
// ---------------------------------------------------------------------------

double affinity(const Truth& truth, const UserTruth& user, std::size_t category) {
  const CategoryTruth& c = truth.categories[category];
  double gender = 0.5 * (c.gender_f + c.gender_m);
  if (user.gender == 0) gender = c.gender_f;
  if (user.gender == 1) gender = c.gender_m;
  return gender + c.age_slope * (static_cast<double>(user.age) - 35.0) / 15.0 +
         truth.location_bias(user.location, category);
}

double dot(std::span<const float> a, std::span<const float> b) {
  double sum = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return sum;
}

struct PairTerms {
  double z_click = 0.0;
  double z_buy = 0.0;
  double affinity = 0.0;
  double quality = 0.0;
  double loyalty = 0.0;
  double over = 0.0;
  double under = 0.0;
  double price_sensitivity = 0.0;
  double dwell_offset = 0.0;
  bool in_stock = true;
};

PairTerms pair_terms(const Truth& truth, std::size_t u, std::size_t i) {
  const UserTruth& user = truth.users[u];
  const ItemTruth& item = truth.items[i];
  PairTerms t;
  t.z_click = (dot(truth.user_latent.row(u), truth.item_latent.row(i)) - truth.interest_mean) /
              truth.interest_sd;
  t.z_buy = (dot(truth.user_purchase_latent.row(u), truth.item_purchase_latent.row(i)) -
             truth.purchase_mean) /
            truth.purchase_sd;
  t.affinity = affinity(truth, user, item.category);
  t.quality = item.quality;
  const bool favorite = std::find(user.favorite_brands.begin(), user.favorite_brands.end(),
                                  item.brand) != user.favorite_brands.end();
  t.loyalty = favorite ? user.brand_loyalty : 0.0;
  const double gap = item.log_price_ratio - user.budget;
  t.over = std::max(0.0, gap);
  t.under = std::max(0.0, -gap);
  t.price_sensitivity = user.price_sensitivity;
  t.dwell_offset = truth.categories[item.category].dwell_offset;
  t.in_stock = item.in_stock;
  return t;
}

double p_click_of(const ModelParams& m, const PairTerms& t) {
  return sigmoid(m.click_bias + m.click_interest * t.z_click + m.click_affinity * t.affinity +
                 m.click_quality * t.quality + m.click_loyalty * t.loyalty -
                 m.click_price * t.price_sensitivity * (t.over + m.price_under_weight * t.under));
}

double p_purchase_of(const ModelParams& m, double rho, const PairTerms& t) {
  if (!t.in_stock) return 0.0;
  const double match = rho * t.z_click + std::sqrt(std::max(0.0, 1.0 - rho * rho)) * t.z_buy;
  return sigmoid(m.purchase_bias + m.purchase_interest * match + m.purchase_quality * t.quality +
                 m.purchase_loyalty * t.loyalty - m.purchase_price * t.price_sensitivity * t.over);
}

double dwell_mu_of(const ModelParams& m, const PairTerms& t) {
  return std::log(m.dwell_median_s) + t.dwell_offset + m.dwell_interest * t.z_click +
         m.dwell_quality * t.quality + m.dwell_affinity * t.affinity;
}

/// E[min(max(X, a), b)] for ln X ~ Normal(mu, sigma).
double clamped_lognormal_mean(double mu, double sigma, double a, double b) {
  const double la = (std::log(a) - mu) / sigma;
  const double lb = (std::log(b) - mu) / sigma;
  const double inside =
      std::exp(mu + 0.5 * sigma * sigma) * (normal_cdf(lb - sigma) - normal_cdf(la - sigma));
  return a * normal_cdf(la) + b * (1.0 - normal_cdf(lb)) + inside;
}

// ---------------------------------------------------------------------------
// Catalogue.
// ---------------------------------------------------------------------------

/// Prices end in 9 (>= 100) or .9 (< 100), as shops print them.
double shop_price(double raw) {
  if (raw >= 100.0) return std::floor(raw / 10.0) * 10.0 + 9.0;
  return std::floor(raw) + 0.9;
}

std::string join_words(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (const std::string_view part : parts) {
    if (part.empty()) continue;
    if (!out.empty()) out += ' ';
    out += part;
  }
  return out;
}

struct BrandDraft {
  std::vector<double> offset;  // latent offset from the category centroid
  std::size_t signature_noun = 0;
  char model_letter = 'A';
};

void make_locations(const ShopConfig& config, Truth& truth) {
  for (const City& city : kCities) {
    truth.locations.emplace_back(city.name);
    truth.location_weights.push_back(city.weight);
  }
  const std::size_t n_cat = truth.categories.size();
  truth.location_bias = Matrix<double>(kCities.size(), n_cat, 0.0);
  Rng rng(config.seed, Stream::locations);
  for (std::size_t l = 0; l < kCities.size(); ++l) {
    for (std::size_t k = 0; k < n_cat; ++k) truth.location_bias(l, k) = rng.normal(0.0, 0.15);
  }
  for (const CityTaste& taste : kCityTastes) {
    for (std::size_t l = 0; l < kCities.size(); ++l) {
      if (kCities[l].name != taste.city) continue;
      for (std::size_t k = 0; k < n_cat; ++k) {
        if (truth.categories[k].key == taste.category) truth.location_bias(l, k) += taste.bias;
      }
    }
  }
}

void make_categories(const ShopConfig& config, Truth& truth) {
  for (std::size_t k = 0; k < config.categories; ++k) {
    const CategorySpec& spec = kCategories[k];
    CategoryTruth c;
    c.key = spec.key;
    c.name_zh = spec.zh;
    c.name_en = spec.en;
    c.share = spec.share;
    c.median_price = spec.median_price;
    c.price_sigma = spec.price_sigma;
    c.dwell_offset = spec.dwell_offset;
    c.gender_f = spec.gender_f;
    c.gender_m = spec.gender_m;
    c.age_slope = spec.age_slope;
    truth.categories.push_back(std::move(c));
  }
}

std::vector<BrandDraft> make_brands(const ShopConfig& config, Truth& truth) {
  std::vector<BrandDraft> drafts;
  std::vector<std::string> used;
  for (std::size_t k = 0; k < truth.categories.size(); ++k) {
    Rng rng(config.seed, Stream::brands, k);
    std::vector<double> weights;
    for (std::size_t j = 0; j < config.brands_per_category; ++j) {
      BrandTruth b;
      b.category = k;
      // Alternate Latin and Chinese names; retry until unique across the shop.
      for (;;) {
        if (j % 2 == 0) {
          b.name = std::string(kLatinHeads[rng.below(kLatinHeads.size())]) +
                   std::string(kLatinTails[rng.below(kLatinTails.size())]);
        } else {
          b.name = std::string(kHanHeads[rng.below(kHanHeads.size())]) +
                   std::string(kHanTails[rng.below(kHanTails.size())]);
        }
        if (std::find(used.begin(), used.end(), b.name) == used.end()) break;
      }
      used.push_back(b.name);
      b.quality = rng.normal(0.0, kBrandQualitySd);
      b.price_premium = 0.6 * b.quality + rng.normal(0.0, 0.25);
      const std::size_t first = rng.below(kSeries.size());
      std::size_t second = rng.below(kSeries.size() - 1);
      if (second >= first) ++second;
      b.series = {std::string(kSeries[first]), std::string(kSeries[second])};
      weights.push_back(1.0 / std::pow(static_cast<double>(j) + 1.0, 0.8));

      BrandDraft d;
      d.offset.resize(config.latent_dim);
      for (double& x : d.offset) x = rng.normal(0.0, kBrandOffsetSd);
      d.signature_noun = rng.below(kCategories[k].nouns.size());
      d.model_letter = static_cast<char>('A' + rng.below(26));
      drafts.push_back(std::move(d));

      truth.categories[k].brands.push_back(truth.brands.size());
      truth.brands.push_back(std::move(b));
    }
    const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
    for (std::size_t j = 0; j < weights.size(); ++j)
      truth.brands[truth.categories[k].brands[j]].share = weights[j] / total;
  }
  return drafts;
}

std::vector<std::vector<double>> make_centroids(const ShopConfig& config, std::size_t n_cat) {
  Rng rng(config.seed, Stream::centroids);
  std::vector<std::vector<double>> centroids(n_cat, std::vector<double>(config.latent_dim));
  for (auto& c : centroids) {
    double norm = 0.0;
    for (double& x : c) {
      x = rng.normal();
      norm += x * x;
    }
    norm = std::sqrt(norm);
    for (double& x : c) x /= norm;
  }
  return centroids;
}

void make_items(const ShopConfig& config, const std::vector<std::vector<double>>& centroids,
                const std::vector<BrandDraft>& brand_drafts, Shop& shop) {
  Truth& truth = shop.truth;
  const std::size_t n_cat = truth.categories.size();
  const std::size_t dim = config.latent_dim;
  const std::size_t buy_dim = config.purchase_latent_dim;
  const double buy_sd = std::pow(static_cast<double>(buy_dim), -0.25);
  truth.item_latent = Matrix<float>(config.items, dim);
  truth.item_purchase_latent = Matrix<float>(config.items, buy_dim);
  truth.items.reserve(config.items);

  std::vector<double> shares;
  for (const CategoryTruth& c : truth.categories) shares.push_back(c.share);
  const std::vector<double> category_cum = cumulative_of(shares);
  std::vector<std::vector<double>> brand_cum(n_cat);
  for (std::size_t k = 0; k < n_cat; ++k) {
    std::vector<double> w;
    for (const std::size_t b : truth.categories[k].brands) w.push_back(truth.brands[b].share);
    brand_cum[k] = cumulative_of(w);
  }

  Rng rng(config.seed, Stream::items);
  for (std::size_t row = 0; row < config.items; ++row) {
    ItemTruth it;
    // The first rows cover every category once, so no category is empty.
    it.category = row < n_cat ? row : rng.categorical(category_cum);
    const CategorySpec& spec = kCategories[it.category];
    const CategoryTruth& cat = truth.categories[it.category];
    it.brand = cat.brands[rng.categorical(brand_cum[it.category])];
    const BrandTruth& brand = truth.brands[it.brand];
    const BrandDraft& draft = brand_drafts[it.brand];

    it.quality = brand.quality + rng.normal(0.0, kItemQualitySd);
    const double log_price = std::log(cat.median_price) + brand.price_premium +
                             0.15 * (it.quality - brand.quality) + rng.normal(0.0, cat.price_sigma);
    const double price = shop_price(std::exp(log_price));
    it.log_price_ratio = std::log(price / cat.median_price);
    it.in_stock = rng.bernoulli(kInStockRate);
    it.popularity = std::exp(rng.normal(0.0, kPopularitySd) + 0.5 * it.quality) *
                    (it.in_stock ? 1.0 : kOutOfStockExposure);

    for (std::size_t d = 0; d < dim; ++d) {
      const double x = centroids[it.category][d] + draft.offset[d] + rng.normal(0.0, kItemNoiseSd);
      truth.item_latent(row, d) = static_cast<float>(x);
    }
    for (std::size_t d = 0; d < buy_dim; ++d)
      truth.item_purchase_latent(row, d) = static_cast<float>(rng.normal(0.0, buy_sd));

    // Title words: the brand, one of its two product lines and a model code
    // are shared by a brand's items; nouns and adjectives by a category's.
    const std::string& series = brand.series[rng.below(brand.series.size())];
    const std::string model =
        std::string(1, draft.model_letter) + std::to_string(10 + rng.below(90));
    const Words& noun = rng.bernoulli(kSignatureNounRate)
                            ? spec.nouns[draft.signature_noun]
                            : spec.nouns[rng.below(spec.nouns.size())];
    const Words& adj = spec.adjectives[rng.below(spec.adjectives.size())];
    const Words& size = spec.specs[rng.below(spec.specs.size())];
    const Words& feature = spec.features[rng.below(spec.features.size())];
    const Words& color = kColors[rng.below(kColors.size())];
    const std::string_view color_zh = spec.color_in_title ? color.zh : std::string_view{};
    const std::string_view color_en = spec.color_in_title ? color.en : std::string_view{};

    const std::string zh_noun = std::string(adj.zh) + std::string(noun.zh);
    const std::string title_zh =
        join_words({brand.name, series, model, zh_noun, size.zh, color_zh});
    const std::string title_en =
        join_words({brand.name, series, model, adj.en, noun.en, size.en, color_en});

    Item item;
    item.id = kFirstItemId + static_cast<ItemId>(row);
    item.category = cat.key;
    item.brand = brand.name;
    item.price = price;
    item.attrs["category_zh"] = cat.name_zh;
    item.attrs["category_en"] = cat.name_en;
    item.attrs["color"] = std::string(color.en);
    item.attrs["color_zh"] = std::string(color.zh);
    item.attrs["in_stock"] = it.in_stock ? "true" : "false";
    if (row % 2 == 0) {
      item.title = title_zh;
      item.attrs["title_en"] = title_en;
      item.description = brand.name + zh_noun + "，" + std::string(feature.zh) + "。";
    } else {
      item.title = title_en;
      item.attrs["title_zh"] = title_zh;
      item.description = std::string(adj.en) + " " + std::string(noun.en) + " from " + brand.name +
                         " with " + std::string(feature.en) + ".";
    }
    shop.catalog.add(std::move(item));
    truth.items.push_back(it);
  }
}

// ---------------------------------------------------------------------------
// Users.
// ---------------------------------------------------------------------------

/// Younger users (students) and retirees watch prices most.
double mean_price_sensitivity(int age) {
  const auto a = static_cast<double>(age);
  if (a <= 25.0) return 1.3;
  if (a <= 45.0) return 1.3 - 0.55 * (a - 25.0) / 20.0;
  return 0.75 + 0.3 * (a - 45.0) / 25.0;
}

void make_users(const ShopConfig& config, const std::vector<std::vector<double>>& centroids,
                Shop& shop) {
  Truth& truth = shop.truth;
  const std::size_t n_cat = truth.categories.size();
  const std::size_t dim = config.latent_dim;
  const std::size_t buy_dim = config.purchase_latent_dim;
  const double buy_sd = std::pow(static_cast<double>(buy_dim), -0.25);
  truth.user_latent = Matrix<float>(config.users, dim);
  truth.user_purchase_latent = Matrix<float>(config.users, buy_dim);
  truth.users.reserve(config.users);
  shop.users.reserve(config.users);

  const std::vector<double> location_cum = cumulative_of(truth.location_weights);
  const std::array<double, 3> gender_weights = {0.49, 0.43, 0.08};
  const std::vector<double> gender_cum = cumulative_of(gender_weights);
  const std::array<double, 3> count_weights = {0.45, 0.35, 0.20};
  const std::vector<double> count_cum = cumulative_of(count_weights);

  Rng rng(config.seed, Stream::users);
  for (std::size_t u = 0; u < config.users; ++u) {
    UserTruth ut;
    double age = 0.0;
    do {
      age = 18.0 + 7.0 * rng.gamma(2.2);
    } while (age >= 71.0);
    ut.age = static_cast<int>(std::floor(age));
    ut.gender = rng.categorical(gender_cum);
    ut.location = rng.categorical(location_cum);

    // Preferred categories follow the demographic affinity.
    std::vector<double> pref(n_cat);
    for (std::size_t k = 0; k < n_cat; ++k)
      pref[k] = std::exp(kPreferenceSharpness * affinity(truth, ut, k));
    const std::size_t n_pref = std::min(n_cat, 1 + rng.categorical(count_cum));
    for (std::size_t j = 0; j < n_pref; ++j) {
      const std::size_t k = rng.categorical(cumulative_of(pref));
      pref[k] = 0.0;
      ut.preferred_categories.push_back(k);
      ut.preference_weights.push_back(rng.gamma(1.0));
    }
    const double weight_sum =
        std::accumulate(ut.preference_weights.begin(), ut.preference_weights.end(), 0.0);
    for (double& w : ut.preference_weights) w /= weight_sum;
    for (const std::size_t k : ut.preferred_categories) {
      std::vector<double> w;
      for (const std::size_t b : truth.categories[k].brands) w.push_back(truth.brands[b].share);
      ut.favorite_brands.push_back(truth.categories[k].brands[rng.categorical(cumulative_of(w))]);
    }

    for (std::size_t d = 0; d < dim; ++d) {
      double x = rng.normal(0.0, kUserNoiseSd);
      for (std::size_t j = 0; j < n_pref; ++j)
        x += ut.preference_weights[j] * centroids[ut.preferred_categories[j]][d];
      truth.user_latent(u, d) = static_cast<float>(x);
    }
    for (std::size_t d = 0; d < buy_dim; ++d)
      truth.user_purchase_latent(u, d) = static_cast<float>(rng.normal(0.0, buy_sd));

    ut.price_sensitivity =
        std::clamp(mean_price_sensitivity(ut.age) + rng.normal(0.0, 0.25), 0.1, 2.5);
    ut.budget = -0.5 * (ut.price_sensitivity - 1.0) + rng.normal(0.0, 0.3);
    const double g2 = rng.gamma(2.0);
    const double g3 = rng.gamma(3.0);
    ut.brand_loyalty = g2 / (g2 + g3);
    ut.activity = rng.gamma(1.5) / 1.5;
    const bool vip = rng.bernoulli(
        sigmoid(-2.8 + 1.2 * std::log(ut.activity) + 0.8 * (1.0 - ut.price_sensitivity)));

    UserProfile profile;
    profile.id = "u" + std::to_string(u + 1);
    profile.age = ut.age;
    if (ut.gender == 0) profile.gender = "f";
    if (ut.gender == 1) profile.gender = "m";
    profile.location = truth.locations[ut.location];
    profile.categorical["vip"] = vip ? "true" : "false";
    shop.users.push_back(std::move(profile));
    truth.users.push_back(std::move(ut));
  }
}

void estimate_normalisation(const ShopConfig& config, Truth& truth) {
  Rng rng(config.seed, Stream::normalisation);
  double s1 = 0.0;
  double s2 = 0.0;
  double b1 = 0.0;
  double b2 = 0.0;
  for (std::size_t n = 0; n < kNormalisationPairs; ++n) {
    const std::size_t u = rng.below(config.users);
    const std::size_t i = rng.below(config.items);
    const double s = dot(truth.user_latent.row(u), truth.item_latent.row(i));
    const double b = dot(truth.user_purchase_latent.row(u), truth.item_purchase_latent.row(i));
    s1 += s;
    s2 += s * s;
    b1 += b;
    b2 += b * b;
  }
  const auto n = static_cast<double>(kNormalisationPairs);
  truth.interest_mean = s1 / n;
  truth.purchase_mean = b1 / n;
  const double interest_var = s2 / n - truth.interest_mean * truth.interest_mean;
  const double purchase_var = b2 / n - truth.purchase_mean * truth.purchase_mean;
  // A degenerate shop (one user, one item) has no spread; keep z finite.
  truth.interest_sd = interest_var > 1e-12 ? std::sqrt(interest_var) : 1.0;
  truth.purchase_sd = purchase_var > 1e-12 ? std::sqrt(purchase_var) : 1.0;
}

// ---------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------

constexpr std::size_t kNoImpression = std::numeric_limits<std::size_t>::max();

struct RawEvent {
  std::int64_t ts = 0;
  std::uint32_t user = 0;
  std::uint32_t item = 0;
  EventType type = EventType::view;
  double dwell_s = -1.0;  // < 0: none
  std::size_t impression = kNoImpression;
};

/// Sampling tables for the exposure mixture.
struct Exposure {
  std::vector<double> global_cum;
  std::vector<std::vector<std::uint32_t>> category_items;
  std::vector<std::vector<double>> category_cum;
  std::vector<std::vector<std::uint32_t>> brand_items;
  std::vector<std::vector<double>> brand_cum;
  std::vector<double> source_cum;

  explicit Exposure(const ShopConfig& config, const Truth& truth)
      : category_items(truth.categories.size()),
        category_cum(truth.categories.size()),
        brand_items(truth.brands.size()),
        brand_cum(truth.brands.size()) {
    std::vector<double> pop;
    pop.reserve(truth.items.size());
    for (const ItemTruth& it : truth.items) pop.push_back(it.popularity);
    global_cum = cumulative_of(pop);
    for (std::size_t i = 0; i < truth.items.size(); ++i) {
      const ItemTruth& it = truth.items[i];
      const auto row = static_cast<std::uint32_t>(i);
      category_items[it.category].push_back(row);
      double sum = category_cum[it.category].empty() ? 0.0 : category_cum[it.category].back();
      category_cum[it.category].push_back(sum + it.popularity);
      brand_items[it.brand].push_back(row);
      sum = brand_cum[it.brand].empty() ? 0.0 : brand_cum[it.brand].back();
      brand_cum[it.brand].push_back(sum + it.popularity);
    }
    const std::array<double, 4> w = {config.exposure_popular, config.exposure_preferred,
                                     config.exposure_similar, config.exposure_random};
    source_cum = cumulative_of(w);
  }

  std::uint32_t from_category(Rng& rng, std::size_t k) const {
    return category_items[k][rng.categorical(category_cum[k])];
  }
  std::uint32_t from_brand(Rng& rng, std::size_t b) const {
    return brand_items[b][rng.categorical(brand_cum[b])];
  }

  /// One draw from the mixture; returns the item and the source actually
  /// used. preference_cum: running sums of user.preference_weights.
  std::pair<std::uint32_t, ExposureSource> draw(
      Rng& rng, const Truth& truth, const UserTruth& user, std::span<const double> preference_cum,
      std::span<const std::uint32_t> recent_clicks) const {
    auto source = static_cast<ExposureSource>(rng.categorical(source_cum));
    if (source == ExposureSource::similar && recent_clicks.empty())
      source = ExposureSource::preferred;
    switch (source) {
      case ExposureSource::popular:
        return {static_cast<std::uint32_t>(rng.categorical(global_cum)), source};
      case ExposureSource::preferred: {
        const std::size_t k = user.preferred_categories[rng.categorical(preference_cum)];
        return {from_category(rng, k), source};
      }
      case ExposureSource::similar: {
        const std::uint32_t seed_item = recent_clicks[rng.below(recent_clicks.size())];
        const ItemTruth& it = truth.items[seed_item];
        if (rng.bernoulli(kSameBrandSimilarRate)) return {from_brand(rng, it.brand), source};
        return {from_category(rng, it.category), source};
      }
      case ExposureSource::random:
        return {static_cast<std::uint32_t>(rng.below(truth.items.size())), source};
    }
    assert(false);
    return {0, source};
  }
};

struct Simulation {
  std::vector<RawEvent> events;
  std::vector<Impression> impressions;
};

void simulate_user(const ShopConfig& config, const Truth& truth, const Exposure& exposure,
                   std::size_t u, Simulation& sim) {
  const ModelParams& m = config.model;
  const UserTruth& user = truth.users[u];
  const auto user32 = static_cast<std::uint32_t>(u);
  Rng rng(config.seed, Stream::events, u);
  const std::vector<double> hour_cum = cumulative_of(kDiurnal);
  const std::vector<double> preference_cum = cumulative_of(user.preference_weights);
  const double session_rate = config.sessions_per_user_per_day * user.activity;

  std::vector<std::pair<std::int64_t, std::uint32_t>> recent_shown;  // (ts, item)
  std::vector<std::uint32_t> recent_clicks;
  std::int64_t prev_end = std::numeric_limits<std::int64_t>::min();

  auto recently_shown = [&](std::uint32_t item, std::int64_t now) {
    return std::any_of(recent_shown.begin(), recent_shown.end(), [&](const auto& entry) {
      return entry.second == item && entry.first > now - kReshowWindowS;
    });
  };

  for (std::size_t day = 0; day < config.days; ++day) {
    const std::int64_t day_start = config.start_ts + static_cast<std::int64_t>(day) * 86400;
    const std::size_t n_sessions = rng.poisson(session_rate);
    std::vector<std::int64_t> starts;
    for (std::size_t s = 0; s < n_sessions; ++s) {
      const auto local_hour = static_cast<std::int64_t>(rng.categorical(hour_cum));
      const std::int64_t utc_hour = (local_hour - kLocalUtcOffsetHours + 24) % 24;
      starts.push_back(day_start + utc_hour * 3600 + static_cast<std::int64_t>(rng.below(3600)));
    }
    std::sort(starts.begin(), starts.end());

    for (const std::int64_t start : starts) {
      std::int64_t t = prev_end == std::numeric_limits<std::int64_t>::min()
                           ? start
                           : std::max(start, prev_end + 300);
      std::erase_if(recent_shown,
                    [&](const auto& entry) { return entry.first <= t - kReshowWindowS; });
      const std::size_t slots = std::max<std::size_t>(
          1, rng.poisson(static_cast<double>(config.impressions_per_session)));
      for (std::size_t slot = 0; slot < slots; ++slot) {
        std::uint32_t item = 0;
        ExposureSource source = ExposureSource::popular;
        bool found = false;
        for (int attempt = 0; attempt < kMaxDrawAttempts && !found; ++attempt) {
          std::tie(item, source) = exposure.draw(rng, truth, user, preference_cum, recent_clicks);
          found = !recently_shown(item, t);
        }
        if (!found) continue;
        recent_shown.emplace_back(t, item);

        const PairTerms terms = pair_terms(truth, u, item);
        Impression imp;
        imp.user = user32;
        imp.item = item;
        imp.p_click = p_click_of(m, terms);
        imp.source = source;
        imp.clicked = rng.bernoulli(imp.p_click);
        const std::size_t imp_index = sim.impressions.size();
        sim.events.push_back({t, user32, item, EventType::view, -1.0, imp_index});

        if (!imp.clicked) {
          sim.impressions.push_back(imp);
          t += 2 + static_cast<std::int64_t>(std::floor(rng.exponential(5.0)));
          continue;
        }
        const double delay = std::exp(rng.normal(std::log(6.0), 0.8));
        const std::int64_t click_ts =
            t + 1 + std::min<std::int64_t>(599, static_cast<std::int64_t>(delay));
        double dwell = std::exp(rng.normal(dwell_mu_of(m, terms), m.dwell_sigma));
        dwell =
            std::clamp(std::round(std::clamp(dwell, m.dwell_min_s, m.dwell_max_s) * 10.0) / 10.0,
                       m.dwell_min_s, m.dwell_max_s);
        sim.events.push_back({click_ts, user32, item, EventType::click, dwell, kNoImpression});

        const double p_buy = p_purchase_of(m, config.task_correlation, terms);
        imp.purchased = rng.bernoulli(p_buy);
        const bool cart =
            imp.purchased
                ? rng.bernoulli(m.cart_before_purchase)
                : rng.bernoulli(std::min(m.cart_abandon_max, m.cart_abandon_scale * p_buy));
        std::int64_t anchor = click_ts;
        if (cart) {
          anchor =
              click_ts + 1 + static_cast<std::int64_t>(std::floor(rng.uniform() * 0.9 * dwell));
          sim.events.push_back({anchor, user32, item, EventType::cart, -1.0, kNoImpression});
        }
        if (imp.purchased) {
          const std::int64_t wait =
              5 + static_cast<std::int64_t>(std::floor(rng.exponential(120.0)));
          const std::int64_t purchase_ts = std::min(anchor + wait, click_ts + 3600);
          sim.events.push_back(
              {purchase_ts, user32, item, EventType::purchase, -1.0, kNoImpression});
        }
        sim.impressions.push_back(imp);
        if (recent_clicks.size() == kRecentClicks) recent_clicks.erase(recent_clicks.begin());
        recent_clicks.push_back(item);
        t = click_ts + static_cast<std::int64_t>(std::ceil(dwell)) + 2;
      }
      prev_end = t;
    }
  }
}

void make_events(const ShopConfig& config, Shop& shop) {
  Truth& truth = shop.truth;
  const Exposure exposure(config, truth);
  Simulation sim;
  for (std::size_t u = 0; u < config.users; ++u) simulate_user(config, truth, exposure, u, sim);

  // Sort by ts, user id (as text), item id, type.
  std::vector<std::uint32_t> by_id(config.users);
  std::iota(by_id.begin(), by_id.end(), 0U);
  std::sort(by_id.begin(), by_id.end(),
            [&](std::uint32_t a, std::uint32_t b) { return shop.users[a].id < shop.users[b].id; });
  std::vector<std::uint32_t> user_rank(config.users);
  for (std::size_t r = 0; r < by_id.size(); ++r)
    user_rank[by_id[r]] = static_cast<std::uint32_t>(r);
  std::stable_sort(sim.events.begin(), sim.events.end(), [&](const RawEvent& a, const RawEvent& b) {
    if (a.ts != b.ts) return a.ts < b.ts;
    if (a.user != b.user) return user_rank[a.user] < user_rank[b.user];
    if (a.item != b.item) return a.item < b.item;
    return a.type < b.type;
  });

  shop.events.reserve(sim.events.size());
  truth.impressions.reserve(sim.impressions.size());
  for (const RawEvent& r : sim.events) {
    Event e;
    e.user = shop.users[r.user].id;
    e.item = kFirstItemId + static_cast<ItemId>(r.item);
    e.type = r.type;
    if (r.dwell_s >= 0.0) e.dwell_s = r.dwell_s;
    e.ts = r.ts;
    if (r.impression != kNoImpression) {
      Impression imp = sim.impressions[r.impression];
      imp.event = shop.events.size();
      truth.impressions.push_back(imp);
    }
    shop.events.push_back(std::move(e));
  }
}

// ---------------------------------------------------------------------------
// Output.
// ---------------------------------------------------------------------------

nlohmann::json config_json(const ShopConfig& c) {
  const ModelParams& m = c.model;
  nlohmann::json model = {
      {"click_bias", m.click_bias},
      {"click_interest", m.click_interest},
      {"click_affinity", m.click_affinity},
      {"click_quality", m.click_quality},
      {"click_loyalty", m.click_loyalty},
      {"click_price", m.click_price},
      {"price_under_weight", m.price_under_weight},
      {"purchase_bias", m.purchase_bias},
      {"purchase_interest", m.purchase_interest},
      {"purchase_quality", m.purchase_quality},
      {"purchase_loyalty", m.purchase_loyalty},
      {"purchase_price", m.purchase_price},
      {"dwell_median_s", m.dwell_median_s},
      {"dwell_sigma", m.dwell_sigma},
      {"dwell_interest", m.dwell_interest},
      {"dwell_quality", m.dwell_quality},
      {"dwell_affinity", m.dwell_affinity},
      {"dwell_min_s", m.dwell_min_s},
      {"dwell_max_s", m.dwell_max_s},
      {"cart_before_purchase", m.cart_before_purchase},
      {"cart_abandon_scale", m.cart_abandon_scale},
      {"cart_abandon_max", m.cart_abandon_max},
  };
  return {
      {"items", c.items},
      {"users", c.users},
      {"days", c.days},
      {"sessions_per_user_per_day", c.sessions_per_user_per_day},
      {"impressions_per_session", c.impressions_per_session},
      {"seed", c.seed},
      {"task_correlation", c.task_correlation},
      {"start_ts", c.start_ts},
      {"categories", c.categories},
      {"brands_per_category", c.brands_per_category},
      {"latent_dim", c.latent_dim},
      {"purchase_latent_dim", c.purchase_latent_dim},
      {"exposure_popular", c.exposure_popular},
      {"exposure_preferred", c.exposure_preferred},
      {"exposure_similar", c.exposure_similar},
      {"exposure_random", c.exposure_random},
      {"model", std::move(model)},
  };
}

nlohmann::json params_json(const Shop& shop) {
  const Truth& truth = shop.truth;
  nlohmann::json categories = nlohmann::json::array();
  for (const CategoryTruth& c : truth.categories) {
    nlohmann::json brands = nlohmann::json::array();
    for (const std::size_t b : c.brands) brands.push_back(truth.brands[b].name);
    categories.push_back({{"key", c.key},
                          {"name_zh", c.name_zh},
                          {"name_en", c.name_en},
                          {"share", c.share},
                          {"median_price", c.median_price},
                          {"price_sigma", c.price_sigma},
                          {"dwell_offset", c.dwell_offset},
                          {"gender_f", c.gender_f},
                          {"gender_m", c.gender_m},
                          {"age_slope", c.age_slope},
                          {"brands", std::move(brands)}});
  }
  nlohmann::json brands = nlohmann::json::array();
  for (const BrandTruth& b : truth.brands) {
    brands.push_back({{"name", b.name},
                      {"category", truth.categories[b.category].key},
                      {"quality", b.quality},
                      {"price_premium", b.price_premium},
                      {"share", b.share},
                      {"series", b.series}});
  }
  nlohmann::json locations = nlohmann::json::array();
  for (std::size_t l = 0; l < truth.locations.size(); ++l) {
    nlohmann::json bias = nlohmann::json::object();
    for (std::size_t k = 0; k < truth.categories.size(); ++k)
      bias[truth.categories[k].key] = truth.location_bias(l, k);
    locations.push_back(
        {{"name", truth.locations[l]}, {"weight", truth.location_weights[l]}, {"bias", bias}});
  }
  std::array<std::size_t, 4> counts{};
  double dwell_sum = 0.0;
  for (const Event& e : shop.events) {
    ++counts[static_cast<std::size_t>(e.type)];
    if (e.dwell_s) dwell_sum += *e.dwell_s;
  }
  const auto ratio = [](std::size_t a, std::size_t b) {
    return b == 0 ? 0.0 : static_cast<double>(a) / static_cast<double>(b);
  };
  nlohmann::json stats = {
      {"events", shop.events.size()},
      {"views", counts[0]},
      {"clicks", counts[1]},
      {"carts", counts[2]},
      {"purchases", counts[3]},
      {"ctr", ratio(counts[1], counts[0])},
      {"cvr", ratio(counts[3], counts[1])},
      {"mean_dwell_s", counts[1] == 0 ? 0.0 : dwell_sum / static_cast<double>(counts[1])},
  };
  return {
      {"format", "funnel-shopgen"},           {"format_version", 1},
      {"first_item_id", kFirstItemId},        {"config", config_json(shop.config)},
      {"interest_mean", truth.interest_mean}, {"interest_sd", truth.interest_sd},
      {"purchase_mean", truth.purchase_mean}, {"purchase_sd", truth.purchase_sd},
      {"categories", std::move(categories)},  {"brands", std::move(brands)},
      {"locations", std::move(locations)},    {"stats", std::move(stats)},
  };
}

std::string item_truth_jsonl(const Shop& shop) {
  std::string out;
  const auto items = shop.catalog.items();
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ItemTruth& it = shop.truth.items[i];
    const nlohmann::json j = {{"id", items[i].id},
                              {"category", shop.truth.categories[it.category].key},
                              {"brand", shop.truth.brands[it.brand].name},
                              {"quality", it.quality},
                              {"popularity", it.popularity},
                              {"log_price_ratio", it.log_price_ratio},
                              {"in_stock", it.in_stock}};
    out += j.dump();
    out += '\n';
  }
  return out;
}

std::string user_truth_jsonl(const Shop& shop) {
  std::string out;
  for (std::size_t u = 0; u < shop.users.size(); ++u) {
    const UserTruth& ut = shop.truth.users[u];
    nlohmann::json preferred = nlohmann::json::array();
    for (const std::size_t k : ut.preferred_categories)
      preferred.push_back(shop.truth.categories[k].key);
    nlohmann::json favorites = nlohmann::json::array();
    for (const std::size_t b : ut.favorite_brands) favorites.push_back(shop.truth.brands[b].name);
    const nlohmann::json j = {{"id", shop.users[u].id},
                              {"age", ut.age},
                              {"gender", ut.gender == 0   ? "f"
                                         : ut.gender == 1 ? "m"
                                                          : "unknown"},
                              {"location", shop.truth.locations[ut.location]},
                              {"preferred_categories", std::move(preferred)},
                              {"preference_weights", ut.preference_weights},
                              {"favorite_brands", std::move(favorites)},
                              {"price_sensitivity", ut.price_sensitivity},
                              {"budget", ut.budget},
                              {"brand_loyalty", ut.brand_loyalty},
                              {"activity", ut.activity}};
    out += j.dump();
    out += '\n';
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Public API.
// ---------------------------------------------------------------------------

const char* to_string(ExposureSource source) noexcept {
  switch (source) {
    case ExposureSource::popular: return "popular";
    case ExposureSource::preferred: return "preferred";
    case ExposureSource::similar: return "similar";
    case ExposureSource::random: return "random";
  }
  return "unknown";
}

namespace {

void require_count(std::size_t value, std::size_t lo, std::size_t hi, const char* field) {
  detail::require(value >= lo && value <= hi, "ShopConfig.", field, " must be in ", lo, "..", hi,
                  ", got ", value);
}

void require_real(double value, double lo, double hi, const char* field) {
  detail::require(std::isfinite(value) && value >= lo && value <= hi, "ShopConfig.", field,
                  " must be a finite number in [", lo, ", ", hi, "], got ", value);
}

}  // namespace

void ShopConfig::validate() const {
  require_count(items, 1, 50'000'000, "items");
  require_count(users, 1, 10'000'000, "users");
  require_count(days, 1, 3650, "days");
  detail::require(std::isfinite(sessions_per_user_per_day) && sessions_per_user_per_day > 0.0 &&
                      sessions_per_user_per_day <= 48.0,
                  "ShopConfig.sessions_per_user_per_day must be in (0, 48], got ",
                  sessions_per_user_per_day);
  require_count(impressions_per_session, 1, 500, "impressions_per_session");
  require_real(task_correlation, -1.0, 1.0, "task_correlation");
  detail::require(start_ts >= 0 && start_ts <= 32503680000LL, "ShopConfig.start_ts must be in ",
                  "0..32503680000 (years 1970..3000), got ", start_ts);
  require_count(categories, 1, kCategories.size(), "categories");
  require_count(brands_per_category, 1, 20, "brands_per_category");
  require_count(latent_dim, 2, 256, "latent_dim");
  require_count(purchase_latent_dim, 1, 256, "purchase_latent_dim");
  constexpr double kHuge = 1e9;
  require_real(exposure_popular, 0.0, kHuge, "exposure_popular");
  require_real(exposure_preferred, 0.0, kHuge, "exposure_preferred");
  require_real(exposure_similar, 0.0, kHuge, "exposure_similar");
  require_real(exposure_random, 0.0, kHuge, "exposure_random");
  detail::require(exposure_popular + exposure_preferred + exposure_similar + exposure_random > 0.0,
                  "ShopConfig.exposure_*: the four exposure weights must not all be 0");

  const ModelParams& m = model;
  constexpr double kCoef = 100.0;
  require_real(m.click_bias, -kCoef, kCoef, "model.click_bias");
  require_real(m.click_interest, -kCoef, kCoef, "model.click_interest");
  require_real(m.click_affinity, -kCoef, kCoef, "model.click_affinity");
  require_real(m.click_quality, -kCoef, kCoef, "model.click_quality");
  require_real(m.click_loyalty, -kCoef, kCoef, "model.click_loyalty");
  require_real(m.click_price, -kCoef, kCoef, "model.click_price");
  require_real(m.price_under_weight, -kCoef, kCoef, "model.price_under_weight");
  require_real(m.purchase_bias, -kCoef, kCoef, "model.purchase_bias");
  require_real(m.purchase_interest, -kCoef, kCoef, "model.purchase_interest");
  require_real(m.purchase_quality, -kCoef, kCoef, "model.purchase_quality");
  require_real(m.purchase_loyalty, -kCoef, kCoef, "model.purchase_loyalty");
  require_real(m.purchase_price, -kCoef, kCoef, "model.purchase_price");
  require_real(m.dwell_median_s, 1e-3, 1e5, "model.dwell_median_s");
  require_real(m.dwell_sigma, 1e-3, 10.0, "model.dwell_sigma");
  require_real(m.dwell_interest, -kCoef, kCoef, "model.dwell_interest");
  require_real(m.dwell_quality, -kCoef, kCoef, "model.dwell_quality");
  require_real(m.dwell_affinity, -kCoef, kCoef, "model.dwell_affinity");
  require_real(m.dwell_min_s, 0.1, 3000.0, "model.dwell_min_s");
  require_real(m.dwell_max_s, 0.1, 3000.0, "model.dwell_max_s");
  detail::require(m.dwell_min_s < m.dwell_max_s, "ShopConfig.model.dwell_min_s (", m.dwell_min_s,
                  ") must be below model.dwell_max_s (", m.dwell_max_s, ")");
  require_real(m.cart_before_purchase, 0.0, 1.0, "model.cart_before_purchase");
  require_real(m.cart_abandon_scale, 0.0, kCoef, "model.cart_abandon_scale");
  require_real(m.cart_abandon_max, 0.0, 1.0, "model.cart_abandon_max");
}

Shop generate_shop(const ShopConfig& config) {
  config.validate();
  Shop shop;
  shop.config = config;
  make_categories(config, shop.truth);
  make_locations(config, shop.truth);
  const std::vector<BrandDraft> drafts = make_brands(config, shop.truth);
  const auto centroids = make_centroids(config, shop.truth.categories.size());
  make_items(config, centroids, drafts, shop);
  make_users(config, centroids, shop);
  estimate_normalisation(config, shop.truth);
  make_events(config, shop);
  return shop;
}

void write_shop(const Shop& shop, const std::filesystem::path& dir) {
  const std::filesystem::path truth_dir = dir / "truth";
  std::error_code ec;
  std::filesystem::create_directories(truth_dir, ec);
  if (ec) {
    detail::fail(ErrorCode::io, "cannot create directory '", truth_dir.string(),
                 "': ", ec.message());
  }
  shop.catalog.save_jsonl(dir / "catalog.jsonl");
  save_users_jsonl(dir / "users.jsonl", shop.users);
  save_events_jsonl(dir / "events.jsonl", shop.events);
  save_npy(truth_dir / "item_latent.npy", shop.truth.item_latent.view());
  save_npy(truth_dir / "user_latent.npy", shop.truth.user_latent.view());
  save_npy(truth_dir / "item_purchase_latent.npy", shop.truth.item_purchase_latent.view());
  save_npy(truth_dir / "user_purchase_latent.npy", shop.truth.user_purchase_latent.view());
  detail::write_file_atomic(truth_dir / "item_truth.jsonl", item_truth_jsonl(shop));
  detail::write_file_atomic(truth_dir / "user_truth.jsonl", user_truth_jsonl(shop));
  detail::write_file_atomic(truth_dir / "params.json", params_json(shop).dump(2) + "\n");
}

TrueScores true_scores(const Shop& shop, std::size_t user_index, std::size_t item_row) {
  const Truth& truth = shop.truth;
  detail::require(user_index < truth.users.size(), "true_scores: user index ", user_index,
                  " out of range (", truth.users.size(), " users)");
  detail::require(item_row < truth.items.size(), "true_scores: item row ", item_row,
                  " out of range (", truth.items.size(), " items)");
  const ModelParams& m = shop.config.model;
  const PairTerms terms = pair_terms(truth, user_index, item_row);
  TrueScores s;
  s.p_click = p_click_of(m, terms);
  s.p_purchase_given_click = p_purchase_of(m, shop.config.task_correlation, terms);
  s.dwell_s =
      clamped_lognormal_mean(dwell_mu_of(m, terms), m.dwell_sigma, m.dwell_min_s, m.dwell_max_s);
  return s;
}

}  // namespace funnel::shopgen
