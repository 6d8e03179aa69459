#pragma once
// The standard modality components, as the planner sees them: ports, layers
// and sizes. nn/ implements their math for the same types.
//
//   text_decoder         Llama-style dense decoder (embedding, GQA attention, SwiGLU)
//   moe_text_decoder     the same with MoE feed-forward layers
//   vision_encoder       patch embedding, ViT blocks, 2x2 patch merger
//   audio_encoder        conv front end over log-mel frames, transformer blocks
//   projector            two-layer MLP from an encoder's width to the decoder's
//   image_token_decoder  VQ codebook head plus a small VQ decoder back to pixels
#include <array>
#include <cstddef>

#include "component.hpp"
#include "layer.hpp"

namespace veomni {

namespace shapes {
// Attention with q: heads*head_dim, k and v: kv_heads*head_dim, output projection back.
// Options (all off by default): biases on q, k, v (Qwen2), a bias on the output
// projection (ViT), per-head RMSNorm on q and k (Qwen3). Worked example, Qwen2-7B:
//   attention(3584, 28, 4, 128, true) -> 3584*3584*2 + 2*3584*512 + 3584+2*512 = 29,364,736
constexpr geometry attention(long hidden, long heads, long kv_heads, long head_dim, bool qkv_bias = false,
                             bool out_bias = false, bool qk_norm = false) {
  geometry g;
  g.width = hidden;
  g.heads = heads;
  g.kv_heads = kv_heads;
  g.q_width = heads * head_dim;
  g.kv_width = kv_heads * head_dim;
  g.params = hidden * g.q_width + 2 * hidden * g.kv_width + g.q_width * hidden;
  g.flops_per_token = 2 * g.params;
  g.params += (qkv_bias ? g.q_width + 2 * g.kv_width : 0) + (out_bias ? hidden : 0) + (qk_norm ? 2 * head_dim : 0);
  g.saved_per_token = hidden + 2 * g.q_width + 2 * g.kv_width;  // input, q, k, v, output
  g.saved_fp32_per_token = heads;                                  // the softmax's log-sum-exp per head
  // backward: the block's output gradient (held by the residual), d(out), dq, dk, dv
  g.grad_working_per_token = hidden + 2 * g.q_width + 2 * g.kv_width;
  g.adapter_width = 4 * hidden + 2 * g.q_width + 2 * g.kv_width;  // q, k, v: hidden in; o: q_width in
  return g;
}
// SwiGLU: gate and up (hidden -> ffn), down (ffn -> hidden).
constexpr geometry swiglu(long hidden, long ffn) {
  geometry g;
  g.width = hidden;
  g.params = 3 * hidden * ffn;
  g.flops_per_token = 2 * g.params;
  g.saved_per_token = hidden + 3 * ffn;  // input, gate, up, silu(gate)*up
  // backward at its peak: the output gradient (held by the residual), then
  // d(silu(gate)*up), d(gate), d(up), less silu(gate)*up, freed by then
  g.grad_working_per_token = hidden + 2 * ffn;
  g.adapter_width = 3 * (hidden + ffn);
  return g;
}
// Two-matrix MLP with an elementwise activation (ViT: fc1, GELU, fc2).
constexpr geometry gelu_mlp(long hidden, long ffn, bool bias = false) {
  geometry g;
  g.width = hidden;
  g.params = 2 * hidden * ffn + (bias ? ffn + hidden : 0);
  g.flops_per_token = 4 * hidden * ffn;
  g.saved_per_token = hidden + 2 * ffn;  // input, fc1 output, activation output
  g.grad_working_per_token = hidden + ffn;  // as SwiGLU's, with one branch
  g.adapter_width = 2 * (hidden + ffn);
  return g;
}
// RMSNorm (weight) or LayerNorm (weight and bias).
constexpr geometry norm(long hidden, bool with_bias = false) {
  geometry g;
  g.width = hidden;
  g.params = with_bias ? 2 * hidden : hidden;
  g.saved_per_token = hidden;
  return g;
}
constexpr geometry linear(long in, long out, bool bias = false) {
  geometry g;
  g.width = in;
  g.params = in * out + (bias ? out : 0);
  g.flops_per_token = 2 * in * out;
  g.saved_per_token = in;
  return g;
}
// The language-model head: a linear(hidden -> vocab) without bias. Tied to
// the embedding (tie_word_embeddings), it owns no parameters (the table is
// the embedding's) but costs the same matmul. Worked example, Qwen2-0.5B
// (tied): head(896, 151936, true) -> 0 params, 2*896*151936 = 272,269,312 FLOPs a token.
constexpr geometry head(long hidden, long vocab, bool tied = false) {
  geometry g = linear(hidden, vocab);
  if (tied) g.params = 0;
  return g;
}
// Router (dense) plus E SwiGLU experts; each token runs top_k of them.
constexpr geometry moe(long hidden, long experts, long top_k, long expert_ffn) {
  geometry g;
  g.width = hidden;
  g.experts = experts;
  g.top_k = top_k;
  g.params = hidden * experts;
  g.expert_params = experts * 3 * hidden * expert_ffn;
  g.flops_per_token = 2 * (hidden * experts + top_k * 3 * hidden * expert_ffn);
  // input, router logits, then per routed copy: dispatched input, gate, up,
  // their product, and the expert output awaiting the weighted combine
  g.saved_per_token = hidden + experts + top_k * (2 * hidden + 3 * expert_ffn);
  g.grad_working_per_token = hidden + top_k * 2 * expert_ffn;  // each routed copy's SwiGLU backward
  g.adapter_width = experts * 3 * (hidden + expert_ffn);  // every expert's gate, up, down (not the router)
  return g;
}
}  // namespace shapes

struct text_decoder {
  static constexpr modality mod = modality::text;
  using inputs = ports<port<"tokens", tensor::token_ids>, port<"image_embeds", tensor::embeds>,
                       port<"audio_embeds", tensor::embeds>>;
  using outputs = ports<port<"logits", tensor::logits>, port<"hidden", tensor::embeds>>;
  // The defaults are Llama's math as this library first wrote it; each field
  // is one detail of the Hugging Face architectures, named as in config.json
  // where it has one (qkv_bias and qk_norm come with the architecture: Qwen2,
  // Qwen3). head_dim is its own field, not hidden / heads (Qwen3-0.6B:
  // hidden 1024, 16 heads of 128).
  struct dims {
    long vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
    bool qkv_bias = false;             // Qwen2 / Qwen2.5: biases on the q, k, v projections
    bool qk_norm = false;              // Qwen3: RMSNorm over each head of q and k, before rope
    double rope_theta = 10000.0;       // rotary base (Llama 2: 1e4, Qwen2: 1e6, Llama 3: 5e5)
    double rms_norm_eps = 1e-6;        // every RMSNorm's epsilon (Llama: 1e-5 or 1e-6)
    bool tie_word_embeddings = false;  // the head is the embedding table: no lm_head.weight
    long max_position_embeddings = 0;  // longest sample the positions allow; 0: no limit
  };
  static constexpr std::array layers{
      layer{"embed", layer_kind::embedding, scope::model}, layer{"attn_norm", layer_kind::norm},
      layer{"attn", layer_kind::attention},                layer{"mlp_norm", layer_kind::norm},
      layer{"mlp", layer_kind::mlp},                       layer{"final_norm", layer_kind::norm, scope::model},
      layer{"head", layer_kind::head, scope::model}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: { geometry g; g.width = d.hidden; g.params = d.vocab * d.hidden; return g; }
      case 2: return shapes::attention(d.hidden, d.heads, d.kv_heads, d.head_dim, d.qkv_bias, false, d.qk_norm);
      case 4: return shapes::swiglu(d.hidden, d.ffn);
      case 6: return shapes::head(d.hidden, d.vocab, d.tie_word_embeddings);
      default: return shapes::norm(d.hidden);
    }
  }
};

