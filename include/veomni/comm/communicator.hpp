#pragma once
// <veomni/comm/communicator.hpp>: what every backend offers, as a concept,
// plus the async work handle and the count-exchanging uneven all_to_all.
//
// All collectives run over one group (one axis set of the mesh) and take
// flat, contiguous tensors; "rank" below is the rank in the group. With n
// ranks, k = in.numel():
//   all_gather(out, in)          out[i*k:(i+1)*k] = in of rank i     out: n*k
//   reduce_scatter(out, in)      out = sum over ranks of in[r*m:(r+1)*m], m = out.numel()
//   all_reduce(t, op)            t = op over ranks of t               (sum, max)
//   all_to_all(out, in)          in's chunk j goes to rank j; out's chunk i came from rank i
//   all_to_all(out, in, out_splits, in_splits)
//                                the same with rows (dim 0) split unevenly
//   broadcast(t, root), barrier(), send(t, peer, tag), recv(t, peer, tag)
// Each returns a `work`; wait() blocks until the result is in place or throws
// comm_error naming the op and the axis key after the communicator's timeout.
// A group of one rank runs nothing, counts nothing and returns finished work
// (out-of-place calls copy in to out).
#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "counters.hpp"
#include "error.hpp"
#include "launch_env.hpp"
#include "mesh_layout.hpp"
#include "torch_compat.hpp"

namespace veomni::comm {

enum class reduce_op { sum, max };

// A handle on an issued collective. Default-constructed = already finished.
class work {
 public:
  struct state {
    virtual ~state() = default;
    virtual void wait(std::chrono::milliseconds timeout) = 0;
    virtual bool completed() = 0;
  };

  work() = default;
  work(std::shared_ptr<state> s, std::chrono::milliseconds default_timeout)
      : state_(std::move(s)), timeout_(default_timeout) {}

  void wait() const { wait(timeout_); }
  void wait(std::chrono::milliseconds timeout) const {
    if (state_) state_->wait(timeout);
  }
  bool completed() const { return !state_ || state_->completed(); }

 private:
  std::shared_ptr<state> state_;
  std::chrono::milliseconds timeout_{std::chrono::seconds(60)};
};

template <class W>
concept Work = requires(const W& w, std::chrono::milliseconds t) {
  w.wait();
  w.wait(t);
  { w.completed() } -> std::convertible_to<bool>;
};

template <class C>
concept Communicator = requires(C& c, const C& cc, at::Tensor t, const at::Tensor& in, std::vector<std::int64_t> splits,
                                int peer) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  { cc.axis_key() } -> std::convertible_to<std::string>;
  { cc.ranks() } -> std::convertible_to<std::vector<int>>;
  { c.counters() } -> std::convertible_to<comm_counters&>;
  { c.all_gather(t, in) } -> Work;
  { c.reduce_scatter(t, in) } -> Work;
  { c.all_reduce(t, reduce_op::sum) } -> Work;
  { c.all_to_all(t, in) } -> Work;
  { c.all_to_all(t, in, splits, splits) } -> Work;
  { c.all_to_all_counts(t, in) } -> Work;
  { c.broadcast(t, peer) } -> Work;
  { c.barrier() } -> Work;
  { c.send(in, peer, peer) } -> Work;
  { c.recv(t, peer, peer) } -> Work;
};

namespace detail {
inline std::int64_t bytes_of(const at::Tensor& t) {
  return static_cast<std::int64_t>(t.numel()) * static_cast<std::int64_t>(t.element_size());
}

// Argument checks shared by the backends; messages start with the op.
struct op_check {
  std::string_view op;     // "all_gather"
  const std::string* key;  // "dp_shard*sp"; the message is built only on failure

  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("veomni::comm::" + std::string(op) + " over " + *key + ": " + why);
  }
  void contiguous(const at::Tensor& t, const char* name) const {
    if (!t.is_contiguous()) fail(std::string(name) + " must be contiguous");
  }
  void same_type(const at::Tensor& a, const at::Tensor& b) const {
    if (a.scalar_type() != b.scalar_type()) fail("in and out must have the same dtype");
    if (a.device() != b.device()) fail("in and out must be on the same device");
  }
  void numel(const at::Tensor& t, const char* name, std::int64_t expected, const std::string& rule) const {
    if (t.numel() != expected)
      fail(std::string(name) + " has " + std::to_string(t.numel()) + " elements but " + rule + " = " +
           std::to_string(expected));
  }
  void splits(const at::Tensor& t, const char* name, const std::vector<std::int64_t>& s, int n) const {
    if (static_cast<int>(s.size()) != n)
      fail(std::string(name) + " splits have " + std::to_string(s.size()) + " entries for a group of " + std::to_string(n));
    const auto rows = std::accumulate(s.begin(), s.end(), std::int64_t{0});
    if (t.dim() == 0 || rows != t.size(0))
      fail(std::string(name) + " splits sum to " + std::to_string(rows) + " rows but " + name + " has " +
           std::to_string(t.dim() ? t.size(0) : 0));
  }
};

inline op_check check_of(std::string_view op, const std::string& key) { return {op, &key}; }

// The element type a collective moves, as the trace names it.
inline std::string_view dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return "f32";
    case at::kBFloat16: return "bf16";
    case at::kHalf: return "f16";
    case at::kDouble: return "f64";
    case at::kLong: return "i64";
    case at::kInt: return "i32";
    case at::kByte: return "u8";
    case at::kBool: return "bool";
    default: return "other";
  }
}

// Who a communicator is, for error messages built only when one is thrown:
// "all_reduce over dp_shard*sp (rank 0 of 2)".
struct group_label {
  std::string key;
  int rank = 0;
  int size = 1;
  std::string describe(std::string_view op) const {
    return std::string(op) + " over " + key + " (rank " + std::to_string(rank) + " of " + std::to_string(size) + ")";
  }
};

