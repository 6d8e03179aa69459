#pragma once
// <veomni/comm/gloo.hpp>: the CPU backend, over c10d::ProcessGroupGloo.
//
// LibTorch 1.13's Gloo lacks reduce_scatter, _reduce_scatter_base,
// _allgather_base and list alltoall; what it has (allreduce, list allgather,
// alltoall_base, broadcast, barrier, send/recv) carries the rest:
//   all_gather      alltoall_base of n copies of the input into the flat
//                   output (Gloo's list allgather measured ~5x slower)
//   reduce_scatter  alltoall_base + a local sum of the n received chunks.
//                   For S input bytes over n ranks, each rank sends
//                   S (n-1)/n bytes, half of what all_reduce + slice sends
//                   (ring all_reduce: 2 S (n-1)/n), for one S-byte buffer.
//   all_to_all      alltoall_base (even: flat; uneven: rows split by sizes)
#include <chrono>
#include <csignal>
#include <functional>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "communicator.hpp"
#include "error.hpp"
#include "mesh.hpp"
#include "torch_compat.hpp"

namespace veomni::comm {

namespace detail {
// A c10d Work plus the local step that completes our collective (the sum of
// reduce_scatter). Errors are rethrown as comm_error naming op and axis.
class gloo_work final : public work::state {
 public:
  gloo_work(compat::work_ptr w, std::shared_ptr<const group_label> label, counted op, std::function<void()> finish,
            trace_event_ptr ev = nullptr)
      : work_(std::move(w)), label_(std::move(label)), op_(op), finish_(std::move(finish)), ev_(std::move(ev)) {
    if (ev_) compat::on_completion(work_, [e = ev_] { e->done = comm_trace::now(); });
  }

  void wait(std::chrono::milliseconds timeout) override {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    if (done_) return;
    const trace_wait traced(ev_.get());
    const auto start = std::chrono::steady_clock::now();
    try {
      work_->wait(compat::positive(timeout));
      if (finish_) finish_();
    } catch (const std::exception& e) {
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      const bool timed_out = waited >= timeout - std::chrono::milliseconds(50);
      std::ostringstream os;
      os << "veomni::comm: " << label_->describe(name_of(op_)) << (timed_out ? " timed out after " : " failed after ") << std::fixed
         << std::setprecision(1) << waited.count() << " s: " << compat::reason(e);
      error_ = std::make_exception_ptr(comm_error(os.str()));
      std::rethrow_exception(error_);
    }
    done_ = true;
    finish_ = nullptr;
  }
  bool completed() override {
    std::lock_guard lock(mutex_);
    return done_ || error_ || work_->isCompleted();
  }

 private:
  std::mutex mutex_;
  compat::work_ptr work_;
  std::shared_ptr<const group_label> label_;
  counted op_;
  std::function<void()> finish_;
  bool done_ = false;
  std::exception_ptr error_;
  trace_event_ptr ev_;
};

// A contiguous tensor as 1-D, without a view op (each costs a dispatcher
// round trip, microseconds that show at 64 KiB) when it already is.
inline at::Tensor flat(const at::Tensor& t) { return t.dim() == 1 ? t : t.view({-1}); }

// The element types every c10d Gloo build we met takes. The rest depend on
// the build: 1.13 has no bf16 nor int16, Debian's 2.14 no f16 either ("Invalid
// scalar type").
inline bool gloo_native(at::ScalarType s) {
  switch (s) {
    case at::kFloat: case at::kDouble: case at::kByte: case at::kChar: case at::kInt: case at::kLong: case at::kBool:
      return true;
    default:
      return false;
  }
}

// What a collective that only moves data hands Gloo: the tensor itself, or,
// for another element type, its bytes with its rows (dim 0) kept, so uneven
// row splits still count rows. Same bytes on the wire, never computed on.
// Reductions cannot do this: they reduce in f32.
inline at::Tensor movable(const at::Tensor& t) {
  if (gloo_native(t.scalar_type())) return t;
  std::int64_t row = 1;
  for (std::int64_t d = 1; d < t.dim(); ++d) row *= t.size(d);
  return t.view({t.dim() > 0 ? t.size(0) : 1, row}).view(at::kByte);
}

inline void copy_if_distinct(at::Tensor& out, const at::Tensor& in) {
  if (out.data_ptr() != in.data_ptr()) out.view({-1}).copy_(in.reshape({-1}));
}
}  // namespace detail

class gloo_communicator : public detail::communicator_identity {
 public:
  using group_ptr = compat::gloo_group_ptr;

  // group: null for a group of one rank. ranks: the group's global ranks.
  gloo_communicator(group_ptr group, std::string axis_key, std::vector<int> ranks, int rank,
                    std::shared_ptr<comm_counters> counters, comm_options options)
      : detail::communicator_identity(std::move(axis_key), std::move(ranks), rank, std::move(counters), options),
        group_(std::move(group)) {}

