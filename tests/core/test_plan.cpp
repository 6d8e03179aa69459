// Plan contents, checked at compile time (static_assert) and at run time.
#include <doctest/doctest.h>

#include "../../examples/models.hpp"

using namespace veomni;
using namespace veomni::examples;

namespace {
using dense = graph<nodes<node<"lm", text_decoder>>>;
using moe_only = graph<nodes<node<"lm", moe_text_decoder>>>;

struct no_ops {  // name and touches, but no placements or ops
  static constexpr std::string_view name = "x";
  static constexpr std::array<layer_kind, 0> touches{};
};

template <class P>
constexpr std::size_t count(phase p, collective c, std::string_view node, std::string_view where = {},
                            std::string_view policy = {}) {
  return P::count_if([&](const plan_op& o) {
    return o.ph == p && o.coll == c && o.node == node && (where.empty() || o.where == where) &&
           (policy.empty() || o.policy == policy);
  });
}
}  // namespace

TEST_CASE("plan: FSDP adds per unit one forward all_gather, one backward all_gather (blocks) and one reduce_scatter") {
  using P = plan<dense, recipe<apply<"lm", Shard<FSDP>>>>;
  // units: the root (embedding, final norm, head), which stays gathered until
  // its backward, and the block, which reshards after forward; plus 2 step ops
  static_assert(count<P>(phase::forward, collective::all_gather, "lm", "root") == 1);
  static_assert(count<P>(phase::forward, collective::all_gather, "lm", "block") == 1);
  static_assert(count<P>(phase::backward, collective::all_gather, "lm", "block") == 1);
  static_assert(count<P>(phase::backward, collective::all_gather, "lm", "root") == 0);
  static_assert(count<P>(phase::backward, collective::reduce_scatter, "lm", "root") == 1);
  static_assert(count<P>(phase::backward, collective::reduce_scatter, "lm", "block") == 1);
  static_assert(P::size == 5 + 2);
  for (const auto& o : P::ops) {
    if (o.policy == "Step") continue;
    CHECK(o.over == axes<axis::dp_shard, axis::sp>);
    CHECK(o.policy == "Shard<FSDP>");
  }
  CHECK(P::ops[0].where == "root");   // the root is gathered first
  CHECK(P::ops[1].where == "block");
  CHECK(P::ops[1].repeat == scope::block);
  CHECK(P::ops[2].tensor == tensor_role::loss_stats);  // global loss after the forward
  CHECK(P::ops[5].coll == collective::reduce_scatter);  // the root's gradients are reduced last
  CHECK(P::ops[5].where == "root");
  CHECK(P::ops[6].ph == phase::optimizer);
  CHECK(P::ops[6].tensor == tensor_role::grad_norm);
}

TEST_CASE("plan: step collectives: global loss, router statistics per MoE layer, gradient norm") {
  using P = plan<moe_only, recipe<>>;
  static_assert(P::size == 4);
  CHECK(P::ops[0].tensor == tensor_role::router_stats);
  CHECK(P::ops[0].ph == phase::forward);
  CHECK(P::ops[0].where == "moe");
  CHECK(P::ops[1].tensor == tensor_role::loss_stats);
  CHECK(P::ops[2].tensor == tensor_role::router_stats);
  CHECK(P::ops[2].ph == phase::backward);
  CHECK(P::ops[3].tensor == tensor_role::grad_norm);
  for (const auto& o : P::ops) {
    CHECK(o.coll == collective::all_reduce);
    CHECK(o.policy == "Step");
    CHECK(o.over == (o.tensor == tensor_role::grad_norm ? axes<axis::dp_shard, axis::sp>
                                                         : axes<axis::dp_replicate, axis::dp_shard, axis::sp>));
  }
}

TEST_CASE("plan: FSDP without resharding after forward has no backward all_gather") {
  using P = plan<dense, recipe<apply<"lm", Shard<fsdp<fsdp_options{.reshard_after_forward = false}>>>>>;
  static_assert(P::count(phase::forward, collective::all_gather) == 2);
  static_assert(P::count(phase::backward, collective::all_gather) == 0);
  static_assert(P::count(phase::backward, collective::reduce_scatter) == 2);
  CHECK(P::size == 4 + 2);
}

TEST_CASE("plan: HSDP adds an all_reduce of gradient shards over dp_replicate") {
  using P = plan<dense, recipe<apply<"lm", Shard<HSDP>>>>;
  static_assert(P::count(phase::backward, collective::all_reduce) == 2);
  for (const auto& o : P::ops)
    if (o.coll == collective::all_reduce && o.policy == "Shard<HSDP>") {
      CHECK(o.over == axes<axis::dp_replicate>);
      CHECK(o.pre_sharded == axes<axis::dp_shard, axis::sp>);
    }
}

