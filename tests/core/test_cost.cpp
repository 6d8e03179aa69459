// The cost model against the published formulas and against hand counts.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../examples/models.hpp"

using namespace veomni;
using namespace veomni::examples;

namespace {
using dense = graph<nodes<node<"lm", text_decoder>>>;
using moe_only = graph<nodes<node<"lm", moe_text_decoder>>>;

constexpr dense::dims dense_dims() {
  dense::dims d;
  d.at<"lm">() = {.vocab = 1024, .hidden = 256, .layers = 4, .heads = 4, .kv_heads = 4, .head_dim = 64, .ffn = 1024};
  return d;
}
constexpr workload tokens(long t) {
  workload w;
  w.default_tokens = t;
  return w;
}
}  // namespace

TEST_CASE("cost: ZeRO-3 (FSDP) moves 1.5x the bytes of DDP on the wire, less the last block's re-gather") {
  using F = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  using D = plan<dense, recipe<apply<"lm", Shard<DDP>>>>;
  // the blocks: all_gather x2 + reduce_scatter vs all_reduce, but the last
  // block keeps its parameters for backward: 4 + 3 gathers + 4 scatters of
  // 4 blocks, against 4 all_reduces of 2 transfers each
  auto block_wire = [](auto plan_tag, const mesh_shape& m) {
    using P = typename decltype(plan_tag)::type;
    double w = 0;
    for (const auto& o : P::ops)
      if (o.where == "block") w += cost_of<P>(o, dense_dims(), m, tokens(512)).step_wire();
    return w;
  };
  for (long n : {2L, 4L, 8L}) {
    const mesh_shape m{.dp_shard = n};
    const double fsdp = block_wire(std::type_identity<F>{}, m), ddp = block_wire(std::type_identity<D>{}, m);
    // units divide evenly by n here, so FSDP needs no padding: exactly 11/8
    CHECK(fsdp / ddp == doctest::Approx(11.0 / 8.0).epsilon(1e-12));
    // the root stays gathered until its backward: 2 of the 3 transfers
    CHECK(traffic<F>(dense_dims(), m, tokens(512)).wire_bytes < 1.5 * traffic<D>(dense_dims(), m, tokens(512)).wire_bytes);
  }
  static_assert(unit_params<text_decoder>(dense_dims().at<"lm">(), scope::block, true) % 8 == 0);
  static_assert(unit_params<text_decoder>(dense_dims().at<"lm">(), scope::model, true) % 8 == 0);
}

TEST_CASE("cost: backward re-gathers every block but the one forward runs last") {
  // tiny_vl runs vision, proj, lm: backward starts with lm's last block
  static_assert(last_block_node<tiny_vl>() == tiny_vl::index_of("lm"));
  static_assert(last_block_node<dense>() == dense::index_of("lm"));
  using P = plan<tiny_vl, tiny_vl_fsdp>;
  int regathers = 0;
  for (const auto& o : P::ops) {
    if (o.ph != phase::backward || o.coll != collective::all_gather) {
      CHECK_FALSE(o.target.skip_last_block);
      continue;
    }
    ++regathers;
    CHECK(o.where == "block");
    CHECK(o.target.skip_last_block == (o.node == "lm"));  // the vision encoder's last block reshards
    const long blocks = o.node == "lm" ? tiny_vl_dims().at<"lm">().layers
                                       : tiny_vl_dims().at<"vision">().layers;
    const op_cost c = cost_of<P>(o, tiny_vl_dims(), mesh_shape{.dp_shard = 2}, tokens(8));
    CHECK(c.calls == (o.node == "lm" ? blocks - 1 : blocks));
  }
  CHECK(regathers == 2);
  // one block: nothing to re-gather, the op runs zero times
  auto one = dense_dims();
  one.at<"lm">().layers = 1;
  using F = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  for (const auto& o : F::ops)
    if (o.ph == phase::backward && o.coll == collective::all_gather)
      CHECK(cost_of<F>(o, one, mesh_shape{.dp_shard = 2}, tokens(8)).calls == 0);
}

TEST_CASE("cost: Ulysses moves 4Nh/P per rank per attention layer (times (P-1)/P)") {
  using U = plan<dense, recipe<apply<"lm", Split<Ulysses>>>>;
  const long N = 8192, h = 256, b = 4;
  for (long P : {2L, 4L, 8L}) {
    const mesh_shape m{.dp_shard = 1, .sp = P};
    const auto t = *traffic<U>(dense_dims(), m, tokens(N / P)).find(axes<axis::sp>);
    const double forward_per_layer = t.wire_bytes / 2.0 / 4.0;  // half is backward; 4 layers
    CHECK(forward_per_layer == doctest::Approx(4.0 * N * h * b / P * (P - 1) / P));
  }
}