  work all_gather(at::Tensor out, const at::Tensor& in) {
    const auto chk = check("all_gather");
    chk.contiguous(in, "in");
    chk.contiguous(out, "out");
    chk.same_type(out, in);
    chk.numel(out, "out", size() * in.numel(), "group size x in.numel()");
    if (size() == 1) return detail::copy_if_distinct(out, in), work{};
    trace_event_ptr ev = slots_.add(detail::counted::all_gather, detail::bytes_of(in), detail::dtype_name(in));
    // alltoall_base with this rank's chunk as every destination's: the same
    // bytes on the wire as a ring all-gather ((n-1) x in per rank), through
    // Gloo's pairwise exchange, which moves them several times faster here
    // than its list allgather (bench_comm), for one n x in staging copy.
    const std::int64_t n = size(), k = in.numel();
    at::Tensor src = at::empty({n * k}, in.options());
    src.view({n, k}).copy_(detail::flat(in).unsqueeze(0).expand({n, k}));
    at::Tensor dst = detail::movable(detail::flat(out));
    src = detail::movable(src);
    std::vector<std::int64_t> even;
    return issue(detail::counted::all_gather, std::move(ev), [&] { return group_->alltoall_base(dst, src, even, even); });
  }

  work reduce_scatter(at::Tensor out, const at::Tensor& in) {
    const auto chk = check("reduce_scatter");
    chk.contiguous(in, "in");
    chk.contiguous(out, "out");
    chk.same_type(out, in);
    chk.numel(in, "in", size() * out.numel(), "group size x out.numel()");
    if (size() == 1) return detail::copy_if_distinct(out, in), work{};
    trace_event_ptr ev = slots_.add(detail::counted::reduce_scatter, detail::bytes_of(in), detail::dtype_name(in));
    const std::int64_t n = size(), m = out.numel();
    at::Tensor received = scratch(n * m, in.options());
    at::Tensor src = detail::movable(detail::flat(in)), dst = detail::movable(received);
    std::vector<std::int64_t> even;
    auto finish = [received, out, n, m]() mutable {
      at::Tensor o = detail::flat(out);
      if (n == 2)  // the same sum, one element-wise pass (ATen's reduction over a leading dim is slower)
        at::add_out(o, received.narrow(0, 0, m), received.narrow(0, m, m));
      else
        at::sum_out(o, received.view({n, m}), {0}, false, out.scalar_type());
    };
    return issue(detail::counted::reduce_scatter, std::move(ev), [&] { return group_->alltoall_base(dst, src, even, even); }, finish);
  }

  work all_reduce(at::Tensor t, reduce_op op = reduce_op::sum) {
    const auto chk = check("all_reduce");
    chk.contiguous(t, "tensor");
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::all_reduce, detail::bytes_of(t), detail::dtype_name(t));
    c10d::AllreduceOptions o;
    o.reduceOp = op == reduce_op::sum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
    std::vector<at::Tensor> ts{t};
    return issue(detail::counted::all_reduce, std::move(ev), [&] { return group_->allreduce(ts, o); });
  }

  // Even: in.numel() divisible by the group size, out.numel() == in.numel().
  work all_to_all(at::Tensor out, const at::Tensor& in) { return even_all_to_all(detail::counted::all_to_all, out, in); }

  // Uneven: rows (dim 0) of in go out by in_splits, rows of out come in by out_splits.
  work all_to_all(at::Tensor out, const at::Tensor& in, std::vector<std::int64_t> out_splits,
                  std::vector<std::int64_t> in_splits) {
    const auto chk = check("all_to_all");
    chk.contiguous(in, "in");
    chk.contiguous(out, "out");
    chk.same_type(out, in);
    chk.splits(in, "in", in_splits, size());
    chk.splits(out, "out", out_splits, size());
    if (size() == 1) return detail::copy_if_distinct(out, in), work{};
    trace_event_ptr ev = slots_.add(detail::counted::all_to_all, detail::bytes_of(in), detail::dtype_name(in));
    at::Tensor src = detail::movable(in), dst = detail::movable(out);
    return issue(detail::counted::all_to_all, std::move(ev), [&] { return group_->alltoall_base(dst, src, out_splits, in_splits); });
  }

  // The split-size exchange before an uneven all_to_all (see all_to_all_uneven).
  work all_to_all_counts(at::Tensor out, const at::Tensor& in) {
    return even_all_to_all(detail::counted::all_to_all_counts, out, in);
  }

