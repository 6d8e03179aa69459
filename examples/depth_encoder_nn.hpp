#pragma once
// The torch half of the user's depth encoder (examples/depth_encoder.hpp):
// its parameters and its math, so that nn::forward, and through it the
// parallel runtime, train it. A component's math is a specialisation of
// nn::impl<C> with six static functions; the runtime calls them unit by unit
// (the root's parameters around the blocks, each block's in between), so
// policies can gather, shard and reduce each unit's parameters. Its input
// arrives in the batch's open map, under its port's name: batch.inputs["depth"],
// depth maps [N, 1, H, W]. docs/extending.md quotes this file;
// tests/nn/test_extending_nn.cpp checks what it claims.
//   depth maps -> patches -> encoder blocks (each map attends to itself) -> [N * (H/p) * (W/p), hidden]
#include <veomni/nn.hpp>

#include "depth_encoder.hpp"

namespace veomni::nn {

template <>
struct impl<user::depth_encoder> {
  using dims = user::depth_encoder::dims;
  // The parameters of the root (the layers of scope::model) and of block i,
  // named as checkpoints name them; their sizes must add up to what the
  // compile-time half's shape() says (the planner's memory and traffic).
  static std::vector<param_spec> root_specs(const dims& d, const std::string& p = "") {
    return {detail::weight(p + "patch_embed.weight", {d.hidden, d.patch * d.patch}),
            detail::bias(p + "patch_embed.bias", d.hidden)};
  }
  static std::vector<param_spec> block_specs(const dims& d, int64_t i, const std::string& p = "") {
    // the library's encoder block: norm1, attention (q, k, v, o), norm2, SwiGLU MLP
    return detail::encoder_block_specs(detail::block_name(p, i, ""), d.hidden, d.heads, d.ffn);
  }
  // Its input, from the batch's open map (none in this batch: no maps)
  static at::Tensor maps(const context& ctx, const dims& d) {
    const auto it = ctx.data->inputs.find("depth");
    return it != ctx.data->inputs.end() ? it->second : at::zeros({0, 1, d.patch, d.patch});
  }
  // Before the blocks, with the root's parameters: the rows the blocks work on [rows, hidden]
  static at::Tensor pre(const dims& d, const tensors& root, context& ctx, const port_map&) {
    const at::Tensor m = maps(ctx, d);
    TORCH_CHECK(m.dim() == 4 && m.size(1) == 1 && m.size(2) % d.patch == 0 && m.size(3) % d.patch == 0,
                "user::depth_encoder: depth maps [N, 1, H, W] with H and W multiples of the patch size ", d.patch,
                " expected, got ", m.sizes());
    const int64_t n = m.size(0), gh = m.size(2) / d.patch, gw = m.size(3) / d.patch;
    const at::Tensor patches = m.reshape({n, gh, d.patch, gw, d.patch})
                                   .permute({0, 1, 3, 2, 4})
                                   .reshape({n * gh * gw, d.patch * d.patch});
    return project(patches.to(root[0].scalar_type()), root[0]) + root[1];
  }
  // Which rows attend to which: each map's patches to each other, both ways
  static seq_layout layout(const dims& d, context& ctx, const port_map&) {
    const at::Tensor m = maps(ctx, d);
    return detail::uniform_layout(m.size(0), (m.size(2) / d.patch) * (m.size(3) / d.patch), false);
  }
  // One block, with its parameters w (in block_specs order); ctx.h holds the
  // policies' hooks (Ulysses' attention, LoRA's linear maps)
  static at::Tensor block(const dims& d, const tensors& w, const at::Tensor& x, context& ctx, const seq_layout& s) {
    return detail::encoder_block(d.hidden, d.heads, w, x, ctx, s);
  }
  // After the blocks: the output ports, by name
  static port_map post(const dims&, const tensors&, const at::Tensor& x, context&, const port_map&) {
    return {{"embeds", x}};
  }
};

}  // namespace veomni::nn
