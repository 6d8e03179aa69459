#pragma once
// <veomni/comm/nccl.hpp>: the CUDA backend, written against NCCL's C API and
// CUDA streams/events (no c10d ProcessGroupNCCL), built when CMake finds CUDA
// and NCCL (VEOMNI_WITH_NCCL). scripts/gpu_comm_check.sh runs its tests.
//
// Ordering: each group owns a non-blocking stream. A collective first makes
// that stream wait on an event recorded on the caller's stream (torch's
// current stream with a CUDA LibTorch), runs there, and records `done`.
// work::wait() polls `done` from the host (so a dead peer cannot hang it:
// past the timeout the communicator is aborted and comm_error names the op
// and axis), then makes the caller's stream wait on `done` before the
// tensors are released.
//
// Communicators are created non-blocking (ncclConfig_t.blocking = 0) so that
// ncclCommInitRankConfig, too, gives up after the timeout.
#if !defined(VEOMNI_WITH_NCCL)
#error "<veomni/comm/nccl.hpp> needs VEOMNI_WITH_NCCL (set by CMake when CUDA and NCCL are found)"
#endif

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "communicator.hpp"
#include "error.hpp"
#include "mesh.hpp"
#include "torch_compat.hpp"

namespace veomni::comm {

namespace detail {

inline void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw comm_error("veomni::comm: " + what + ": CUDA error: " + cudaGetErrorString(e));
}

inline ncclDataType_t nccl_type(at::ScalarType t, const op_check& chk) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kInt: return ncclInt32;
    case at::kLong: return ncclInt64;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    case at::kBool: return ncclUint8;
    default: chk.fail(std::string("dtype ") + c10::toString(t) + " has no NCCL type");
  }
  return ncclFloat32;
}

// One NCCL communicator and its stream; shared by the axis sets whose groups
// hold the same ranks.
struct nccl_group {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  std::atomic<bool> broken{false};

  nccl_group() = default;
  nccl_group(const nccl_group&) = delete;
  nccl_group& operator=(const nccl_group&) = delete;
  ~nccl_group() {
    if (comm) broken ? ncclCommAbort(comm) : ncclCommDestroy(comm);
    if (stream) cudaStreamDestroy(stream);
  }

  // Waits out ncclInProgress (non-blocking communicators) up to `deadline`.
  void settle(ncclResult_t r, const std::string& what, std::chrono::steady_clock::time_point deadline) {
    while (r == ncclInProgress) {
      if (std::chrono::steady_clock::now() > deadline) {
        broken = true;
        throw comm_error("veomni::comm: " + what + " timed out (NCCL still in progress)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
    }
    if (r != ncclSuccess) {
      broken = true;
      throw comm_error("veomni::comm: " + what + " failed: " + ncclGetErrorString(r));
    }
  }
};
using nccl_group_ptr = std::shared_ptr<nccl_group>;

class nccl_work final : public work::state {
 public:
  // ev: the trace row (trace.hpp), or null; its done time stays -1 (the GPU
  // completes the work on its own time; only the host's wait is timed).
  nccl_work(nccl_group_ptr g, cudaEvent_t done, cudaStream_t caller, std::string what, std::vector<at::Tensor> keep,
            trace_event_ptr ev = nullptr)
      : group_(std::move(g)), done_(done), caller_(caller), what_(std::move(what)), keep_(std::move(keep)),
        ev_(std::move(ev)) {}
  ~nccl_work() override {
    if (done_) cudaEventDestroy(done_);
  }

  void wait(std::chrono::milliseconds timeout) override {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    if (finished_) return;
    const trace_wait traced(ev_.get());
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) break;
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      std::ostringstream os;
      os.precision(1);
      if (q != cudaErrorNotReady) {
        os << "veomni::comm: " << what_ << " failed after " << std::fixed << waited.count() << " s: CUDA error: " << cudaGetErrorString(q);
        fail(os.str());
      }
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(group_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        os << "veomni::comm: " << what_ << " failed after " << std::fixed << waited.count() << " s: " << ncclGetErrorString(async);
        fail(os.str());
      }
      if (waited >= timeout) {
        os << "veomni::comm: " << what_ << " timed out after " << std::fixed << waited.count() << " s";
        fail(os.str());
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    cuda_check(cudaStreamWaitEvent(caller_, done_, 0), what_);
    keep_.clear();
    finished_ = true;
  }
  bool completed() override {
    std::lock_guard lock(mutex_);
    return finished_ || error_ || cudaEventQuery(done_) == cudaSuccess;
  }

 private:
  // The communicator cannot be trusted after a timeout or an async error:
  // abort it (on destruction of the group) so queued work is released.
  [[noreturn]] void fail(const std::string& msg) {
    group_->broken = true;
    error_ = std::make_exception_ptr(comm_error(msg));
    std::rethrow_exception(error_);
  }

  std::mutex mutex_;
  nccl_group_ptr group_;
  cudaEvent_t done_ = nullptr;
  cudaStream_t caller_ = nullptr;
  std::string what_;
  std::vector<at::Tensor> keep_;
  bool finished_ = false;
  std::exception_ptr error_;
  trace_event_ptr ev_;
};

inline char* bytes_at(const at::Tensor& t, std::int64_t element) {
  return static_cast<char*>(t.data_ptr()) + element * static_cast<std::int64_t>(t.element_size());
}

}  // namespace detail

class nccl_communicator : public detail::communicator_identity {
 public:
  using group_ptr = detail::nccl_group_ptr;