TEST_CASE("cost: EP dispatch sends T*k*h*(E-1)/E per rank under uniform routing") {
  using E = plan<moe_only, recipe<apply<"lm", Experts<EP>>>>;
  moe_only::dims d;
  d.at<"lm">() = {.vocab = 512, .hidden = 128, .layers = 1, .heads = 4, .kv_heads = 4, .head_dim = 32,
                  .experts = 8, .top_k = 2, .expert_ffn = 256};
  const long T = 1000, k = 2, h = 128, b = 4;
  for (long ep : {2L, 4L, 8L}) {
    const mesh_shape m{.dp_shard = ep, .ep = ep};
    const plan_op& dispatch = E::ops[1];
    CHECK(dispatch.tensor == tensor_role::dispatch);
    const op_cost c = cost_of<E>(dispatch, d, m, tokens(T));
    CHECK(c.payload_bytes == T * k * h * b);
    CHECK(c.wire_bytes == doctest::Approx(double(T * k * h * b) * (ep - 1) / ep));
  }
}

TEST_CASE("cost: payload bytes follow the communicator's definition, with padding") {
  using F = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  const auto d = dense_dims();
  const long block = unit_params<text_decoder>(d.at<"lm">(), scope::block, true);
  const mesh_shape m{.dp_shard = 3};  // does not divide the block: padding shows
  const long shard = (block + 2) / 3;
  for (const auto& o : F::ops) {
    if (o.where != "block") continue;
    const op_cost c = cost_of<F>(o, d, m, tokens(1));
    // four blocks; backward re-gathers all but the last
    CHECK(c.calls == (o.ph == phase::backward && o.coll == collective::all_gather ? 3 : 4));
    if (o.coll == collective::all_gather) CHECK(c.payload_bytes == shard * 4);
    if (o.coll == collective::reduce_scatter) CHECK(c.payload_bytes == 3 * shard * 4);
    CHECK(c.wire_bytes == doctest::Approx(double(shard * 2 * 4)));
  }
}

TEST_CASE("cost: an axis of size 1 makes its collectives free") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  const auto t = traffic<P>(omni_moe_dims(), mesh_shape{}, tokens(256));
  CHECK(t.calls == 0);
  CHECK(t.payload_bytes == 0);
  CHECK(t.wire_bytes == 0.0);
  static_assert(plan<omni_moe, omni_fsdp_sp_ep>::ops[0].ph == phase::forward);
  // only sp = 2: only the Ulysses ops run
  const auto s = traffic<P>(omni_moe_dims(), mesh_shape{.sp = 2}, tokens(256));
  CHECK(s.find(axes<axis::sp>)->calls == 16);  // 2 blocks x (4 + 4)
  CHECK(s.find(axes<axis::ep>)->calls == 0);
}

TEST_CASE("cost: gradient accumulation multiplies calls per step") {
  using F = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  workload w = tokens(64);
  const auto one = traffic<F>(dense_dims(), mesh_shape{.dp_shard = 2}, w);
  w.micro_batches = 4;
  const auto four = traffic<F>(dense_dims(), mesh_shape{.dp_shard = 2}, w);
  // everything but the optimizer's one gradient-norm reduction runs per micro-batch
  CHECK(four.calls == 4 * (one.calls - 1) + 1);
  CHECK(four.payload_bytes == 4 * (one.payload_bytes - 4) + 4);
}

TEST_CASE("cost: memory per rank shrinks to about 1/N under FSDP and stays whole under DDP") {
  using F = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  using D = plan<dense, recipe<apply<"lm", Shard<DDP>>>>;
  const auto d = dense_dims();
  const long P = total_params<text_decoder>(d.at<"lm">());
  const auto one = memory<F>(d, mesh_shape{});
  CHECK(one.params == P * 4);
  CHECK(one.grads == P * 4);
  CHECK(one.optimizer == P * 8);
  for (long n : {2L, 4L, 8L}) {
    const auto f = memory<F>(d, mesh_shape{.dp_shard = n});
    CHECK(double(f.params) / double(one.params) == doctest::Approx(1.0 / n).epsilon(1e-3));
    CHECK(memory<D>(d, mesh_shape{.dp_shard = n}).params == P * 4);
  }
  // bf16 parameters with an fp32 master copy
  const precision bf16{.param_bytes = 2, .grad_bytes = 4, .comm_bytes = 2, .optimizer_state_bytes = 8,
                       .master_bytes = 4};
  CHECK(memory<F>(d, mesh_shape{}, bf16).total() == P * (2 + 4 + 12));
}

