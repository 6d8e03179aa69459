// Adapt<LoRA> in the plan: the base frozen (gathered as before, no gradient
// reduced), the adapters' gradients all-reduced over the data axes once per
// unit that has adapted layers, optimizer state only for the adapters; the
// cost model and describe() say so before anything runs.
#include <doctest/doctest.h>

#include <string>

#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>

using namespace veomni;

namespace {
using models::dense_lm;
using models::omni_moe;

constexpr workload tokens(long t) {
  workload w;
  w.default_tokens = t;
  return w;
}
template <class P>
constexpr std::size_t count_role(tensor_role t) {
  return P::count_if([t](const plan_op& o) { return o.tensor == t; });
}
using attention_only = lora<lora_options{.rank = 4, .targets = layer_kinds({layer_kind::attention})}>;
}  // namespace

TEST_CASE("plan: LoRA under FSDP gathers the frozen base and reduces only the adapters' gradients") {
  using F = plan<dense_lm, recipe<apply<"lm", Shard<FSDP>>>>;
  using L = plan<dense_lm, recipe<apply<"lm", Shard<FSDP>, Adapt<LoRA>>>>;
  // the gathers are FSDP's as before, forward and backward
  static_assert(L::count(phase::forward, collective::all_gather) == F::count(phase::forward, collective::all_gather));
  static_assert(L::count(phase::backward, collective::all_gather) == F::count(phase::backward, collective::all_gather));
  // no gradient of the base is reduced; the block's adapters are (the root has no attention or mlp)
  static_assert(F::count(phase::backward, collective::reduce_scatter) == 2);
  static_assert(L::count(phase::backward, collective::reduce_scatter) == 0);
  static_assert(count_role<L>(tensor_role::grads) == 0);
  static_assert(count_role<L>(tensor_role::adapter_grads) == 1);
  constexpr auto op = [] {
    for (const auto& o : L::ops)
      if (o.tensor == tensor_role::adapter_grads) return o;
    return plan_op{};
  }();
  static_assert(op.policy == "Adapt<LoRA>" && op.ph == phase::backward && op.coll == collective::all_reduce);
  static_assert(op.where == "block" && op.repeat == scope::block && op.dt == dtype::f32);
  static_assert(op.over == axes<axis::dp_replicate, axis::dp_shard, axis::sp>);
  static_assert(op.adapter.rank == 8 && has_kind(op.adapter.kinds, layer_kind::attention) &&
                has_kind(op.adapter.kinds, layer_kind::mlp));

  // its size: rank x (q, k, v, o and gate, up, down: in + out each), per block
  const auto d = models::dense_lm_tiny();
  const auto& lm = d.at<"lm">();
  const long q = lm.heads * lm.head_dim, kv = lm.kv_heads * lm.head_dim;
  const long per_block = 8 * ((lm.hidden + q) + 2 * (lm.hidden + kv) + (q + lm.hidden) + 3 * (lm.hidden + lm.ffn));
  const mesh_shape m{.dp_replicate = 2, .dp_shard = 2};
  const op_cost c = cost_of<L>(op, d, m, tokens(64));
  CHECK(c.elements == per_block);
  CHECK(c.group == 4);
  CHECK(c.calls == lm.layers);
  CHECK(c.payload_bytes == per_block * 4);
  // a rank set at run time
  workload w = tokens(64);
  w.adapters.rank = 2;
  CHECK(cost_of<L>(op, d, m, w).elements == per_block / 4);
  // and its targets narrowed to attention: q, k, v, o alone
  w.adapters.targets = layer_kinds({layer_kind::attention});
  CHECK(cost_of<L>(op, d, m, w).elements == 2 * ((lm.hidden + q) + 2 * (lm.hidden + kv) + (q + lm.hidden)));

  // memory: the base as FSDP shards it, no gradient or moments of it; the
  // adapters whole on every rank with their gradient and two fp32 moments
  const memory_per_rank full = memory<F>(d, m, precisions::fp32), adapted = memory<L>(d, m, precisions::fp32);
  const long adapters = lm.layers * per_block;
  CHECK(adapted.params == full.params + 4 * adapters);
  CHECK(adapted.grads == 4 * adapters);
  CHECK(adapted.optimizer == 8 * adapters);
  CHECK(memory<L>(d, m, precisions::fp32, {.rank = 2}).optimizer == 8 * adapters / 4);
  // and the step moves far fewer bytes than full fine-tuning
  CHECK(traffic<L>(d, m, tokens(64)).payload_bytes < traffic<F>(d, m, tokens(64)).payload_bytes);
}

