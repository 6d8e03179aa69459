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
constexpr geometry attention(long hidden, long heads, long kv_heads, long head_dim) {
  geometry g;
  g.width = hidden;
  g.heads = heads;
  g.kv_heads = kv_heads;
  g.q_width = heads * head_dim;
  g.kv_width = kv_heads * head_dim;
  g.params = hidden * g.q_width + 2 * hidden * g.kv_width + g.q_width * hidden;
  g.flops_per_token = 2 * g.params;
  return g;
}
// SwiGLU: gate and up (hidden -> ffn), down (ffn -> hidden).
constexpr geometry swiglu(long hidden, long ffn) {
  geometry g;
  g.width = hidden;
  g.params = 3 * hidden * ffn;
  g.flops_per_token = 2 * g.params;
  return g;
}
constexpr geometry norm(long hidden) {
  geometry g;
  g.width = hidden;
  g.params = hidden;
  return g;
}
constexpr geometry linear(long in, long out, bool bias = false) {
  geometry g;
  g.width = in;
  g.params = in * out + (bias ? out : 0);
  g.flops_per_token = 2 * in * out;
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
  return g;
}
}  // namespace shapes

struct text_decoder {
  static constexpr modality mod = modality::text;
  using inputs = ports<port<"tokens", tensor::token_ids>, port<"image_embeds", tensor::embeds>,
                       port<"audio_embeds", tensor::embeds>>;
  using outputs = ports<port<"logits", tensor::logits>, port<"hidden", tensor::embeds>>;
  struct dims {
    long vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, ffn = 0;
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
      case 2: return shapes::attention(d.hidden, d.heads, d.kv_heads, d.head_dim);
      case 4: return shapes::swiglu(d.hidden, d.ffn);
      case 6: return shapes::linear(d.hidden, d.vocab);
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
      case 2: return shapes::attention(d.hidden, d.heads, d.kv_heads, d.head_dim);
      case 4: return shapes::moe(d.hidden, d.experts, d.top_k, d.expert_ffn);
      case 6: return shapes::linear(d.hidden, d.vocab);
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
  };
  static constexpr std::array layers{
      layer{"patch_embed", layer_kind::patch_embed, scope::model}, layer{"norm1", layer_kind::norm},
      layer{"attn", layer_kind::attention},                        layer{"norm2", layer_kind::norm},
      layer{"mlp", layer_kind::mlp},                               layer{"merger", layer_kind::merger, scope::model}};
  static constexpr long blocks(const dims& d) { return d.layers; }
  static constexpr geometry shape(std::size_t i, const dims& d) {
    switch (i) {
      case 0: return shapes::linear(d.channels * d.patch * d.patch, d.hidden, true);
      case 2: return shapes::attention(d.hidden, d.heads, d.heads, d.heads ? d.hidden / d.heads : 0);
      case 4: return shapes::swiglu(d.hidden, d.ffn);
      case 5: return shapes::linear(4 * d.hidden, d.hidden, true);  // 2x2 patches concatenated
      default: return shapes::norm(d.hidden);
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