TEST_CASE("plan: DDP all-reduces gradients per unit over every data axis and gathers nothing") {
  using P = plan<dense, recipe<apply<"lm", Shard<DDP>>>>;
  static_assert(P::size == 2 + 2);
  static_assert(count<P>(phase::backward, collective::all_reduce, "lm") == 2);
  static_assert(P::count(phase::forward, collective::all_gather) == 0);
  CHECK(P::ops[0].over == axes<axis::dp_replicate, axis::dp_shard, axis::sp>);
}

TEST_CASE("plan: Ulysses adds four all_to_alls per attention layer in forward and four in backward") {
  using P = plan<dense, recipe<apply<"lm", Split<Ulysses>>>>;
  static_assert(P::size == 8 + 2);
  static_assert(count<P>(phase::forward, collective::all_to_all, "lm", "attn") == 4);
  static_assert(count<P>(phase::backward, collective::all_to_all, "lm", "attn") == 4);
  // forward q, k, v, then the output back; backward the output's gradient first
  CHECK(P::ops[0].tensor == tensor_role::q);
  CHECK(P::ops[3].tensor == tensor_role::attn_out);
  CHECK(P::ops[4].tensor == tensor_role::loss_stats);
  CHECK(P::ops[5].tensor == tensor_role::attn_out);
  for (const auto& o : P::ops) {
    if (o.policy == "Step") continue;
    CHECK(o.over == axes<axis::sp>);
    CHECK(o.repeat == scope::block);  // once per block
  }
}

TEST_CASE("plan: EP adds two all_to_alls per MoE layer in forward and two in backward") {
  using P = plan<moe_only, recipe<apply<"lm", Experts<EP>>>>;
  static_assert(P::size == 4 + 4);
  static_assert(count<P>(phase::forward, collective::all_to_all, "lm", "moe") == 2);
  static_assert(count<P>(phase::backward, collective::all_to_all, "lm", "moe") == 2);
  // forward: router statistics, dispatch, combine; backward: combine, dispatch, statistics
  CHECK(P::ops[0].tensor == tensor_role::router_stats);
  CHECK(P::ops[1].tensor == tensor_role::dispatch);
  CHECK(P::ops[2].tensor == tensor_role::combine);
  CHECK(P::ops[4].tensor == tensor_role::combine);
  CHECK(P::ops[5].tensor == tensor_role::dispatch);
  CHECK(P::ops[6].tensor == tensor_role::router_stats);
}

TEST_CASE("plan: FSDP next to EP shards expert weights separately over ep_dp") {
  using P = plan<moe_only, recipe<apply<"lm", Shard<FSDP>, Experts<EP>>>>;
  static_assert(P::count_if([](const plan_op& o) { return o.tensor == tensor_role::expert_params; }) == 2);  // fwd, bwd
  static_assert(P::count_if([](const plan_op& o) { return o.tensor == tensor_role::expert_grads; }) == 1);
  for (const auto& o : P::ops) {
    if (o.tensor == tensor_role::expert_params || o.tensor == tensor_role::expert_grads) {
      CHECK(o.over == axes<axis::ep_dp>);
      CHECK(o.where == "block");  // only blocks hold MoE layers
    }
    if (o.policy != "Step") CHECK(o.experts_separate);
  }
  // without EP the experts are part of the unit's flat shard
  using Q = plan<moe_only, recipe<apply<"lm", Shard<FSDP>>>>;
  static_assert(Q::count_if([](const plan_op& o) { return o.tensor == tensor_role::expert_params; }) == 0);
}

TEST_CASE("plan: the omni recipe composes FSDP, Ulysses and EP with the right counts per node") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  // FSDP: each of 6 nodes has a root unit; vision, audio and lm have blocks
  static_assert(P::count_if([](const plan_op& o) {
                  return o.policy == "Shard<FSDP>" && o.ph == phase::forward && o.tensor == tensor_role::params;
                }) == 9);
  static_assert(count<P>(phase::forward, collective::all_to_all, "lm", "attn", "Split<Ulysses>") == 4);
  static_assert(count<P>(phase::forward, collective::all_to_all, "lm", "moe", "Experts<EP>") == 2);
  static_assert(count<P>(phase::forward, collective::all_to_all, "vision") == 0);
  // 42 policy ops less the 6 roots' backward gathers, plus loss, grad-norm and 2 router-statistics ops
  CHECK(P::size == 42 - 6 + 4);
}

TEST_CASE("plan: forward runs nodes in topological order and backward in reverse") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  std::array<std::size_t, omni_moe::size> rank{};
  for (std::size_t r = 0; r < omni_moe::size; ++r) rank[omni_moe::order[r]] = r;
  std::size_t last_fwd = 0, last_bwd = omni_moe::size;
  bool seen_bwd = false;
  for (const auto& o : P::ops) {
    if (o.node_index == omni_moe::size) continue;  // step-level ops
    if (o.ph == phase::forward) {
      CHECK(!seen_bwd);
      CHECK(rank[o.node_index] >= last_fwd);
      last_fwd = rank[o.node_index];
    } else if (o.ph == phase::backward) {
      seen_bwd = true;
      CHECK(rank[o.node_index] <= last_bwd);
      last_bwd = rank[o.node_index];
    }
  }
  CHECK(seen_bwd);
}