struct moe_text_decoder {
  static constexpr modality mod = modality::text;
  using inputs = text_decoder::inputs;
  using outputs = text_decoder::outputs;
  struct dims {
    long vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
    long experts = 0, top_k = 0, expert_ffn = 0;
    // as text_decoder::dims
    bool qkv_bias = false;
    bool qk_norm = false;  // Qwen3-MoE
    double rope_theta = 10000.0;
    double rms_norm_eps = 1e-6;
    bool tie_word_embeddings = false;
    long max_position_embeddings = 0;
    // Qwen3-MoE's router: softmax over the experts, top-k, then the k weights
    // renormalised to sum to 1 (norm_topk_prob) or left as they are.
    bool norm_topk_prob = true;
  };
  static constexpr std::array layers{
      layer{"embed", layer_kind::embedding, scope::model}, layer{"attn_norm", layer_kind::norm},
      layer{"attn", layer_kind::attention},                layer{"moe_norm", layer_kind::norm},
      layer{"moe", layer_kind::moe},                       layer{"final_norm", layer_kind::norm, scope::model},
      layer{"head", layer_kind::head, scope::model}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: { geometry g; g.width = d.hidden; g.params = d.vocab * d.hidden; return g; }
      case 2: return shapes::attention(d.hidden, d.heads, d.kv_heads, d.head_dim, d.qkv_bias, false, d.qk_norm);
      case 4: return shapes::moe(d.hidden, d.experts, d.top_k, d.expert_ffn);
      case 6: return shapes::head(d.hidden, d.vocab, d.tie_word_embeddings);
      default: return shapes::norm(d.hidden);
    }
  }
};