  nccl_communicator(group_ptr group, std::string axis_key, std::vector<int> ranks, int rank,
                    std::shared_ptr<comm_counters> counters, comm_options options)
      : detail::communicator_identity(std::move(axis_key), std::move(ranks), rank, std::move(counters), options),
        group_(std::move(group)) {}

  work all_gather(at::Tensor out, const at::Tensor& in) {
    const auto chk = check("all_gather", {out, in});
    chk.same_type(out, in);
    chk.numel(out, "out", size() * in.numel(), "group size x in.numel()");
    if (size() == 1) return local_copy(out, in);
    trace_event_ptr ev = slots_.add(detail::counted::all_gather, detail::bytes_of(in), detail::dtype_name(in));
    const auto type = detail::nccl_type(in.scalar_type(), chk);
    return launch(detail::counted::all_gather, std::move(ev), {out, in}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), static_cast<size_t>(in.numel()), type, c, s);
    });
  }

  work reduce_scatter(at::Tensor out, const at::Tensor& in) {
    const auto chk = check("reduce_scatter", {out, in});
    chk.same_type(out, in);
    chk.numel(in, "in", size() * out.numel(), "group size x out.numel()");
    if (size() == 1) return local_copy(out, in);
    trace_event_ptr ev = slots_.add(detail::counted::reduce_scatter, detail::bytes_of(in), detail::dtype_name(in));
    const auto type = detail::nccl_type(in.scalar_type(), chk);
    return launch(detail::counted::reduce_scatter, std::move(ev), {out, in}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), static_cast<size_t>(out.numel()), type, ncclSum, c, s);
    });
  }

  work all_reduce(at::Tensor t, reduce_op op = reduce_op::sum) {
    const auto chk = check("all_reduce", {t});
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::all_reduce, detail::bytes_of(t), detail::dtype_name(t));
    const auto type = detail::nccl_type(t.scalar_type(), chk);
    const ncclRedOp_t red = op == reduce_op::sum ? ncclSum : ncclMax;
    return launch(detail::counted::all_reduce, std::move(ev), {t}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), type, red, c, s);
    });
  }

  work all_to_all(at::Tensor out, const at::Tensor& in) { return even_all_to_all(detail::counted::all_to_all, out, in); }

  work all_to_all(at::Tensor out, const at::Tensor& in, std::vector<std::int64_t> out_splits,
                  std::vector<std::int64_t> in_splits) {
    const auto chk = check("all_to_all", {out, in});
    chk.same_type(out, in);
    chk.splits(in, "in", in_splits, size());
    chk.splits(out, "out", out_splits, size());
    if (size() == 1) return local_copy(out, in);
    trace_event_ptr ev = slots_.add(detail::counted::all_to_all, detail::bytes_of(in), detail::dtype_name(in));
    const std::int64_t row = in.size(0) ? in.numel() / in.size(0) : 0;
    const std::int64_t out_row = out.size(0) ? out.numel() / out.size(0) : row;
    if (out_row != row) chk.fail("in and out rows differ in width");
    return pairwise(detail::counted::all_to_all, std::move(ev), out, in, out_splits, in_splits, row, chk);
  }

  work all_to_all_counts(at::Tensor out, const at::Tensor& in) {
    return even_all_to_all(detail::counted::all_to_all_counts, out, in);
  }

  work broadcast(at::Tensor t, int root) {
    const auto chk = check("broadcast", {t});
    if (root < 0 || root >= size()) chk.fail("root " + std::to_string(root) + " is not a rank of a group of " + std::to_string(size()));
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::broadcast, detail::bytes_of(t), detail::dtype_name(t));
    const auto type = detail::nccl_type(t.scalar_type(), chk);
    return launch(detail::counted::broadcast, std::move(ev), {t}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), type, root, c, s);
    });
  }

  // NCCL has no barrier: an all_reduce of one element stands in (0 bytes
  // counted, as the barrier carries no payload).
  work barrier() {
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::barrier, 0);
    at::Tensor one = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, group_->device));
    return launch(detail::counted::barrier, std::move(ev), {one}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(one.data_ptr(), one.data_ptr(), 1, ncclFloat32, ncclSum, c, s);
    });
  }

  // NCCL matches sends and receives by order per peer; `tag` is not used.
  work send(const at::Tensor& t, int peer, [[maybe_unused]] int tag = 0) {
    const auto chk = check("send", {t});
    peer_check(chk, peer);
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::send, detail::bytes_of(t), detail::dtype_name(t));
    const auto type = detail::nccl_type(t.scalar_type(), chk);
    return launch(detail::counted::send, std::move(ev), {t}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclSend(t.data_ptr(), static_cast<size_t>(t.numel()), type, peer, c, s);
    });
  }

  work recv(at::Tensor t, int peer, [[maybe_unused]] int tag = 0) {
    const auto chk = check("recv", {t});
    peer_check(chk, peer);
    if (size() == 1) return {};
    trace_event_ptr ev = slots_.add(detail::counted::recv, detail::bytes_of(t), detail::dtype_name(t));
    const auto type = detail::nccl_type(t.scalar_type(), chk);
    return launch(detail::counted::recv, std::move(ev), {t}, [&](ncclComm_t c, cudaStream_t s) {
      return ncclRecv(t.data_ptr(), static_cast<size_t>(t.numel()), type, peer, c, s);
    });
  }

 private:
  detail::op_check check(std::string_view op, std::initializer_list<at::Tensor> ts) const {
    auto chk = detail::check_of(op, key_);
    for (const auto& t : ts) {
      chk.contiguous(t, "tensor");
      if (!t.is_cuda()) chk.fail("tensors must be on a CUDA device");
    }
    return chk;
  }

  void peer_check(const detail::op_check& chk, int peer) const {
    if (peer < 0 || peer >= size() || peer == rank_)
      chk.fail("peer " + std::to_string(peer) + " is not another rank of a group of " + std::to_string(size()));
  }

  static work local_copy(at::Tensor& out, const at::Tensor& in) {
    if (out.data_ptr() != in.data_ptr()) out.view({-1}).copy_(in.reshape({-1}));
    return {};
  }

  work even_all_to_all(detail::counted op, at::Tensor& out, const at::Tensor& in) {
    const auto chk = check(detail::name_of(op), {out, in});
    chk.same_type(out, in);
    if (in.numel() % size() != 0)
      chk.fail("in has " + std::to_string(in.numel()) + " elements, not a multiple of the group size " + std::to_string(size()));
    chk.numel(out, "out", in.numel(), "in.numel()");
    if (size() == 1) return local_copy(out, in);
    trace_event_ptr ev = slots_.add(op, detail::bytes_of(in), detail::dtype_name(in));
    const std::vector<std::int64_t> even(static_cast<std::size_t>(size()), in.numel() / size());
    return pairwise(op, std::move(ev), out.view({-1}), in.reshape({-1}), even, even, 1, chk);
  }

  // All-to-all as grouped send/recv pairs: rank j gets in's rows
  // [sum(in_splits[:j]), +in_splits[j]), rows of `row` elements.
  work pairwise(detail::counted op, trace_event_ptr ev, const at::Tensor& out, const at::Tensor& in, const std::vector<std::int64_t>& out_splits,
                const std::vector<std::int64_t>& in_splits, std::int64_t row, const detail::op_check& chk) {
    const auto type = detail::nccl_type(in.scalar_type(), chk);
    return launch(op, std::move(ev), {out, in}, [&](ncclComm_t c, cudaStream_t s) {
      ncclResult_t r = ncclGroupStart();
      std::int64_t send_at = 0, recv_at = 0;
      for (int j = 0; j < size() && (r == ncclSuccess || r == ncclInProgress); ++j) {
        const auto sj = in_splits[static_cast<std::size_t>(j)] * row, rj = out_splits[static_cast<std::size_t>(j)] * row;
        if (sj) r = ncclSend(detail::bytes_at(in, send_at), static_cast<size_t>(sj), type, j, c, s);
        if (rj && (r == ncclSuccess || r == ncclInProgress))
          r = ncclRecv(detail::bytes_at(out, recv_at), static_cast<size_t>(rj), type, j, c, s);
        send_at += sj, recv_at += rj;
      }
      const ncclResult_t end = ncclGroupEnd();
      return r == ncclSuccess ? end : r;
    });
  }

  template <class Enqueue>
  work launch(detail::counted op, trace_event_ptr ev, std::vector<at::Tensor> keep, Enqueue&& enqueue) {
    const std::string what = label_->describe(detail::name_of(op));
    if (group_->broken) throw comm_error("veomni::comm: " + what + ": the communicator was aborted by an earlier failure");
    auto caller = static_cast<cudaStream_t>(compat::current_cuda_stream(group_->device));
    cudaEvent_t ready = nullptr, done = nullptr;
    detail::cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), what);
    detail::cuda_check(cudaEventRecord(ready, caller), what);
    detail::cuda_check(cudaStreamWaitEvent(group_->stream, ready, 0), what);
    cudaEventDestroy(ready);
    group_->settle(enqueue(group_->comm, group_->stream), what, std::chrono::steady_clock::now() + options_.timeout);
    detail::cuda_check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), what);
    detail::cuda_check(cudaEventRecord(done, group_->stream), what);
    return work(std::make_shared<detail::nccl_work>(group_, done, caller, what, std::move(keep), std::move(ev)),
                options_.timeout);
  }

  group_ptr group_;
};

