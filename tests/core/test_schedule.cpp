// The schedule (core/schedule.hpp): every op instance of the plan once, at
// the point of the computation that issues it, in an order derived from the
// plan by the documented moves (prefetch, reduce lag, recompute).
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "../../examples/models.hpp"
#include "../../examples/zero_policies.hpp"

using namespace veomni;

namespace {
using dense = graph<nodes<node<"lm", text_decoder>>>;
constexpr dense::dims dense_dims(long layers = 3) {
  dense::dims d;
  d.at<"lm">() = {.vocab = 64, .hidden = 16, .layers = layers, .heads = 4, .kv_heads = 2, .head_dim = 4, .ffn = 32};
  return d;
}

// "AG params b1 @block_begin(0)" per instance: what a reader compares with the header's worked example.
template <class P>
std::vector<std::string> lines(const std::vector<scheduled_op>& seq, bool issued_only = true) {
  std::vector<std::string> out;
  for (const auto& s : seq) {
    if (issued_only && !s.issued) continue;
    const plan_op& o = P::ops[s.op];
    std::string l = std::string(to_string(o.ph)).substr(0, 3) + " " + std::string(to_string(o.coll)) + " " +
                    std::string(to_string(o.tensor)) + (s.block >= 0 ? " b" + std::to_string(s.block) : "") +
                    (s.recompute ? " re" : "") + " @" + std::string(to_string(s.when.kind));
    if (s.when.kind == trigger_kind::block_begin || s.when.kind == trigger_kind::block_backward_begin)
      l += "(" + std::to_string(s.when.block) + ")";
    out.push_back(l);
  }
  return out;
}

// The plain expansion: each op of the plan once per repetition.
template <class P>
std::multiset<std::tuple<std::size_t, long, bool>> plain(const typename P::model::dims& d, bool checkpoint) {
  using G = typename P::model;
  std::multiset<std::tuple<std::size_t, long, bool>> out;
  for (std::size_t i = 0; i < P::size; ++i) {
    const plan_op& o = P::ops[i];
    long blocks = 0;
    for_each_node<G>([&](auto I) {
      if (I.value == o.node_index) blocks = G::template component_at<I.value>::blocks(veomni::get<I.value>(d));
    });
    if (o.repeat != scope::block) {
      out.insert({i, -1, false});
      continue;
    }
    const long n = o.target.skip_last_block ? blocks - 1 : blocks;
    for (long b = 0; b < n; ++b) {
      out.insert({i, b, false});
      if (checkpoint && o.ph == phase::forward && !o.target.is_unit) out.insert({i, b, true});
    }
  }
  return out;
}
template <class P>
std::multiset<std::tuple<std::size_t, long, bool>> scheduled(const step_schedule& s) {
  std::multiset<std::tuple<std::size_t, long, bool>> out;
  for (const auto* seq : {&s.micro, &s.optimizer})
    for (const auto& x : *seq) out.insert({x.op, x.block, x.recompute});
  return out;
}
}  // namespace

TEST_CASE("schedule: FSDP + Ulysses on dense_lm, as the header's worked example says") {
  using P = plan<dense, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>>;
  const step_schedule s = schedule<P>(dense_dims(2), mesh_shape{.dp_shard = 2, .sp = 2});
  const std::vector<std::string> want{
      "for all_gather params @node_begin",
      "for all_gather params b0 @block_begin(0)",
      "for all_gather params b1 @block_begin(0)",  // prefetched as block 0 starts
      "for all_to_all q b0 @request", "for all_to_all k b0 @request", "for all_to_all v b0 @request",
      "for all_to_all attn_out b0 @request",
      "for all_to_all q b1 @request", "for all_to_all k b1 @request", "for all_to_all v b1 @request",
      "for all_to_all attn_out b1 @request",
      "for all_reduce loss_stats @request",
      // block 1 kept its parameters (backward starts with it); block 0's regather is prefetched as block 1's backward starts
      "bac all_gather params b0 @block_backward_begin(1)",
      "bac all_to_all attn_out b1 @request", "bac all_to_all v b1 @request", "bac all_to_all k b1 @request",
      "bac all_to_all q b1 @request",
      "bac reduce_scatter grads b1 @grads_ready",
      "bac all_to_all attn_out b0 @request", "bac all_to_all v b0 @request", "bac all_to_all k b0 @request",
      "bac all_to_all q b0 @request",
      "bac reduce_scatter grads b0 @grads_ready",
      "bac reduce_scatter grads @grads_ready",
  };
  CHECK(lines<P>(s.micro) == want);
  CHECK(lines<P>(s.optimizer) == std::vector<std::string>{"opt all_reduce grad_norm @request"});
}

