#pragma once
// The collectives scenario, shared by the Gloo worker (CPU tensors) and the
// NCCL worker (CUDA tensors): every collective's values against a local
// computation of what each rank sent, and the counters against the payload
// formula of core/cost.hpp.
#include <veomni/comm.hpp>

#include <iostream>
#include <map>
#include <sstream>
#include <string>

namespace comm_test {

namespace comm = veomni::comm;
namespace axis = veomni::axis;
using veomni::axes;
using veomni::mesh_shape;


struct check_failed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#define WORKER_CHECK(cond, what)                                                                 \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::ostringstream os_;                                                                    \
      os_ << __FILE__ << ":" << __LINE__ << ": " << #cond << ": " << what;                       \
      throw check_failed(os_.str());                                                             \
    }                                                                                            \
  } while (0)

inline void expect_equal(const at::Tensor& got_any, const at::Tensor& want, const std::string& what) {
  const at::Tensor got = got_any.cpu();
  WORKER_CHECK(got.sizes() == want.sizes() && at::equal(got, want),
               what << "\n  got  " << got.flatten() << "\n  want " << want.flatten());
}

// What rank r holds at element i: distinct everywhere, exact in float.
inline float value(long r, long i) { return static_cast<float>(r * 1000 + i); }

inline at::Tensor values_of(long r, long count, long offset = 0) {
  at::Tensor t = at::empty({count});
  for (long i = 0; i < count; ++i) t[i] = value(r, offset + i);
  return t;
}

// Rows rank r sends to rank j in the uneven all_to_all (some are empty).
inline long rows_to(long r, long j) { return (2 * r + j) % 3; }

