#pragma once
// Adapt<LoRA>'s runtime half: each adapted linear map computes
//   y = x W^T + (alpha / rank) * dropout(x) A^T B^T
// through the node's linear hook (an expert's through its expert_linear hook,
// with that expert's rows of the stacked factors), with A and B the unit's adapters, which the
// runtime holds and hands in at the end of the unit's tensor list (their
// gradients are all-reduced by the plan's adapter_grads op, their storage is
// parallel/storage.hpp's). Its compile-time half is in core/policies.hpp; it
// uses only the public contract (parallel/contract.hpp).
#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "../../core/policies.hpp"
#include "../contract.hpp"

namespace veomni {

template <lora_options O>
template <class Node>
struct lora<O>::runtime {
  explicit runtime(Node& node) {
    const auto& run = node.run_options();
    const double rank = static_cast<double>(run.adapters.rank > 0 ? run.adapters.rank : O.rank);
    const double alpha = run.adapters.alpha > 0 ? run.adapters.alpha : static_cast<double>(O.alpha);
    const double dropout = run.adapters.dropout >= 0 ? run.adapters.dropout : O.dropout;
    if (dropout >= 1)
      throw std::invalid_argument("veomni::LoRA: dropout " + std::to_string(dropout) + " on node '" +
                                  std::string(node.name()) + "' must be below 1");
    if (dropout > 0 && run.checkpoint)
      throw std::invalid_argument("veomni::LoRA: dropout with activation checkpointing is not supported (the "
                                  "recompute would draw another mask); set dropout to 0 or turn checkpointing off");
    const auto root = node.adapters(scope::model), block = node.adapters(scope::block);
    if (!root.slot.empty() && !block.slot.empty() && root.size == block.size && root.slot != block.slot)
      throw std::logic_error("veomni::LoRA: node '" + std::string(node.name()) +
                             "' has adapters in its root and its blocks with tensor lists of one length");
    const double scale = alpha / rank;
    // the factors of w[i] in the unit's list w (its adapters at the end), or none
    auto factors = [root, block](const nn::tensors& w, std::size_t i) -> const at::Tensor* {
      const auto* a = !block.slot.empty() && w.size() == block.size ? &block
                      : !root.slot.empty() && w.size() == root.size ? &root
                                                                      : nullptr;
      if (!a || i >= a->slot.size() || a->slot[i] < 0) return nullptr;
      return &w[a->base + 2 * static_cast<std::size_t>(a->slot[i])];
    };
    // y + scale * dropout(x) A^T B^T
    auto add_term = [scale, dropout](at::Tensor y, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B) {
      at::Tensor in = x.to(A.scalar_type());
      if (dropout > 0 && at::GradMode::is_enabled()) in = at::dropout(in, dropout, /*train=*/true);
      const at::Tensor xa = nn::project(in, A);  // [T, rank]
      if (y.scalar_type() != xa.scalar_type())    // mixed precision: the adapters' term in fp32, added in y's dtype
        return y + (nn::project(xa, B) * scale).to(y.scalar_type());
      // y + scale * xa B^T in one op: no [T, out] term of its own, in forward or backward
      // (measured on dense_peer: 517 MiB peak against 649 MiB for y + (xa B^T) * scale)
      return at::addmm(y.reshape({-1, y.size(-1)}), xa.reshape({-1, xa.size(-1)}), B.t(), 1.0, scale).view(y.sizes());
    };
    node.hooks().linear = [base = node.hooks().linear, factors, add_term](const at::Tensor& x, const nn::tensors& w,
                                                                          std::size_t i) {
      const at::Tensor* f = factors(w, i);
      return f ? add_term(base(x, w, i), x, f[0], f[1]) : base(x, w, i);
    };
    // an expert's projection: expert e's factors, rows e of the stacked ones
    node.hooks().expert_linear = [base = node.hooks().expert_linear, factors, add_term](
                                     const at::Tensor& x, const nn::tensors& w, std::size_t i, int64_t e) {
      const at::Tensor* f = factors(w, i);
      return f ? add_term(base(x, w, i, e), x, f[0][e], f[1][e]) : base(x, w, i, e);
    };
  }
};

}  // namespace veomni