TEST_CASE("plan: LoRA under DDP reduces nothing but the adapters") {
  using L = plan<dense_lm, recipe<apply<"lm", Shard<DDP>, Adapt<LoRA>>>>;
  static_assert(L::count(phase::backward, collective::all_reduce) == 1);  // the block's adapters
  static_assert(count_role<L>(tensor_role::grads) == 0);
  static_assert(L::placements[0].size() == 2);
  static_assert(L::placements[0][1].tensor == placed_tensor::adapters);
}

TEST_CASE("plan: LoRA on attention composes with FSDP, Ulysses and EP on an MoE node") {
  using R = recipe<apply<"vision", Shard<FSDP>>, apply<"vision_proj", Shard<FSDP>>, apply<"audio", Shard<FSDP>>,
                   apply<"audio_proj", Shard<FSDP>>,
                   apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>, Adapt<attention_only>>,
                   apply<"image_out", Shard<FSDP>>>;
  using P = plan<omni_moe, R>;
  constexpr std::size_t lm = omni_moe::index_of("lm");
  // the frozen language model: no reduce_scatter of its dense or expert gradients
  static_assert(P::count_if([](const plan_op& o) {
                  return o.node_index == lm && o.coll == collective::reduce_scatter;
                }) == 0);
  // its activations still move: Ulysses' and EP's all_to_alls, forward and backward
  static_assert(P::count_if([](const plan_op& o) { return o.node_index == lm && o.coll == collective::all_to_all; }) ==
                8 + 4);
  // the other nodes train fully
  static_assert(P::count_if([](const plan_op& o) {
                  return o.node_index != lm && o.coll == collective::reduce_scatter;
                }) > 0);
  static_assert(count_role<P>(tensor_role::adapter_grads) == 1);
  const auto d = models::omni_moe_tiny();
  const auto& l = d.at<"lm">();
  const long q = l.heads * l.head_dim, kv = l.kv_heads * l.head_dim;
  for (const auto& o : P::ops)
    if (o.tensor == tensor_role::adapter_grads)
      CHECK(cost_of<P>(o, d, mesh_shape{.dp_shard = 2, .ep = 2}, tokens(64)).elements ==
            4 * (4 * l.hidden + 2 * q + 2 * kv));
}