// dev: where the communicated tensors live (CPU for Gloo, the rank's GPU for NCCL).
template <class Mesh>
int collectives(const comm::launch_env& env, at::TensorOptions dev) {
  Mesh mesh({.dp_shard = env.world_size}, env);
  auto on = [&](const at::Tensor& t) { return t.to(dev.device()); };
  auto& c = mesh[axes<axis::dp_shard, axis::sp>];
  const long n = c.size(), me = c.rank();
  WORKER_CHECK(n == env.world_size && me == env.rank, "group of " << n);
  std::map<std::string, comm::op_count> expected;
  auto count = [&](const std::string& op, long bytes) {
    if (n == 1) return;  // a group of one runs and counts nothing
    expected[op].calls += 1;
    expected[op].bytes += bytes;
  };

  {  // all_gather: out = the n shards in rank order
    const long k = 5;
    at::Tensor in = on(values_of(me, k)), out = on(at::zeros({n * k}));
    c.all_gather(out, in).wait();
    count("all_gather", k * 4);
    at::Tensor want = at::empty({n * k});
    for (long r = 0; r < n; ++r) want.narrow(0, r * k, k).copy_(values_of(r, k));
    expect_equal(out, want, "all_gather");
  }
  {  // reduce_scatter: out = sum over ranks of their chunk `me`
    const long m = 3;
    at::Tensor in = on(values_of(me, n * m)), out = on(at::zeros({m}));
    c.reduce_scatter(out, in).wait();
    count("reduce_scatter", n * m * 4);
    at::Tensor want = at::zeros({m});
    for (long r = 0; r < n; ++r) want += values_of(r, m, me * m);
    expect_equal(out, want, "reduce_scatter");
  }
  {  // all_gathers and a reduce_scatter in flight at once, waited for out of
     // order: each lands where it should
    const long k = 4, m = 3;
    at::Tensor a_in = on(values_of(me, k)), b_in = on(values_of(me + 100, k)), r_in = on(values_of(me, n * m));
    at::Tensor a = on(at::zeros({n * k})), b = on(at::zeros({n * k})), r = on(at::zeros({m}));
    auto wa = c.all_gather(a, a_in);
    auto wr = c.reduce_scatter(r, r_in);
    auto wb = c.all_gather(b, b_in);
    wb.wait(), wr.wait(), wa.wait();
    count("all_gather", k * 4), count("reduce_scatter", n * m * 4), count("all_gather", k * 4);
    at::Tensor want_a = at::empty({n * k}), want_b = at::empty({n * k}), want_r = at::zeros({m});
    for (long q = 0; q < n; ++q) {
      want_a.narrow(0, q * k, k).copy_(values_of(q, k));
      want_b.narrow(0, q * k, k).copy_(values_of(q + 100, k));
      want_r += values_of(q, m, me * m);
    }
    expect_equal(a, want_a, "all_gather in flight with others");
    expect_equal(b, want_b, "second all_gather in flight");
    expect_equal(r, want_r, "reduce_scatter between two all_gathers");
  }
  {  // all_reduce sum and max, float and int64, three in flight at once
    at::Tensor s = on(values_of(me, 7)), x = on(values_of(me, 7) * (me % 2 ? -1 : 1));
    at::Tensor i = on(at::full({4}, me + 1, at::kLong));
    auto w1 = c.all_reduce(s);
    auto w2 = c.all_reduce(x, comm::reduce_op::max);
    auto w3 = c.all_reduce(i);
    w3.wait(), w2.wait(), w1.wait();
    count("all_reduce", 7 * 4), count("all_reduce", 7 * 4), count("all_reduce", 4 * 8);
    at::Tensor want_s = at::zeros({7}), want_x = at::full({7}, -1e30);
    for (long r = 0; r < n; ++r) {
      want_s += values_of(r, 7);
      want_x = at::maximum(want_x, values_of(r, 7) * (r % 2 ? -1 : 1));
    }
    expect_equal(s, want_s, "all_reduce sum");
    expect_equal(x, want_x, "all_reduce max");
    expect_equal(i, at::full({4}, n * (n + 1) / 2, at::kLong), "all_reduce int64");
  }
  {  // even all_to_all: chunk j of rank r lands in chunk r of rank j
    const long k = 2;
    at::Tensor in = on(values_of(me, n * k)), out = on(at::zeros({n * k}));
    c.all_to_all(out, in).wait();
    count("all_to_all", n * k * 4);
    at::Tensor want = at::empty({n * k});
    for (long r = 0; r < n; ++r) want.narrow(0, r * k, k).copy_(values_of(r, k, me * k));
    expect_equal(out, want, "all_to_all");
  }
  {  // uneven all_to_all with the count exchange (EP dispatch)
    const long width = 2;
    std::vector<std::int64_t> splits;
    std::vector<at::Tensor> blocks;
    auto block = [&](long from, long to) {
      const long rows = rows_to(from, to);
      at::Tensor b = at::empty({rows, width});
      for (long t = 0; t < rows; ++t)
        for (long col = 0; col < width; ++col) b[t][col] = static_cast<float>(from * 10000 + to * 100 + t * 10 + col);
      return b;
    };
    long rows = 0;
    for (long j = 0; j < n; ++j) splits.push_back(rows_to(me, j)), blocks.push_back(block(me, j)), rows += rows_to(me, j);
    at::Tensor in = on(at::cat(blocks));
    auto [out, recv] = comm::all_to_all_uneven(c, in, splits);
    count("all_to_all_counts", n * 8);
    count("all_to_all", rows * width * 4);
    std::vector<at::Tensor> want_blocks;
    for (long r = 0; r < n; ++r) {
      WORKER_CHECK(recv[static_cast<std::size_t>(r)] == rows_to(r, me), "recv count from rank " << r);
      want_blocks.push_back(block(r, me));
    }
    expect_equal(out, at::cat(want_blocks), "uneven all_to_all");
  }
  {  // broadcast from the last rank
    at::Tensor t = on(values_of(me, 6));
    c.broadcast(t, static_cast<int>(n - 1)).wait();
    count("broadcast", 6 * 4);
    expect_equal(t, values_of(n - 1, 6), "broadcast");
  }
  if (n > 1) {  // send / recv around a ring
    const int next = static_cast<int>((me + 1) % n), prev = static_cast<int>((me + n - 1) % n);
    at::Tensor out = on(values_of(me, 3)), in = on(at::zeros({3}));
    auto s = c.send(out, next, 7);
    auto r = c.recv(in, prev, 7);
    s.wait(), r.wait();
    count("send", 3 * 4), count("recv", 3 * 4);
    expect_equal(in, values_of(prev, 3), "send/recv");
  }
  for (const auto type : {at::kBFloat16, at::kHalf}) {  // the 2-byte floats of mixed precision, bit for bit
    // (Gloo builds differ in which of them they take: the communicator moves them as bytes)
    const std::string tn = type == at::kHalf ? "f16" : "bf16";
    auto small = [&](long r, long count_, long offset = 0) {  // integers below 32: sums of 8 are exact in both
      at::Tensor t = at::empty({count_});
      for (long i = 0; i < count_; ++i) t[i] = static_cast<float>((r * 7 + offset + i) % 32);
      return t.to(type);
    };
    {
      const long k = 5;
      at::Tensor in = on(small(me, k)), out = on(at::zeros({n * k}, type));
      c.all_gather(out, in).wait();
      count("all_gather", k * 2);
      at::Tensor want = at::empty({n * k}, type);
      for (long r = 0; r < n; ++r) want.narrow(0, r * k, k).copy_(small(r, k));
      expect_equal(out, want, tn + " all_gather");
    }
    {
      const long m = 3;
      at::Tensor in = on(small(me, n * m)), out = on(at::zeros({m}, type));
      c.reduce_scatter(out, in).wait();
      count("reduce_scatter", n * m * 2);
      at::Tensor want = at::zeros({m});
      for (long r = 0; r < n; ++r) want += small(r, m, me * m).to(at::kFloat);
      expect_equal(out, want.to(type), tn + " reduce_scatter");
    }
    {
      const long k = 2;
      at::Tensor in = on(small(me, n * k)), out = on(at::zeros({n * k}, type));
      c.all_to_all(out, in).wait();
      count("all_to_all", n * k * 2);
      at::Tensor want = at::empty({n * k}, type);
      for (long r = 0; r < n; ++r) want.narrow(0, r * k, k).copy_(small(r, k, me * k));
      expect_equal(out, want, tn + " all_to_all");
    }
    {  // uneven: rows of 3, so the splits count rows, not elements
      const long width = 3;
      std::vector<std::int64_t> splits;
      std::vector<at::Tensor> blocks;
      long rows = 0;
      for (long j = 0; j < n; ++j) {
        splits.push_back(rows_to(me, j)), rows += rows_to(me, j);
        blocks.push_back(small(me * n + j, rows_to(me, j) * width).view({rows_to(me, j), width}));
      }
      auto [out, recv] = comm::all_to_all_uneven(c, on(at::cat(blocks)), splits);
      count("all_to_all_counts", n * 8);
      count("all_to_all", rows * width * 2);
      std::vector<at::Tensor> want_blocks;
      for (long r = 0; r < n; ++r) want_blocks.push_back(small(r * n + me, rows_to(r, me) * width).view({rows_to(r, me), width}));
      expect_equal(out, at::cat(want_blocks), tn + " uneven all_to_all");
    }
    {
      at::Tensor t = on(small(me, 6));
      c.broadcast(t, 0).wait();
      count("broadcast", 6 * 2);
      expect_equal(t, small(0, 6), tn + " broadcast");
    }
    if (n > 1) {
      const int next = static_cast<int>((me + 1) % n), prev = static_cast<int>((me + n - 1) % n);
      at::Tensor out = on(small(me, 3)), in = on(at::zeros({3}, type));
      auto s = c.send(out, next, 8);
      auto r = c.recv(in, prev, 8);
      s.wait(), r.wait();
      count("send", 3 * 2), count("recv", 3 * 2);
      expect_equal(in, small(prev, 3), tn + " send/recv");
    }
  }
  c.barrier().wait();
  count("barrier", 0);

  {  // an axis of size 1 is free: no call, no count
    auto& sp = mesh[axes<axis::sp>];
    WORKER_CHECK(sp.size() == 1, "sp group of " << sp.size());
    at::Tensor t = on(values_of(me, 4));
    WORKER_CHECK(sp.all_reduce(t).completed(), "size-1 all_reduce must finish at once");
    expect_equal(t, values_of(me, 4), "size-1 all_reduce");
    at::Tensor g = on(at::zeros({4}));
    sp.all_gather(g, t).wait();
    expect_equal(g, t, "size-1 all_gather copies");
  }

  std::map<std::string, comm::op_count> got;
  for (const auto& e : mesh.counters().snapshot()) {
    WORKER_CHECK(e.axis == "dp_shard*sp", "unexpected axis in counters: " << e.axis << " (" << e.op << ")");
    got[e.op] = e.count;
  }
  for (const auto& [op, want] : expected)
    WORKER_CHECK(got[op] == want, op << ": counted " << got[op].calls << " calls / " << got[op].bytes
                                     << " B, formula " << want.calls << " / " << want.bytes);
  WORKER_CHECK(got.size() == expected.size(), "counted " << got.size() << " ops, expected " << expected.size());
  std::cout << "collectives ok (" << n << " ranks)" << std::endl;
  return 0;
}

}  // namespace comm_test
