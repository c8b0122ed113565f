// SPDX-License-Identifier: Apache-2.0
#pragma once

// A pool of persistent threads that run the parts of short, latency-bound
// calls (one search() of a single query split over its probed lists, say),
// where starting a std::thread per call would cost more than the work: on a
// busy machine a new thread can wait a whole scheduler tick (milliseconds)
// before it runs.
//
// run(parts, fn) calls fn(0) .. fn(parts - 1) exactly once each. The calling
// thread takes parts too, and takes every part no pool thread has started, so
// a call never waits for a pool thread to be scheduled; it only waits for
// parts already running. At most `parts` threads work on one call, so a
// caller that passes parts <= its configured thread count never uses more
// threads than configured. Calls from many threads may run at once.
// Exceptions thrown by fn are rethrown by run() (the first part's first)
// after every part has finished.

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace funnel::detail {

class WorkerPool {
 public:
  WorkerPool() = default;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  // Runs fn(0) .. fn(parts - 1), using up to parts - 1 pool threads (started
  // on first need, then kept) besides the caller.
  void run(std::size_t parts, const std::function<void(std::size_t)>& fn) {
    if (parts <= 1) {
      if (parts == 1) fn(0);
      return;
    }
    auto batch = std::make_shared<Batch>(fn, parts);
    {
      const std::lock_guard lock(mutex_);
      while (threads_.size() < parts - 1) threads_.emplace_back([this] { work(); });
      queue_.push_back(batch);
    }
    wake_.notify_all();
    batch->take_parts();
    {
      // No pool thread needs to look at this batch any more.
      const std::lock_guard lock(mutex_);
      std::erase(queue_, batch);
    }
    batch->wait();
  }

  // The pool shared by every caller in the process.
  static WorkerPool& shared() {
    static WorkerPool pool;
    return pool;
  }

 private:
  struct Batch {
    Batch(const std::function<void(std::size_t)>& f, std::size_t n) : fn(f), parts(n), errors(n) {}

    // Runs parts until none is left unclaimed.
    void take_parts() {
      for (std::size_t i = next.fetch_add(1); i < parts; i = next.fetch_add(1)) {
        try {
          fn(i);
        } catch (...) {
          errors[i] = std::current_exception();
        }
        if (done.fetch_add(1) + 1 == parts) {
          const std::lock_guard lock(mutex);
          finished.notify_all();
        }
      }
    }

    [[nodiscard]] bool claimed() const { return next.load() >= parts; }

    void wait() {
      std::unique_lock lock(mutex);
      finished.wait(lock, [this] { return done.load() == parts; });
      lock.unlock();
      for (const std::exception_ptr& e : errors) {
        if (e) std::rethrow_exception(e);
      }
    }

    const std::function<void(std::size_t)>& fn;  // the caller's; it outlives the batch's use
    const std::size_t parts;
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> done{0};
    std::vector<std::exception_ptr> errors;  // one slot per part
    std::mutex mutex;
    std::condition_variable finished;
  };

  void work() {
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] {
        if (stop_) return true;
        for (const auto& b : queue_) {
          if (!b->claimed()) return true;
        }
        return false;
      });
      if (stop_) return;
      std::shared_ptr<Batch> batch;
      for (const auto& b : queue_) {
        if (!b->claimed()) {
          batch = b;
          break;
        }
      }
      // The caller claims parts without the pool's lock, so the batch that
      // woke this thread may be fully claimed by now.
      if (batch == nullptr) continue;
      lock.unlock();
      batch->take_parts();
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Batch>> queue_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

}  // namespace funnel::detail
