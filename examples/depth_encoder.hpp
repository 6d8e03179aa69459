#pragma once
// A user's component, outside the library: a depth-map encoder with its own
// modality and its own tensor kind, in a model graph with the library's
// projector and text decoder, under FSDP. Torch-free: the planner, the cost
// model and describe() use it as they use the built-in components. docs/extending.md
// quotes this file; tests/core/test_extending.cpp checks what it claims.
#include <veomni/core.hpp>

namespace user {
using namespace veomni;

// A modality of its own: a constant of type modality, compared by name.
inline constexpr modality depth{"depth"};

// A tensor kind of its own: a struct with a name. Ports connect when their
// kinds' names are equal.
namespace tensor {
struct depth_map {
  static constexpr std::string_view name = "depth_map";
};
}  // namespace tensor

struct depth_encoder {
  static constexpr modality mod = depth;
  using inputs = ports<port<"depth", tensor::depth_map>>;
  using outputs = ports<port<"embeds", veomni::tensor::embeds>>;  // what a projector takes
  struct dims {
    long patch = 0, hidden = 0, layers = 0, heads = 0, ffn = 0;
  };
  // The layers, in order; scope::model layers run once, the others once per block.
  static constexpr std::array layers{layer{"patch_embed", layer_kind::patch_embed, scope::model},
                                     layer{"norm1", layer_kind::norm}, layer{"attn", layer_kind::attention},
                                     layer{"norm2", layer_kind::norm}, layer{"mlp", layer_kind::mlp}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  // Each layer's parameters, widths and FLOPs (core/layer.hpp's shapes:: helpers).
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: return shapes::linear(d.patch * d.patch, d.hidden, true);  // one channel
      case 2: return shapes::attention(d.hidden, d.heads, d.heads, d.heads ? d.hidden / d.heads : 0);
      case 4: return shapes::swiglu(d.hidden, d.ffn);
      default: return shapes::norm(d.hidden);
    }
  }
};
static_assert(Component<depth_encoder>);

// The graph: depth -> projector -> the decoder's image_embeds port (an input
// takes one producer; two encoders would feed two ports).
using depth_lm = graph<nodes<node<"depth", depth_encoder>, node<"proj", projector>, node<"lm", text_decoder>>,
                       edges<edge<"depth.embeds", "proj.in">, edge<"proj.out", "lm.image_embeds">>>;
using depth_lm_fsdp = recipe<apply<"depth", Shard<FSDP>>, apply<"proj", Shard<FSDP>>, apply<"lm", Shard<FSDP>>>;
using depth_lm_plan = plan<depth_lm, depth_lm_fsdp>;

constexpr depth_lm::dims depth_lm_dims() {
  depth_lm::dims d;
  d.at<"depth">() = {.patch = 8, .hidden = 32, .layers = 2, .heads = 2, .ffn = 64};
  d.at<"proj">() = {.in = 32, .out = 64};
  d.at<"lm">() = {.vocab = 256, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  return d;
}

}  // namespace user