  work broadcast(at::Tensor t, int root) {
    const auto chk = check("broadcast");
    chk.contiguous(t, "tensor");
    if (root < 0 || root >= size()) chk.fail("root " + std::to_string(root) + " is not a rank of a group of " + std::to_string(size()));
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::broadcast, detail::bytes_of(t), detail::dtype_name(t));
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<at::Tensor> ts{detail::movable(t)};
    return issue(detail::counted::broadcast, std::move(ev), [&] { return group_->broadcast(ts, o); });
  }

  work barrier() {
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::barrier, 0);
    return issue(detail::counted::barrier, std::move(ev), [&] { return group_->barrier(); });
  }

  work send(const at::Tensor& t, int peer, int tag = 0) {
    const auto chk = check("send");
    chk.contiguous(t, "tensor");
    peer_check(chk, peer);
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::send, detail::bytes_of(t), detail::dtype_name(t));
    std::vector<at::Tensor> ts{detail::movable(t)};
    return issue(detail::counted::send, std::move(ev), [&] { return group_->send(ts, peer, tag); });
  }

  work recv(at::Tensor t, int peer, int tag = 0) {
    const auto chk = check("recv");
    chk.contiguous(t, "tensor");
    peer_check(chk, peer);
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::recv, detail::bytes_of(t), detail::dtype_name(t));
    std::vector<at::Tensor> ts{detail::movable(t)};
    return issue(detail::counted::recv, std::move(ev), [&] { return group_->recv(ts, peer, tag); });
  }

  // The c10d group itself (null for one rank), for code that must call c10d by hand.
  const group_ptr& c10d_group() const { return group_; }

 private:
  detail::op_check check(std::string_view op) const { return detail::check_of(op, key_); }

  void peer_check(const detail::op_check& chk, int peer) const {
    if (peer < 0 || peer >= size() || peer == rank_)
      chk.fail("peer " + std::to_string(peer) + " is not another rank of a group of " + std::to_string(size()));
  }

  work even_all_to_all(detail::counted op, at::Tensor& out, const at::Tensor& in) {
    const auto chk = check(detail::name_of(op));
    chk.contiguous(in, "in");
    chk.contiguous(out, "out");
    chk.same_type(out, in);
    if (in.numel() % size() != 0)
      chk.fail("in has " + std::to_string(in.numel()) + " elements, not a multiple of the group size " + std::to_string(size()));
    chk.numel(out, "out", in.numel(), "in.numel()");
    if (size() == 1) return detail::copy_if_distinct(out, in), work{};
    trace_event_ptr ev = slots_.add(op, detail::bytes_of(in), detail::dtype_name(in));
    at::Tensor dst = detail::movable(detail::flat(out)), src = detail::movable(detail::flat(in));
    std::vector<std::int64_t> even;
    return issue(op, std::move(ev), [&] { return group_->alltoall_base(dst, src, even, even); });
  }

  template <class Issue>
  work issue(detail::counted op, trace_event_ptr ev, Issue&& start, std::function<void()> finish = nullptr) {
    compat::work_ptr w;
    try {
      w = start();
    } catch (const std::exception& e) {
      throw comm_error("veomni::comm: " + label_->describe(detail::name_of(op)) + " could not start: " + compat::reason(e));
    }
    return work(std::make_shared<detail::gloo_work>(std::move(w), label_, op, std::move(finish), std::move(ev)),
                options_.timeout);
  }

  // reduce_scatter's receive buffer, reused while no collective in flight
  // holds it (a fresh 16 MiB buffer costs page faults on every call). An
  // issued reduce_scatter holds either scratch_ itself (the same TensorImpl:
  // the storage's count stays 1) or a narrowed view of it (another holder
  // of the storage) until its work is dropped.
  at::Tensor scratch(std::int64_t elements, const at::TensorOptions& like) {
    if (!scratch_.defined() || scratch_.use_count() > 1 || scratch_.storage().use_count() > 1 ||
        scratch_.numel() < elements || scratch_.scalar_type() != like.dtype().toScalarType())
      scratch_ = at::empty({elements}, like);
    return scratch_.numel() == elements ? scratch_ : scratch_.narrow(0, 0, elements);
  }

  group_ptr group_;
  at::Tensor scratch_;
};

static_assert(Communicator<gloo_communicator>);

// What device_mesh needs to make Gloo groups.
struct gloo_backend {
  using communicator = gloo_communicator;
  using group_ptr = compat::gloo_group_ptr;

  static group_ptr make_group(compat::store_ptr store, int rank, int size, const launch_env& env,
                              const comm_options& options) {
    // A peer that dies mid-collective closes its sockets; writing to one must
    // surface as Gloo's error (and our comm_error), not kill this process
    // with SIGPIPE. Only replaces the default disposition.
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) std::signal(SIGPIPE, SIG_IGN);
    return compat::make_gloo_group(std::move(store), rank, size, env.master_addr, options.timeout);
  }
};

// One Gloo group per axis set of the mesh (mesh.hpp).
using gloo_mesh = device_mesh<gloo_backend>;

}  // namespace veomni::comm