static_assert(Communicator<nccl_communicator>);

struct nccl_backend {
  using communicator = nccl_communicator;
  using group_ptr = detail::nccl_group_ptr;

  // Device = LOCAL_RANK (modulo the visible devices); the group's rank 0
  // makes the unique id and publishes it under the group's store prefix.
  static group_ptr make_group(compat::store_ptr store, int rank, int size, const launch_env& env,
                              const comm_options& options) {
    const std::string what = "creating an NCCL communicator of " + std::to_string(size) + " ranks";
    int devices = 0;
    detail::cuda_check(cudaGetDeviceCount(&devices), what);
    if (devices == 0) throw comm_error("veomni::comm: " + what + ": no CUDA device");
    auto g = std::make_shared<detail::nccl_group>();
    g->device = env.local_rank % devices;
    detail::cuda_check(cudaSetDevice(g->device), what);
    ncclUniqueId id;
    if (rank == 0) {
      if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
        throw comm_error("veomni::comm: " + what + ": ncclGetUniqueId: " + ncclGetErrorString(r));
      const auto* b = reinterpret_cast<const std::uint8_t*>(&id);
      store->set("nccl_unique_id", std::vector<std::uint8_t>(b, b + sizeof id));
    } else {
      const auto bytes = store->get("nccl_unique_id");  // waits, up to the store's timeout
      if (bytes.size() != sizeof id) throw comm_error("veomni::comm: " + what + ": malformed NCCL unique id in the store");
      std::memcpy(&id, bytes.data(), sizeof id);
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const ncclResult_t r = ncclCommInitRankConfig(&g->comm, size, id, rank, &config);
    g->settle(r, what, std::chrono::steady_clock::now() + options.timeout);
    detail::cuda_check(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking), what);
    return g;
  }
};

// One NCCL communicator per axis set of the mesh (mesh.hpp).
using nccl_mesh = device_mesh<nccl_backend>;

}  // namespace veomni::comm
