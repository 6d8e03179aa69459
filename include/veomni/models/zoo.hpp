#pragma once
// The model zoo, declared with the core's graph types (torch-free):
//   dense_lm   a Llama-style decoder
//   tiny_vl    vision encoder + projector + dense decoder
//   omni_moe   image and audio encoders + projectors + MoE decoder + image-token decoder
//   moe_lm     a Qwen3-MoE-style decoder (text only: what a Qwen3MoeForCausalLM checkpoint loads into)
// Each has a tiny configuration that trains on two CPU cores and a
// paper-scale one (dims only) for the cost model.
#include "../core/components.hpp"
#include "../core/graph.hpp"

namespace veomni::models {

using dense_lm = graph<nodes<node<"lm", text_decoder>>>;

//   pixels -> [vision] -> [proj] -> lm.image_embeds ; tokens -> [lm]
using tiny_vl = graph<
    nodes<node<"vision", vision_encoder>, node<"proj", projector>, node<"lm", text_decoder>>,
    edges<edge<"vision.embeds", "proj.in">, edge<"proj.out", "lm.image_embeds">>>;

//   image, audio encoders -> projectors -> MoE language model -> image-token decoder
using omni_moe = graph<
    nodes<node<"vision", vision_encoder>, node<"vision_proj", projector>,
          node<"audio", audio_encoder>, node<"audio_proj", projector>,
          node<"lm", moe_text_decoder>, node<"image_out", image_token_decoder>>,
    edges<edge<"vision.embeds", "vision_proj.in">, edge<"vision_proj.out", "lm.image_embeds">,
          edge<"audio.embeds", "audio_proj.in">, edge<"audio_proj.out", "lm.audio_embeds">,
          edge<"lm.hidden", "image_out.hidden">>>;

using moe_lm = graph<nodes<node<"lm", moe_text_decoder>>>;  // paper.hpp's qwen3_moe (Qwen3-30B-A3B) is this graph

// ---- tiny: trains on two CPU cores ----------------------------------------------

constexpr dense_lm::dims dense_lm_tiny() {
  dense_lm::dims d;
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  return d;
}

constexpr tiny_vl::dims tiny_vl_tiny() {
  tiny_vl::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 4, .hidden = 32, .layers = 2, .heads = 4, .ffn = 64};
  d.at<"proj">() = {.in = 32, .out = 64};
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  return d;
}

constexpr omni_moe::dims omni_moe_tiny() {
  omni_moe::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 4, .hidden = 32, .layers = 2, .heads = 4, .ffn = 64};
  d.at<"vision_proj">() = {.in = 32, .out = 64};
  d.at<"audio">() = {.mel_bins = 16, .hidden = 32, .layers = 2, .heads = 4, .ffn = 64, .kernel = 3};
  d.at<"audio_proj">() = {.in = 32, .out = 64};
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16,
                  .experts = 4, .top_k = 2, .expert_ffn = 64};
  d.at<"image_out">() = {.hidden = 64, .codebook = 256, .code_dim = 16, .patch = 4, .channels = 3};
  return d;
}

constexpr moe_lm::dims moe_lm_tiny() {
  moe_lm::dims d;
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16,
                  .experts = 4, .top_k = 2, .expert_ffn = 64, .qk_norm = true};
  return d;
}

// ---- paper scale: dims only, for planning ----------------------------------------

// Llama-2-7B-like dense decoder.
constexpr dense_lm::dims dense_lm_7b() {
  dense_lm::dims d;
  d.at<"lm">() = {.vocab = 32000, .hidden = 4096, .layers = 32, .heads = 32, .kv_heads = 32, .head_dim = 128,
                  .ffn = 11008};
  return d;
}

// A 7B language model with a 675M ViT (Qwen2-VL-7B-like proportions).
constexpr tiny_vl::dims tiny_vl_7b() {
  tiny_vl::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 14, .hidden = 1280, .layers = 32, .heads = 16, .ffn = 5120};
  d.at<"proj">() = {.in = 1280, .out = 3584};
  d.at<"lm">() = {.vocab = 152064, .hidden = 3584, .layers = 28, .heads = 28, .kv_heads = 4, .head_dim = 128,
                  .ffn = 18944};
  return d;
}

// A 30B-A3B MoE omni model (Qwen3-30B-A3B-like decoder: 128 experts, top 8).
constexpr omni_moe::dims omni_moe_30b() {
  omni_moe::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 14, .hidden = 1280, .layers = 32, .heads = 16, .ffn = 5120};
  d.at<"vision_proj">() = {.in = 1280, .out = 2048};
  d.at<"audio">() = {.mel_bins = 128, .hidden = 1280, .layers = 32, .heads = 20, .ffn = 5120, .kernel = 3};
  d.at<"audio_proj">() = {.in = 1280, .out = 2048};
  d.at<"lm">() = {.vocab = 151936, .hidden = 2048, .layers = 48, .heads = 32, .kv_heads = 4, .head_dim = 128,
                  .experts = 128, .top_k = 8, .expert_ffn = 768};
  d.at<"image_out">() = {.hidden = 2048, .codebook = 16384, .code_dim = 8, .patch = 16, .channels = 3};
  return d;
}

}  // namespace veomni::models
