#pragma once
// <veomni/comm/trace.hpp>: when each collective of one rank was issued,
// completed and waited for. The counters (counters.hpp) say what ran; a trace
// says when, which is what shows where a step waits and how much of its
// communication runs under computation.
//
// On with comm_options::trace (VEOMNI_COMM_TRACE=PREFIX): a mesh's
// communicators record every collective they issue, and the mesh writes
// PREFIX.rank<R>.csv when it is destroyed (or at comm_trace::write()), one
// row per collective in issue order:
//
//   index,op,axis,bytes,issued_ns,done_ns,wait_begin_ns,wait_end_ns,dtype,plan_op,node,where,block,phase,tensor,policy,recompute
//   0,all_gather,dp_shard*sp,1048576,8841203311021,8841204140377,8841203311930,8841204301512,f32,0,lm,root,-1,forward,params,Shard<FSDP>,0
//
// bytes is the counters' payload, dtype the element type moved. The last
// columns say which op of the plan the collective carries out (the runtime
// tags each collective it issues, parallel/executor.hpp): its index in the
// plan's ops, node, where (root, block or layer name), block (-1: once per
// node), phase, tensor role, policy, and whether it is a checkpointed
// block's forward run again in backward. A collective issued outside a plan
// op (a checkpoint's barrier, say) has plan_op -1 and empty fields. Times are std::chrono::steady_clock in ns
// (CLOCK_MONOTONIC on Linux: one clock for all processes of a host, so the
// ranks of one host line up; benchmarks/comm_timeline.py does that).
// done_ns: when the engine reported completion (Gloo: its future's
// callback), -1 where it reports none (NCCL: the GPU finishes on its own
// time). wait_*: the first wait() on the work, -1 if it was never waited for.
// A trace keeps at most `capacity` rows (the first ones) and counts the rest.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"

namespace veomni::comm {

// What the runtime says of a plan op, once per op: the tag it issues the
// op's collectives under. Strings are the plan's (static storage).
struct op_label {
  std::int64_t index = -1;  // in the plan's ops
  std::string_view node, where, policy, phase, tensor, dtype;
  std::string_view collective;  // the collective it must be ("all_gather", ...)
  std::string axis_key;         // the group it must run over ("dp_shard*sp")
};

// One instance of a plan op: the op, and which block's (checkpointing: run again).
struct issue_tag {
  const op_label* op = nullptr;
  std::int64_t block = -1;
  bool recompute = false;
  explicit operator bool() const { return op != nullptr; }
};

struct trace_event {
  std::string_view op;  // a name from counted_names (static storage)
  std::string axis;
  std::int64_t bytes = 0;
  std::string_view dtype;  // element type moved ("f32", "bf16", ...; empty: none)
  issue_tag tag;           // the plan op it carries out (none: outside the plan)
  std::int64_t issued = -1;
  std::atomic<std::int64_t> done{-1};  // set by the engine's thread
  std::int64_t wait_begin = -1, wait_end = -1;
};
using trace_event_ptr = std::shared_ptr<trace_event>;

class comm_trace {
 public:
  static constexpr std::size_t default_capacity = std::size_t{1} << 20;

  // Creates (truncates) the file now, so that a path that cannot be written
  // fails the job before it runs rather than losing the trace at its end.
  explicit comm_trace(std::string path, std::size_t capacity = default_capacity)
      : path_(std::move(path)), capacity_(capacity) {
    if (!std::ofstream(path_, std::ios::trunc))
      throw std::invalid_argument("veomni::comm: cannot create the collective trace file '" + path_ +
                                  "' (comm_options::trace, VEOMNI_COMM_TRACE)");
  }

  static std::int64_t now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // A row for a collective issued now; null once the trace is full.
  trace_event_ptr issued(std::string_view op, const std::string& axis, std::int64_t bytes, std::string_view dtype = {},
                         issue_tag tag = {}) {
    const std::int64_t t = now();
    std::lock_guard lock(mutex_);
    if (events_.size() >= capacity_) return ++dropped_, nullptr;
    auto e = std::make_shared<trace_event>();
    e->op = op, e->axis = axis, e->bytes = bytes, e->dtype = dtype, e->tag = tag, e->issued = t;
    events_.push_back(e);
    return e;
  }

  // The rows recorded so far from row `first` on (what a test holds against
  // the plan's schedule while the job runs).
  std::vector<trace_event_ptr> rows(std::size_t first = 0) const {
    std::lock_guard lock(mutex_);
    if (first >= events_.size()) return {};
    return {events_.begin() + static_cast<std::ptrdiff_t>(first), events_.end()};
  }

  // Writes the rows so far (and says on stderr how many a full trace left
  // out); throws comm_error naming the file if it cannot.
  void write() const {
    std::lock_guard lock(mutex_);
    std::ofstream out(path_, std::ios::trunc);
    out << "index,op,axis,bytes,issued_ns,done_ns,wait_begin_ns,wait_end_ns,dtype,plan_op,node,where,block,phase,tensor,"
           "policy,recompute\n";
    for (std::size_t i = 0; i < events_.size(); ++i) {
      const trace_event& e = *events_[i];
      out << i << ',' << e.op << ',' << e.axis << ',' << e.bytes << ',' << e.issued << ',' << e.done.load() << ','
          << e.wait_begin << ',' << e.wait_end << ',' << e.dtype << ',';
      if (const op_label* l = e.tag.op)
        out << l->index << ',' << l->node << ',' << l->where << ',' << e.tag.block << ',' << l->phase << ',' << l->tensor
            << ',' << l->policy << ',' << (e.tag.recompute ? 1 : 0) << '\n';
      else
        out << "-1,,,-1,,,,0\n";
    }
    out.flush();
    if (!out) throw comm_error("veomni::comm: could not write the collective trace to '" + path_ + "'");
    if (dropped_)
      std::fprintf(stderr, "veomni::comm: the collective trace '%s' holds the first %zu collectives; %zu later ones were not recorded\n",
                   path_.c_str(), events_.size(), dropped_);
  }

  const std::string& path() const { return path_; }
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return events_.size();
  }
  std::size_t dropped() const {
    std::lock_guard lock(mutex_);
    return dropped_;
  }

 private:
  std::string path_;
  std::size_t capacity_;
  mutable std::mutex mutex_;
  std::vector<trace_event_ptr> events_;
  std::size_t dropped_ = 0;
};

namespace detail {
// Marks the first wait on a traced work (no-op without a trace).
struct trace_wait {
  explicit trace_wait(trace_event* e) : e_(e && e->wait_begin < 0 ? e : nullptr) {
    if (e_) e_->wait_begin = comm_trace::now();
  }
  ~trace_wait() {
    if (e_) e_->wait_end = comm_trace::now();
  }
  trace_wait(const trace_wait&) = delete;
  trace_wait& operator=(const trace_wait&) = delete;

 private:
  trace_event* e_;
};
}  // namespace detail

}  // namespace veomni::comm