TEST_CASE("plan: every forward collective has its backward dual on the same tensor and axes") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  for (const auto& f : P::ops) {
    // the step's loss statistics are reduced without gradient: no dual
    if (f.ph != phase::forward || f.node == "step") continue;
    bool found = false;
    for (const auto& b : P::ops)
      found = found || (b.ph == phase::backward && b.coll == dual(f.coll) && b.tensor == grad_of(f.tensor) &&
                        b.node == f.node && b.where == f.where && b.over == f.over);
    CHECK_MESSAGE(found, f.node, " ", f.where, " ", to_string(f.tensor));
  }
}

TEST_CASE("plan: placements per node record what each policy shards") {
  using P = plan<omni_moe, omni_fsdp_sp_ep>;
  const auto& lm = P::placements[omni_moe::index_of("lm")];
  bool params = false, experts_ep = false, experts_flat = false, acts = false;
  for (const auto& d : lm) {
    params = params || (d.tensor == placed_tensor::params && d.over == axes<axis::dp_shard, axis::sp>);
    experts_ep = experts_ep || (d.tensor == placed_tensor::expert_params && d.how == placement::shard(0) &&
                                d.over == axes<axis::ep>);
    experts_flat = experts_flat || (d.tensor == placed_tensor::expert_params && d.over == axes<axis::ep_dp>);
    acts = acts || (d.tensor == placed_tensor::activations && d.over == axes<axis::sp>);
  }
  CHECK(params);
  CHECK(experts_ep);
  CHECK(experts_flat);
  CHECK(acts);
  CHECK(P::placements[omni_moe::index_of("vision")].size() == 1);
}

TEST_CASE("policy: the concept accepts the built-ins and rejects incomplete types (SFINAE-friendly)") {
  static_assert(Policy<Shard<FSDP>> && Policy<Shard<HSDP>> && Policy<Shard<DDP>> && Policy<Split<Ulysses>> &&
                Policy<Experts<EP>>);
  static_assert(Policy<FSDP> && Policy<Ulysses>);
  static_assert(!Policy<int>);
  static_assert(!Policy<no_ops>);
  CHECK(Shard<FSDP>::name == "Shard<FSDP>");
  CHECK(Split<Ulysses>::name == "Split<Ulysses>");
  CHECK(Experts<EP>::name == "Experts<EP>");
  CHECK(Shard<HSDP>::name == "Shard<HSDP>");
}

TEST_CASE("policy: what a policy touches decides where it may be applied") {
  static_assert(touches_component<Experts<EP>, moe_text_decoder>());
  static_assert(!touches_component<Experts<EP>, text_decoder>());
  static_assert(touches_component<Split<Ulysses>, vision_encoder>());
  static_assert(!touches_component<Split<Ulysses>, projector>());
  static_assert(touches_component<Shard<FSDP>, projector>());
  CHECK(true);
}

TEST_CASE("plan: a recipe with no policies for a node adds nothing for it") {
  using P = plan<tiny_vl, recipe<apply<"lm", Shard<FSDP>>>>;
  for (const auto& o : P::ops) CHECK((o.node == "lm" || o.node == "step"));
  CHECK(P::size == 5 + 2);
  using E = plan<tiny_vl, recipe<>>;
  CHECK(E::size == 2);  // the step's loss and gradient-norm reductions only
}

// A user's policy from examples/: Split<Ring> is planned, checked and priced
// like the built-ins.
#include "../../examples/ring_policy.hpp"

TEST_CASE("plan: the user policy Split<Ring> adds an all_gather of k/v per attention layer and its dual") {
  using P = plan<dense, recipe<apply<"lm", Shard<FSDP>, Split<user::Ring>>>>;
  static_assert(Policy<Split<user::Ring>>);
  static_assert(count<P>(phase::forward, collective::all_gather, "lm", "attn", "Split<Ring>") == 1);
  static_assert(count<P>(phase::backward, collective::reduce_scatter, "lm", "attn", "Split<Ring>") == 1);
  // priced: the gathered k and v of every sp rank, from this rank's tokens
  dense::dims d;
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  workload w;
  w.default_tokens = 100;
  for (const auto& o : P::ops)
    if (o.policy == "Split<Ring>") {
      const op_cost c = cost_of<P>(o, d, mesh_shape{.sp = 4}, w);
      CHECK(c.calls == 2);  // two blocks
      CHECK(c.payload_bytes == (o.coll == collective::all_gather ? 100 * 2 * 32 * 4 : 4 * 100 * 2 * 32 * 4));
    }
  const std::string s = describe<P>(d, mesh_shape{.sp = 2}, w);
  CHECK(s.find("Split<Ring>") != std::string::npos);
  CHECK(s.find("kv_block") != std::string::npos);
}
