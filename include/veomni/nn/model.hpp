#pragma once
// Running a model graph: nodes in topological order, each through its
// component's pre / blocks / post, with values flowing along the edges.
//
// Parameters come from a unit_source, one unit at a time (a node's root, or
// one of its blocks): a local store here; FSDP's gathering store in
// parallel/. The plan's units and the source's units are the same thing.
#include <torch/torch.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "../core/graph.hpp"
#include "components.hpp"
#include "init.hpp"

namespace veomni::nn {

// Specs of one unit of node I: its root (block < 0) or block `block`.
// Names are prefixed with the node's name: "lm.model.layers.0.mlp.up_proj.weight".
template <Model G, std::size_t I>
std::vector<param_spec> unit_specs(const typename G::dims& d, int64_t block) {
  using C = typename G::template component_at<I>;
  const std::string prefix = std::string(G::names[I]) + ".";
  return block < 0 ? impl<C>::root_specs(veomni::get<I>(d), prefix) : impl<C>::block_specs(veomni::get<I>(d), block, prefix);
}

// The same, with the node chosen at run time.
template <Model G>
std::vector<param_spec> unit_specs(const typename G::dims& d, std::size_t node, int64_t block) {
  std::vector<param_spec> out;
  for_each_node<G>([&](auto I) {
    if (I.value == node) out = unit_specs<G, I.value>(d, block);
  });
  return out;
}

template <Model G>
int64_t node_blocks(const typename G::dims& d, std::size_t node) {
  int64_t n = 0;
  for_each_node<G>([&](auto I) {
    if (I.value == node) n = G::template component_at<I.value>::blocks(veomni::get<I.value>(d));
  });
  return n;
}

// Every unit of a model, in execution order of the forward pass.
struct unit_id {
  std::size_t node = 0;
  int64_t block = -1;  // -1: the node's root
  friend bool operator==(const unit_id&, const unit_id&) = default;
};

template <Model G>
std::vector<unit_id> model_units(const typename G::dims& d) {
  std::vector<unit_id> out;
  for (std::size_t node : G::order) {
    out.push_back({node, -1});
    for (int64_t b = 0; b < node_blocks<G>(d, node); ++b) out.push_back({node, b});
  }
  return out;
}

struct unit_source {
  virtual ~unit_source() = default;
  virtual tensors unit(const unit_id& u) = 0;
};

// All parameters materialised whole, each a leaf tensor that requires grad.
template <Model G>
class local_params : public unit_source {
 public:
  local_params(const typename G::dims& d, uint64_t seed, at::ScalarType dtype = at::kFloat) {
    for (const unit_id& u : model_units<G>(d)) {
      units_.push_back(u);
      tensors ts;
      for (const auto& s : unit_specs<G>(d, u.node, u.block)) {
        ts.push_back(materialize(s, seed, dtype).set_requires_grad(true));
        specs_.push_back(s);
        all_.push_back(ts.back());
      }
      values_.push_back(std::move(ts));
    }
  }
  tensors unit(const unit_id& u) override {
    for (std::size_t i = 0; i < units_.size(); ++i)
      if (units_[i] == u) return values_[i];
    TORCH_CHECK(false, "veomni::nn::local_params: no unit (node ", u.node, ", block ", u.block, ")");
  }
  const std::vector<at::Tensor>& parameters() const { return all_; }
  const std::vector<param_spec>& specs() const { return specs_; }

 private:
  std::vector<unit_id> units_;
  std::vector<tensors> values_;
  std::vector<at::Tensor> all_;
  std::vector<param_spec> specs_;
};

// Runs one block; policies wrap it (activation checkpointing, prefetch).
using block_runner = std::function<at::Tensor(const unit_id&, const at::Tensor&,
                                              const std::function<at::Tensor(const at::Tensor&)>&)>;

inline at::Tensor run_plain(const unit_id&, const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& f) {
  return f(x);
}

// Forward over the whole graph. Loss terms and auxiliary losses land in ctx;
// returns every node's outputs by "node.port".
template <Model G>
port_map forward(const typename G::dims& d, unit_source& units, context& ctx, const block_runner& run = run_plain) {
  port_map values;
  for (std::size_t node : G::order) {
    for_each_node<G>([&](auto I) {
      if (I.value != node) return;
      using C = typename G::template component_at<I.value>;
      const auto& nd = veomni::get<I.value>(d);
      port_map in;
      for (std::size_t e = 0; e != G::edge_count; ++e) {  // != : no warning when a model has no edges
        const std::string_view to = G::edge_to[e];
        if (to.substr(0, to.find('.')) != G::names[I.value]) continue;
        auto it = values.find(std::string(G::edge_from[e]));
        if (it != values.end()) in[std::string(to.substr(to.find('.') + 1))] = it->second;
      }
      const tensors root = units.unit({node, -1});
      at::Tensor x = impl<C>::pre(nd, root, ctx, in);
      const seq_layout s = impl<C>::layout(nd, ctx, in);
      for (int64_t b = 0; b < C::blocks(nd); ++b) {
        const unit_id u{node, b};
        // captures by value what a recompute in backward still needs after this returns
        x = run(u, x, [&units, &ctx, &nd, u, s, I](const at::Tensor& h) { return impl<C>::block(nd, units.unit(u), h, ctx, s); });
      }
      for (auto& [port, t] : impl<C>::post(nd, root, x, ctx, in))
        values[std::string(G::names[I.value]) + "." + port] = t;
    });
  }
  return values;
}

// The step's loss: each term's sum over its count, plus weighted auxiliary
// losses. Counts may be replaced by global counts (data/sequence parallel).
inline at::Tensor total_loss(const context& ctx, double aux_weight = 0.01,
                             const std::function<at::Tensor(const at::Tensor&)>& global_count = {}) {
  at::Tensor loss = at::zeros({});
  for (const auto& t : ctx.losses) {
    const at::Tensor n = global_count ? global_count(t.count) : t.count;
    loss = loss + t.sum / n.clamp_min(1).to(t.sum.scalar_type());
  }
  for (const auto& a : ctx.aux_losses) loss = loss + aux_weight * a / static_cast<double>(ctx.aux_losses.size());
  return loss;
}

}  // namespace veomni::nn
