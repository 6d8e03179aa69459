#pragma once
// Layers: what a component is made of, as the planner sees it. Kinds are
// compile-time (policies decide what they touch from them); sizes come from
// the component's runtime dims through `geometry`.
#include <cstddef>
#include <string_view>

namespace veomni {

enum class layer_kind {
  embedding,    // token ids -> hidden
  patch_embed,  // image patches -> hidden
  conv,         // audio front end (log-mel frames -> hidden)
  norm,
  attention,
  mlp,
  moe,
  merger,       // 2x2 patch merger
  projector,    // encoder hidden -> language-model hidden
  head,         // hidden -> vocabulary (or codebook) logits
  vq_decoder,   // codebook indices -> pixels
};

constexpr std::string_view to_string(layer_kind k) {
  switch (k) {
    case layer_kind::embedding: return "embedding";
    case layer_kind::patch_embed: return "patch_embed";
    case layer_kind::conv: return "conv";
    case layer_kind::norm: return "norm";
    case layer_kind::attention: return "attention";
    case layer_kind::mlp: return "mlp";
    case layer_kind::moe: return "moe";
    case layer_kind::merger: return "merger";
    case layer_kind::projector: return "projector";
    case layer_kind::head: return "head";
    case layer_kind::vq_decoder: return "vq_decoder";
  }
  return "?";
}

// Where a layer lives: once per component, or once per block (repeated
// `blocks(dims)` times). One block is one FSDP unit.
enum class scope { model, block };

struct layer {
  std::string_view name;
  layer_kind kind;
  scope where = scope::block;
};

// Sizes of one instance of a layer, for given dims. Elements, not bytes.
struct geometry {
  long params = 0;         // dense parameters
  long expert_params = 0;  // parameters of all experts together (moe)
  long width = 0;          // activation width per token entering the layer
  long q_width = 0;        // attention: heads * head_dim
  long kv_width = 0;       // attention: kv_heads * head_dim
  long heads = 0;
  long kv_heads = 0;
  long experts = 0;        // moe
  long top_k = 0;          // moe
  long flops_per_token = 0;  // forward FLOPs per token of the dense math (2 per MAC)
  // Activation elements per token the layer keeps for its backward when
  // nothing is recomputed: its input, plus what its math saves (attention:
  // q, k, v and the output, as FlashAttention keeps them, no seq^2 term;
  // SwiGLU: gate, up and their product). See activation.hpp.
  long saved_per_token = 0;
  // fp32 values per token kept whatever the activation dtype (attention: the
  // log-sum-exp of each head's scores row, all that FlashAttention keeps of
  // its softmax for the backward).
  long saved_fp32_per_token = 0;
  // Gradient elements per token alive at the peak of the layer's backward,
  // net of what its backward has freed of the saved set by then (SwiGLU: the
  // output's gradient, d(product), d(gate), d(up), less the product). A
  // transient: the largest layer's adds to the step's peak. See activation.hpp.
  long grad_working_per_token = 0;
  // Sum of (in + out) over the layer's linear maps [out, in] that an adapter
  // may attach to (attention: q, k, v, o; MLP: its projections; MoE: every
  // expert's projections, all experts together, as expert_params): a rank-r
  // LoRA on them has r * adapter_width parameters. 0: nothing to adapt.
  long adapter_width = 0;
};

}  // namespace veomni