TEST_CASE("cost: experts under EP are divided by ep, then flat-sharded over ep_dp") {
  using P = plan<moe_only, recipe<apply<"lm", Shard<FSDP>, Experts<EP>>>>;
  const auto md = omni_moe_dims().at<"lm">();
  moe_only::dims d;
  d.at<"lm">() = md;
  const long experts = md.layers * unit_expert_params<moe_text_decoder>(md, scope::block);
  const long dense_root = unit_params<moe_text_decoder>(md, scope::model, false);
  const long dense_block = unit_params<moe_text_decoder>(md, scope::block, false);
  const mesh_shape m{.dp_shard = 4, .ep = 2};  // ep_dp = 2
  const auto mem = memory<P>(d, m);
  const long expect = ceil_div(dense_root, 4) + md.layers * ceil_div(dense_block, 4) + experts / 2 / 2;
  CHECK(mem.params == expect * 4);
}

TEST_CASE("cost: HSDP's replicate all_reduce carries the gradient shard") {
  using H = plan<dense, recipe<apply<"lm", Shard<HSDP>>>>;
  const auto d = dense_dims();
  const mesh_shape m{.dp_replicate = 2, .dp_shard = 2};
  const long block = unit_params<text_decoder>(d.at<"lm">(), scope::block, true);
  for (const auto& o : H::ops)
    if (o.coll == collective::all_reduce && o.where == "block") {
      const op_cost c = cost_of<H>(o, d, m, tokens(1));
      CHECK(c.payload_bytes == ceil_div(block, 2) * 4);
      CHECK(c.group == 2);
    }
}

TEST_CASE("cost: the whole model is priced at compile time") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  constexpr workload w = tokens(128);
  constexpr auto t = traffic<P>(omni_moe_dims(), mesh_shape{.dp_shard = 2, .sp = 2, .ep = 2}, w);
  static_assert(t.payload_bytes > 0);
  static_assert(t.find(axes<axis::ep>) && t.find(axes<axis::sp>) && t.find(axes<axis::ep_dp>) &&
                t.find(axes<axis::dp_shard, axis::sp>));
  constexpr auto mem = memory<P>(omni_moe_dims(), mesh_shape{.dp_shard = 2, .sp = 2, .ep = 2});
  static_assert(mem.params < memory<P>(omni_moe_dims(), mesh_shape{}).params);
  CHECK(t.calls > 0);
}

// No entry is ever dropped: a workload keeps 32 nodes with their own tokens
// and a mesh 8 axes besides the built-in ones; one more is an error, at
// compile time in a constant expression (tests/compile_fail) and an exception
// at run time. (Before, a ninth node and a fifth axis were dropped silently.)
TEST_CASE("workload, training_step and mesh_shape keep every entry, and say when full") {
  constexpr auto nine = [] {
    workload w;
    w.default_tokens = 7;
    constexpr std::string_view names[] = {"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"};
    for (long i = 0; i < 9; ++i) w.with(names[i], 100 + i);
    return w;
  }();
  static_assert(nine.tokens_for("n8") == 108 && nine.tokens_for("n0") == 100 && nine.tokens_for("other") == 7);
  constexpr auto five_axes = [] {
    mesh_shape m;
    for (std::string_view a : {"a", "b", "c", "d", "e"}) m.with(a, 2);
    return m;
  }();
  static_assert(five_axes.world() == 32 && five_axes["e"] == 2);
  constexpr auto nine_streams = [] {
    training_step s;
    constexpr std::string_view names[] = {"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"};
    for (long i = 0; i < 9; ++i) s.with(names[i], 10 + i);
    return s;
  }();
  static_assert(nine_streams.tokens_per_sample("n8") == 18);

  std::vector<std::string> names;
  for (int i = 0; i <= 32; ++i) names.push_back("node" + std::to_string(i));
  workload w;
  for (int i = 0; i < 32; ++i) w.with(names[static_cast<size_t>(i)], i);
  CHECK(w.tokens_for("node31") == 31);
  CHECK_THROWS_WITH_AS(w.with(names[32], 1),
                       "veomni::workload::with(\"node32\"): a workload holds at most 32 nodes whose tokens differ from default_tokens",
                       std::length_error);
  w.with("node3", 300);  // an existing node is updated in place, full or not
  CHECK(w.tokens_for("node3") == 300);
  mesh_shape m;
  for (int i = 0; i < 8; ++i) m.with(names[static_cast<size_t>(i)], 2);
  CHECK(m.world() == 256);
  CHECK_THROWS_WITH_AS(m.with(names[8], 2), "veomni::mesh_shape::with(\"node8\"): a mesh holds at most 8 axes besides the built-in ones",
                       std::length_error);
  training_step s;
  for (int i = 0; i < 32; ++i) s.with(names[static_cast<size_t>(i)], i);
  CHECK_THROWS_WITH_AS(s.with(names[32], 1), "veomni::training_step::with(\"node32\"): a training_step holds at most 32 streams",
                       std::length_error);
}