TEST_CASE("plan: LoRA on experts: whole with the other adapters, or split with the experts under EP") {
  using on_experts = lora<lora_options{.rank = 4, .targets = layer_kinds({layer_kind::attention, layer_kind::moe})}>;
  using NoEP = plan<omni_moe, recipe<apply<"lm", Shard<FSDP>, Adapt<on_experts>>>>;
  using EPSplit = plan<omni_moe, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>, Adapt<on_experts>>>>;
  constexpr std::size_t lm = omni_moe::index_of("lm");
  auto lm_role = [](tensor_role t) { return [t](const plan_op& o) { return o.node_index == lm && o.tensor == t; }; };
  // without EP: the experts' adapters are whole, reduced with the attention's in one op per block
  static_assert(NoEP::count_if(lm_role(tensor_role::adapter_grads)) == 1);
  static_assert(NoEP::count_if(lm_role(tensor_role::expert_adapter_grads)) == 0);
  // with EP: split with the experts (Shard(0) over ep), summed over the ranks holding the same experts
  static_assert(EPSplit::count_if(lm_role(tensor_role::adapter_grads)) == 1);
  static_assert(EPSplit::count_if(lm_role(tensor_role::expert_adapter_grads)) == 1);
  constexpr auto expert_op = [] {
    for (const auto& o : EPSplit::ops)
      if (o.tensor == tensor_role::expert_adapter_grads) return o;
    return plan_op{};
  }();
  static_assert(expert_op.coll == collective::all_reduce && expert_op.ph == phase::backward);
  static_assert(expert_op.over == axes<axis::dp_replicate, axis::ep_dp> && expert_op.dt == dtype::f32);
  static_assert(expert_op.adapter.kinds == layer_kinds({layer_kind::moe}));
  static_assert([] {
    for (const auto& pl : EPSplit::placements[lm])
      if (pl.tensor == placed_tensor::expert_adapters)
        return pl.how == placement::shard(0) && pl.over == axes<axis::ep>;
    return false;
  }());
  // no gradient of the base is reduced on either
  static_assert(EPSplit::count_if([](const plan_op& o) {
                  return o.node_index == lm && (o.tensor == tensor_role::grads || o.tensor == tensor_role::expert_grads);
                }) == 0);

  const auto d = models::omni_moe_tiny();
  const auto& l = d.at<"lm">();
  const long q = l.heads * l.head_dim, kv = l.kv_heads * l.head_dim;
  const long attention = 4 * (4 * l.hidden + 2 * q + 2 * kv);
  const long experts = 4 * l.experts * 3 * (l.hidden + l.expert_ffn);  // every expert's gate, up, down
  const mesh_shape m{.dp_shard = 4, .ep = 2};
  for (const auto& o : NoEP::ops)
    if (o.tensor == tensor_role::adapter_grads) CHECK(cost_of<NoEP>(o, d, m, tokens(64)).elements == attention + experts);
  for (const auto& o : EPSplit::ops) {
    if (o.tensor == tensor_role::adapter_grads) CHECK(cost_of<EPSplit>(o, d, m, tokens(64)).elements == attention);
    if (o.tensor == tensor_role::expert_adapter_grads) {
      const op_cost c = cost_of<EPSplit>(o, d, m, tokens(64));
      CHECK(c.elements == experts / 2);  // the local experts' (E / ep)
      CHECK(c.group == 2);               // ep_dp = dp_shard / ep
    }
  }
  // memory: the adapters' gradients and moments, the experts' divided over ep
  const long lm_adapters = l.layers * (attention + experts / 2);
  const memory_per_rank split = memory<EPSplit>(d, m, precisions::fp32),
                        attn = memory<plan<omni_moe, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>,
                                                                   Adapt<attention_only>>>>>(d, m, precisions::fp32);
  CHECK(split.grads - attn.grads == 4 * (lm_adapters - l.layers * attention));
  CHECK(split.optimizer - attn.optimizer == 8 * (lm_adapters - l.layers * attention));
  // the experts' adapters at run time narrowed away: the whole plan's op sizes the attention's alone
  workload w = tokens(64);
  w.adapters.targets = layer_kinds({layer_kind::attention});
  for (const auto& o : NoEP::ops)
    if (o.tensor == tensor_role::adapter_grads) CHECK(cost_of<NoEP>(o, d, m, w).elements == attention);
  const std::string s = describe<EPSplit>(d, m, tokens(64));
  CHECK(s.find("expert_adapter_grads") != std::string::npos);
}

TEST_CASE("describe: an adapted node's plan shows the adapters' all_reduce and no reduction of the base") {
  using L = plan<dense_lm, recipe<apply<"lm", Shard<FSDP>, Adapt<LoRA>>>>;
  const std::string s = describe<L>(models::dense_lm_tiny(), mesh_shape{.dp_shard = 2}, tokens(64));
  CHECK(s.find("Adapt<LoRA>") != std::string::npos);
  CHECK(s.find("adapter_grads") != std::string::npos);
  CHECK(s.find("reduce_scatter") == std::string::npos);
}
