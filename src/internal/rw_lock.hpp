// SPDX-License-Identifier: Apache-2.0
#pragma once

// A writer-preferring reader-writer lock built from std::mutex and
// std::condition_variable (so that ThreadSanitizer sees every hand-over).
//
// Any number of readers hold it at once; a writer holds it alone. Once a
// writer waits, new readers wait too, so a steady stream of searches cannot
// starve add() or remove(). The price: a thread that already holds the lock
// shared must never ask for it shared again (a writer waiting in between
// would deadlock both), so callers take it once per public call.
//
// Meets SharedLockable and Lockable: use std::shared_lock / std::unique_lock.

#include <cassert>
#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace funnel::detail {

class RwLock {
 public:
  RwLock() = default;
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;
  RwLock(RwLock&&) = delete;
  RwLock& operator=(RwLock&&) = delete;
  ~RwLock() = default;

  void lock_shared() {
    std::unique_lock<std::mutex> guard(mutex_);
    readers_cv_.wait(guard, [this] { return !writer_ && waiting_writers_ == 0; });
    ++readers_;
  }

  void unlock_shared() {
    std::lock_guard<std::mutex> guard(mutex_);
    assert(readers_ > 0);
    if (--readers_ == 0 && waiting_writers_ > 0) writers_cv_.notify_one();
  }

  void lock() {
    std::unique_lock<std::mutex> guard(mutex_);
    ++waiting_writers_;
    writers_cv_.wait(guard, [this] { return !writer_ && readers_ == 0; });
    --waiting_writers_;
    writer_ = true;
  }

  void unlock() {
    std::lock_guard<std::mutex> guard(mutex_);
    assert(writer_);
    writer_ = false;
    // A waiting writer goes first; the readers are woken when it unlocks.
    if (waiting_writers_ > 0) {
      writers_cv_.notify_one();
    } else {
      readers_cv_.notify_all();
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable readers_cv_;
  std::condition_variable writers_cv_;
  std::size_t readers_ = 0;
  std::size_t waiting_writers_ = 0;
  bool writer_ = false;
};

}  // namespace funnel::detail