struct vision_encoder {
  static constexpr modality mod = modality::image;
  using inputs = ports<port<"pixels", tensor::pixels>>;
  using outputs = ports<port<"embeds", tensor::embeds>>;
  struct dims {
    long channels = 3, patch = 0, hidden = 0, layers = 0, heads = 0, ffn = 0;
    // Qwen2-VL's ViT differs from the default in these (all additive; the
    // defaults keep the original shapes):
    long temporal_patch = 1;  // frames per patch (Conv3d depth): patch_embed input = c*t*p*p
    bool patch_bias = true;   // bias on the patch embedding
    bool layer_norm = false;  // LayerNorm (weight and bias) instead of RMSNorm in the blocks
    bool linear_bias = false; // biases on qkv, attention output, fc1, fc2
    bool gelu_mlp = false;    // fc1 -> GELU -> fc2 instead of SwiGLU
    long out = 0;             // merger: 0: linear(4h -> h); else LayerNorm, linear(4h -> 4h), linear(4h -> out)
  };
  static constexpr std::array layers{
      layer{"patch_embed", layer_kind::patch_embed, scope::model}, layer{"norm1", layer_kind::norm},
      layer{"attn", layer_kind::attention},                        layer{"norm2", layer_kind::norm},
      layer{"mlp", layer_kind::mlp},                               layer{"merger", layer_kind::merger, scope::model}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: return shapes::linear(d.channels * d.temporal_patch * d.patch * d.patch, d.hidden, d.patch_bias);
      case 2:
        return shapes::attention(d.hidden, d.heads, d.heads, d.heads ? d.hidden / d.heads : 0, d.linear_bias,
                                 d.linear_bias);
      case 4: return d.gelu_mlp ? shapes::gelu_mlp(d.hidden, d.ffn, d.linear_bias) : shapes::swiglu(d.hidden, d.ffn);
      case 5: {  // 2x2 patches concatenated
        if (d.out == 0) return shapes::linear(4 * d.hidden, d.hidden, true);
        // Per patch (the node's token): one merged token per 4 patches.
        geometry g = shapes::linear(4 * d.hidden, 4 * d.hidden, true);
        const geometry second = shapes::linear(4 * d.hidden, d.out, true);
        g.params += second.params + 2 * d.hidden;  // + the LayerNorm before the merge
        g.flops_per_token = (g.flops_per_token + second.flops_per_token) / 4;
        g.saved_per_token = 4 * d.hidden;  // norm input, fc1 input, GELU input and output (4h / 4 each)
        return g;
      }
      default: return shapes::norm(d.hidden, d.layer_norm);
    }
  }
};

struct audio_encoder {
  static constexpr modality mod = modality::audio;
  using inputs = ports<port<"mel", tensor::mel_frames>>;
  using outputs = ports<port<"embeds", tensor::embeds>>;
  struct dims {
    long mel_bins = 0, hidden = 0, layers = 0, heads = 0, ffn = 0, kernel = 3;
  };
  static constexpr std::array layers{
      layer{"conv", layer_kind::conv, scope::model}, layer{"norm1", layer_kind::norm},
      layer{"attn", layer_kind::attention},          layer{"norm2", layer_kind::norm},
      layer{"mlp", layer_kind::mlp},                 layer{"final_norm", layer_kind::norm, scope::model}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: {  // conv1d(mel -> hidden, k) then conv1d(hidden -> hidden, k, stride 2), with biases
        geometry g;
        g.width = d.mel_bins;
        g.params = d.kernel * d.mel_bins * d.hidden + d.kernel * d.hidden * d.hidden + 2 * d.hidden;
        g.flops_per_token = 2 * g.params;
        return g;
      }
      case 2: return shapes::attention(d.hidden, d.heads, d.heads, d.heads ? d.hidden / d.heads : 0);
      case 4: return shapes::swiglu(d.hidden, d.ffn);
      default: return shapes::norm(d.hidden);
    }
  }
};

struct projector {
  static constexpr modality mod = modality::image;
  using inputs = ports<port<"in", tensor::embeds>>;
  using outputs = ports<port<"out", tensor::embeds>>;
  struct dims {
    long in = 0, out = 0;
  };
  static constexpr std::array layers{layer{"proj", layer_kind::projector, scope::model}};
  static constexpr long blocks(const dims&) { return 0; }
  static constexpr geometry shape(std::size_t, const dims& d) {
    geometry g = shapes::linear(d.in, d.out, true);
    g.params += d.out * d.out + d.out;  // second linear
    g.flops_per_token += 2 * d.out * d.out;
    return g;
  }
};

struct image_token_decoder {
  static constexpr modality mod = modality::image;
  using inputs = ports<port<"hidden", tensor::embeds>>;
  using outputs = ports<port<"codes", tensor::image_codes>, port<"pixels", tensor::pixels>>;
  struct dims {
    long hidden = 0, codebook = 0, code_dim = 0, patch = 0, channels = 3;
  };
  static constexpr std::array layers{layer{"code_head", layer_kind::head, scope::model},
                                     layer{"vq_decoder", layer_kind::vq_decoder, scope::model}};
  static constexpr long blocks(const dims&) { return 0; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    if (i == 0) return shapes::linear(d.hidden, d.codebook);
    geometry g = shapes::linear(d.code_dim, d.channels * d.patch * d.patch, true);
    g.params += d.codebook * d.code_dim;  // the codebook
    return g;
  }
};

}  // namespace veomni
