// SPDX-License-Identifier: Apache-2.0
#pragma once

/// @file
/// Entry points of the top-level `funnel` commands, listed in main.cpp's
/// command table. Each lives in its own <name>_command.cpp. The pieces that
/// `funnel train` and `funnel eval` share (reading a shop's files, making
/// the catalogue vectors and recording how) are defined in
/// train_command.cpp.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "funnel/catalog.hpp"
#include "funnel/event.hpp"
#include "funnel/hashing_encoder.hpp"
#include "funnel/user.hpp"

namespace funnel::cli {

/// `funnel index build|search|info`: FAISS-backed vector indexes on .npy files.
int run_index(const Invocation& invocation);

/// `funnel encode`: texts (lines or a JSON Lines field) -> vectors (.npy).
int run_encode(const Invocation& invocation);

/// `funnel train`: trains a fine ranker (deep or logistic) on a shop's
/// catalogue, users and events and writes the model directory.
int run_train(const Invocation& invocation);

/// `funnel eval`: evaluates a trained fine ranker on a held-out period of
/// an event log (evaluate_fine_ranker).
int run_eval(const Invocation& invocation);

/// Files of a model directory written by `funnel train` besides the ranker's own.
inline constexpr const char* kVectorsFile =
    "vectors.json";                                         ///< how the catalogue vectors were made
inline constexpr const char* kTrainRunFile = "train.json";  ///< the training run (cut-off, data)
/// The logistic ranker's model file inside the directory.
inline constexpr const char* kLogisticModelFile = "logistic_ranker.json";

/// A shop's files as train and eval read them (--catalog, --users, --events).
struct ShopFiles {
  std::shared_ptr<Catalog> catalog;
  std::vector<UserProfile> users;  ///< empty without --users
  std::vector<Event> events;
};

/// Loads --catalog and --events (required) and --users (optional).
/// @throws UsageError when a required option is missing; funnel::Error for
///         unreadable or malformed files.
ShopFiles load_shop_files(const Args& args);

/// Where catalogue vectors come from: a .npy file with one row per item in
/// catalogue order, or the HashingEncoder over each item's text.
struct VectorSource {
  std::optional<std::filesystem::path> npy;  ///< set: read this file
  HashingEncoderConfig hashing;              ///< otherwise: hash item_text()
};

/// The text the HashingEncoder encodes for an item (as examples/demo_shop
/// does): title, brand, category and description, joined by spaces.
std::string item_text(const Item& item);

/// Makes the vectors and attaches them to the catalogue.
/// @return the recipe document (vectors.json; see docs/cli.md): the source,
///         its settings, and the items, dimension and checksum of the result
/// @throws funnel::Error for an unreadable .npy or one whose row count is
///         not the catalogue's size.
std::string attach_vectors(Catalog& catalog, const VectorSource& source);

/// What a vectors.json recipe says.
struct VectorRecipe {
  VectorSource source;
  std::size_t items = 0;
  std::size_t dim = 0;
  std::string vectors_sha;  ///< checksum64 hex of the float32 values, row-major
};

/// Reads attach_vectors()'s recipe. @throws funnel::Error(io / format)
/// naming the file and field.
VectorRecipe read_vector_recipe(const std::filesystem::path& path);

/// checksum64 hex of the catalogue's vectors (as in the recipe).
std::string vectors_checksum(const Catalog& catalog);

/// The training cut-off recorded in a model directory's train.json: nullopt
/// without the file, INT64_MAX for a run over all events.
/// @throws funnel::Error(format) for a malformed file.
std::optional<std::int64_t> read_training_cutoff(const std::filesystem::path& dir);

}  // namespace funnel::cli
