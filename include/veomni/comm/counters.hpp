#pragma once
// <veomni/comm/counters.hpp>: calls and payload bytes per (collective, axis
// key), recorded by every communicator of a mesh, so tests and tools can hold
// what ran against the compile-time plan's cost (core/cost.hpp).
//
// Payload is the cost model's definition, counted once per call on the
// calling rank:
//   all_gather      its input shard            (out = n x in)
//   reduce_scatter  its full (padded) input    (in = n x out)
//   all_reduce      its buffer
//   all_to_all      its input buffer (uneven: the rows this rank sends)
//   broadcast       its buffer;  send / recv  the tensor;  barrier  0 bytes
//   all_to_all_counts  the int64 split sizes an uneven all_to_all exchanges
//                      first; kept apart so "all_to_all" matches the plan.
// A group of one rank runs nothing and counts nothing.
//
// Worked example: all_gather of a 1000-float shard over dp_shard*sp = 4,
// twice:  get("all_gather", "dp_shard*sp") == {calls 2, bytes 8000}.
//
// A mesh made with comm_options::trace also gives its counters a trace
// (trace.hpp): every counted call is then a row with its times as well.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trace.hpp"

namespace veomni::comm {

struct op_count {
  std::int64_t calls = 0;
  std::int64_t bytes = 0;
  friend bool operator==(const op_count&, const op_count&) = default;
};

class comm_counters {
 public:
  struct entry {
    std::string op;
    std::string axis;
    op_count count;
  };

  void add(std::string_view op, std::string_view axis, std::int64_t bytes) { add(slot(op, axis), bytes); }

  // A stable place for one (op, axis): communicators look theirs up once, so
  // counting a call costs a lock and two adds, not a map search.
  op_count* slot(std::string_view op, std::string_view axis) {
    std::lock_guard lock(mutex_);
    return &counts_[make_key(op, axis)];
  }
  void add(op_count* s, std::int64_t bytes) {
    std::lock_guard lock(mutex_);
    s->calls += 1;
    s->bytes += bytes;
  }
  op_count get(std::string_view op, std::string_view axis) const {
    std::lock_guard lock(mutex_);
    auto it = counts_.find(make_key(op, axis));
    return it == counts_.end() ? op_count{} : it->second;
  }
  // All collectives over one axis key (what cost.hpp's traffic() groups by).
  op_count axis_total(std::string_view axis) const {
    std::lock_guard lock(mutex_);
    op_count t;
    for (const auto& [k, c] : counts_)
      if (k.second == axis) t.calls += c.calls, t.bytes += c.bytes;
    return t;
  }
  std::vector<entry> snapshot() const {
    std::lock_guard lock(mutex_);
    std::vector<entry> out;
    for (const auto& [k, c] : counts_)
      if (c.calls) out.push_back({k.first, k.second, c});
    return out;
  }
  bool empty() const {
    std::lock_guard lock(mutex_);
    for (const auto& [k, c] : counts_)
      if (c.calls) return false;
    return true;
  }
  // Zeroes every count (slots stay valid; a trace keeps its rows).
  void reset() {
    std::lock_guard lock(mutex_);
    for (auto& [k, c] : counts_) c = {};
  }

  // The trace every counted call is recorded in too (null: none).
  void set_trace(std::shared_ptr<comm_trace> t) { trace_ = std::move(t); }
  comm_trace* trace() const { return trace_.get(); }

  // The plan op the next collectives carry out (set by tagged_issue around
  // them; one issuing thread per mesh, the runtime's). Communicators check
  // each call against it and record it in the trace.
  const issue_tag& tag() const { return tag_; }
  void set_tag(issue_tag t) { tag_ = t; }

 private:
  using key_type = std::pair<std::string, std::string>;
  static key_type make_key(std::string_view op, std::string_view axis) { return {std::string(op), std::string(axis)}; }
  mutable std::mutex mutex_;
  std::map<key_type, op_count> counts_;
  std::shared_ptr<comm_trace> trace_;
  issue_tag tag_;
};

// Issues the collectives of one plan op instance under its tag:
//   { tagged_issue t(mesh.counters(), {&label, block}); comm.all_to_all(out, in); }
class tagged_issue {
 public:
  tagged_issue(comm_counters& c, issue_tag t) : c_(c), old_(c.tag()) { c_.set_tag(t); }
  ~tagged_issue() { c_.set_tag(old_); }
  tagged_issue(const tagged_issue&) = delete;
  tagged_issue& operator=(const tagged_issue&) = delete;

 private:
  comm_counters& c_;
  issue_tag old_;
};

}  // namespace veomni::comm