// What a communicator counts, by op name as in core/collective.hpp.
enum class counted { all_gather, reduce_scatter, all_reduce, all_to_all, all_to_all_counts, broadcast, barrier, send, recv };
inline constexpr std::array<std::string_view, 9> counted_names{
    "all_gather", "reduce_scatter", "all_reduce", "all_to_all", "all_to_all_counts", "broadcast", "barrier", "send", "recv"};
constexpr std::string_view name_of(counted c) { return counted_names[static_cast<std::size_t>(c)]; }

// A communicator's counter slots, looked up once.
class counter_slots {
 public:
  counter_slots(std::shared_ptr<comm_counters> counters, const std::string& key)
      : counters_(std::move(counters)), key_(key) {
    for (std::size_t i = 0; i < counted_names.size(); ++i) slots_[i] = counters_->slot(counted_names[i], key);
  }
  // Counts a call being issued; its trace row when the counters have a trace.
  // Under a plan op's tag (tagged_issue) the call must be that op's
  // collective over that op's group: anything else is not in the plan.
  trace_event_ptr add(counted c, std::int64_t bytes, std::string_view dtype = {}) {
    const issue_tag& tag = counters_->tag();
    if (tag) check_tag(tag, c);
    counters_->add(slots_[static_cast<std::size_t>(c)], bytes);
    comm_trace* t = counters_->trace();
    return t ? t->issued(name_of(c), key_, bytes, dtype, tag) : nullptr;
  }
  comm_counters& counters() { return *counters_; }

 private:
  void check_tag(const issue_tag& tag, counted c) const {
    const op_label& l = *tag.op;
    // an uneven all_to_all starts by exchanging its counts: part of the op
    const bool same = name_of(c) == l.collective || (c == counted::all_to_all_counts && l.collective == "all_to_all");
    if (same && key_ == l.axis_key) return;
    throw std::logic_error("veomni::comm: " + std::string(l.policy) + " on node '" + std::string(l.node) + "' runs " +
                           std::string(name_of(c)) + " over " + key_ + " for its plan op " + std::string(l.collective) +
                           "(" + std::string(l.tensor) + ") over " + l.axis_key + " (" + std::string(l.where) + ", " +
                           std::string(l.phase) + "): a collective the plan does not have");
  }

  std::shared_ptr<comm_counters> counters_;
  std::string key_;
  std::array<op_count*, counted_names.size()> slots_{};
};

// What every backend's communicator is, apart from how it moves bytes: its
// group's label (axis key, rank, size), global ranks, counters and options.
class communicator_identity {
 public:
  communicator_identity(std::string axis_key, std::vector<int> ranks, int rank,
                        std::shared_ptr<comm_counters> counters, comm_options options)
      : label_(std::make_shared<const group_label>(group_label{std::move(axis_key), rank, static_cast<int>(ranks.size())})),
        key_(label_->key),
        ranks_(std::move(ranks)),
        rank_(rank),
        slots_(std::move(counters), key_),
        options_(options) {}

  int rank() const { return rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  const std::string& axis_key() const { return key_; }
  const std::vector<int>& ranks() const { return ranks_; }
  comm_counters& counters() { return slots_.counters(); }
  const comm_options& options() const { return options_; }

 protected:
  std::shared_ptr<const group_label> label_;
  std::string key_;
  std::vector<int> ranks_;
  int rank_ = 0;
  counter_slots slots_;
  comm_options options_;
};
}  // namespace detail

// The result of an uneven all_to_all: the rows received, and how many came
// from each rank.
struct uneven_result {
  at::Tensor output;
  std::vector<std::int64_t> recv_splits;
};

// Sends in_splits[j] rows of `input` to rank j of the group; first exchanges
// the counts (an even all_to_all of n int64, counted as all_to_all_counts),
// then runs the uneven all_to_all (counted as all_to_all, bytes = input).
// This is EP's dispatch: rank r learns how many tokens each peer routes to it.
//
// Worked example, 2 ranks, rows of width 1:
//   rank 0 in [a b c], in_splits {1, 2}  ->  out [a | x]      recv {1, 1}
//   rank 1 in [x y],   in_splits {1, 1}  ->  out [b c | y]    recv {2, 1}
template <Communicator C>
uneven_result all_to_all_uneven(C& c, const at::Tensor& input, const std::vector<std::int64_t>& in_splits) {
  const int n = c.size();
  detail::check_of("all_to_all", c.axis_key()).splits(input, "in", in_splits, n);
  auto counts_opts = at::TensorOptions().dtype(at::kLong).device(input.device());
  at::Tensor send = at::empty({n}, at::TensorOptions().dtype(at::kLong));
  std::copy(in_splits.begin(), in_splits.end(), send.data_ptr<std::int64_t>());
  send = send.to(input.device());
  at::Tensor recv = at::empty({n}, counts_opts);
  c.all_to_all_counts(recv, send).wait();
  at::Tensor recv_cpu = recv.cpu();
  std::vector<std::int64_t> recv_splits(recv_cpu.data_ptr<std::int64_t>(), recv_cpu.data_ptr<std::int64_t>() + n);
  std::vector<std::int64_t> out_shape = input.sizes().vec();
  out_shape[0] = std::accumulate(recv_splits.begin(), recv_splits.end(), std::int64_t{0});
  at::Tensor out = at::empty(out_shape, input.options());
  c.all_to_all(out, input, recv_splits, in_splits).wait();
  return {std::move(out), std::move(recv_splits)};
}

}  // namespace veomni::comm