TEST_CASE("schedule: every op instance of the plan exactly once, for each recipe, mesh and option") {
  using omni = models::omni_moe;
  using O = plan<omni, examples::omni_fsdp_sp_ep>;
  using H = plan<omni, recipe<apply<"vision", Shard<HSDP>>, apply<"vision_proj", Shard<HSDP>>, apply<"audio", Shard<HSDP>>,
                              apply<"audio_proj", Shard<HSDP>>, apply<"lm", Shard<HSDP>, Split<Ulysses>, Experts<EP>>,
                              apply<"image_out", Shard<HSDP>>>>;
  using Z = plan<dense, recipe<apply<"lm", Shard<user::ZeRO2>>>>;
  const auto od = models::omni_moe_tiny();
  for (bool ck : {false, true})
    for (bool pre : {false, true})
      for (int lag : {0, 1, 2}) {
        const schedule_options opt{.checkpoint = ck, .forward_prefetch = pre, .backward_prefetch = pre,
                                   .max_reduces_in_flight = lag};
        CHECK(scheduled<O>(schedule<O>(od, mesh_shape{.dp_shard = 2, .sp = 2, .ep = 2}, opt)) == plain<O>(od, ck));
        CHECK(scheduled<H>(schedule<H>(od, mesh_shape{.dp_replicate = 2, .dp_shard = 2, .ep = 2}, opt)) == plain<H>(od, ck));
        CHECK(scheduled<Z>(schedule<Z>(dense_dims(), mesh_shape{.dp_shard = 4}, opt)) == plain<Z>(dense_dims(), ck));
      }
}

TEST_CASE("schedule: without prefetch, each unit's gathers come at its own block, as the plan orders them") {
  using P = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  const step_schedule s =
      schedule<P>(dense_dims(2), mesh_shape{.dp_shard = 2}, {.forward_prefetch = false, .backward_prefetch = false});
  const std::vector<std::string> want{
      "for all_gather params @node_begin",        "for all_gather params b0 @block_begin(0)",
      "for all_gather params b1 @block_begin(1)", "for all_reduce loss_stats @request",
      "bac reduce_scatter grads b1 @grads_ready", "bac all_gather params b0 @block_backward_begin(0)",
      "bac reduce_scatter grads b0 @grads_ready", "bac reduce_scatter grads @grads_ready"};
  CHECK(lines<P>(s.micro) == want);
}

TEST_CASE("schedule: HSDP's all_reduce over replicas goes after the next reduce_scatter (reduce lag), the last at the end") {
  using P = plan<dense, recipe<apply<"lm", Shard<HSDP>>>>;
  const auto d = dense_dims(2);
  auto backward = [&](int lag) {
    std::vector<std::string> out;
    for (const auto& l : lines<P>(schedule<P>(d, mesh_shape{.dp_replicate = 2, .dp_shard = 2},
                                              {.max_reduces_in_flight = lag})
                                      .micro))
      if (l.rfind("bac", 0) == 0 && l.find("all_gather") == std::string::npos) out.push_back(l);
    return out;
  };
  CHECK(backward(1) == std::vector<std::string>{
                           "bac reduce_scatter grads b1 @grads_ready", "bac reduce_scatter grads b0 @grads_ready",
                           "bac all_reduce grads b1 @grads_ready",  // after the next reduce_scatter
                           "bac reduce_scatter grads @grads_ready", "bac all_reduce grads b0 @grads_ready",
                           "bac all_reduce grads @backward_end"});
  CHECK(backward(0) == std::vector<std::string>{
                           "bac reduce_scatter grads b1 @grads_ready", "bac reduce_scatter grads b0 @grads_ready",
                           "bac reduce_scatter grads @grads_ready", "bac all_reduce grads b1 @backward_end",
                           "bac all_reduce grads b0 @backward_end", "bac all_reduce grads @backward_end"});
  // a shard group of one: the reduce_scatter is not issued, the all_reduce stays in place
  const auto one = lines<P>(schedule<P>(d, mesh_shape{.dp_replicate = 2}).micro);
  CHECK(one == std::vector<std::string>{"for all_reduce loss_stats @request", "bac all_reduce grads b1 @grads_ready",
                                        "bac all_reduce grads b0 @grads_ready", "bac all_reduce grads @grads_ready"});
}

TEST_CASE("schedule: activation checkpointing runs each block's forward layer ops again first in its backward") {
  using P = plan<dense, recipe<apply<"lm", Shard<DDP>, Split<Ulysses>>>>;
  const auto l = lines<P>(schedule<P>(dense_dims(1), mesh_shape{.sp = 2}, {.checkpoint = true}).micro);
  const std::vector<std::string> want{
      "for all_to_all q b0 @request",        "for all_to_all k b0 @request",    "for all_to_all v b0 @request",
      "for all_to_all attn_out b0 @request", "for all_reduce loss_stats @request",
      "for all_to_all q b0 re @request",     "for all_to_all k b0 re @request", "for all_to_all v b0 re @request",
      "for all_to_all attn_out b0 re @request",
      "bac all_to_all attn_out b0 @request", "bac all_to_all v b0 @request",    "bac all_to_all k b0 @request",
      "bac all_to_all q b0 @request",        "bac all_reduce grads b0 @grads_ready", "bac all_reduce grads @grads_ready"};
  CHECK(l == want);
}

TEST_CASE("schedule: the optimizer phase: the gradient norm, then (ZeRO) the updated shards gathered after the update") {
  using P = plan<dense, recipe<apply<"lm", Shard<user::ZeRO2>>>>;
  static_assert(P::ops[P::size - 3].tensor == tensor_role::grad_norm);  // the plan orders the norm first too
  const step_schedule s = schedule<P>(dense_dims(2), mesh_shape{.dp_shard = 2});
  CHECK(lines<P>(s.optimizer) == std::vector<std::string>{"opt all_reduce grad_norm @request",
                                                          "opt all_gather params @update_end",
                                                          "opt all_gather params b0 @update_end",
                                                          "opt all_gather params b1 @update_end"});
  // at world 1 nothing is issued, but every instance is there (its local part runs)
  const step_schedule w1 = schedule<P>(dense_dims(2), mesh_shape{});
  CHECK(lines<P>(w1.optimizer).empty());
  CHECK(lines<P>(w1.optimizer, false).size() == 4);
}

TEST_CASE("schedule: unit ops have one standard meaning each, layer ops have none") {
  static_assert(classify(unit_op(scope::block, phase::forward, collective::all_gather, {}, tensor_role::params)) ==
                unit_op_kind::gather);
  static_assert(classify(unit_op(scope::block, phase::backward, collective::all_gather, {}, tensor_role::params)) ==
                unit_op_kind::regather);
  static_assert(classify(unit_op(scope::model, phase::optimizer, collective::all_gather, {}, tensor_role::params)) ==
                unit_op_kind::update_gather);
  static_assert(classify(unit_op(scope::block, phase::backward, collective::reduce_scatter, {}, tensor_role::expert_grads)) ==
                unit_op_kind::reduce_scatter);
  static_assert(classify(unit_op(scope::block, phase::backward, collective::all_reduce, {}, tensor_role::grads)) ==
                unit_op_kind::all_reduce);
  static_assert(classify(unit_op(scope::block, phase::backward, collective::all_reduce, {}, tensor_role::grads,
                                 axes<axis::dp_shard>)) == unit_op_kind::all_reduce_shard);
  static_assert(classify(unit_op(scope::block, phase::forward, collective::all_reduce, {}, tensor_role::params)) ==
                unit_op_kind::none);
  static_assert(classify(layer_op(2, phase::forward, collective::all_to_all, {}, tensor_role::q)) == unit_op_kind::none);
  CHECK(true);
}
