#pragma once
// The models of the VeOmni paper's Appendix A, at their published sizes:
// dims only (no tensors), the same component types as every other model, so
// that plan, cost, memory and step-time predictions run on them before any
// GPU is reserved. Each dims function is constexpr and allocates nothing.
//
// Sizes are those of the models' Hugging Face config.json files:
//   Qwen2-7B       hidden 3584, 28 layers, 28 heads / 4 kv, ffn 18944, vocab 152064, qkv bias, untied head
//                  (huggingface.co/Qwen/Qwen2-7B/blob/main/config.json)      -> 7,615,616,512 params
//   Qwen2.5-32B    hidden 5120, 64 layers, 40 heads / 8 kv, ffn 27648, vocab 152064, qkv bias, untied
//                  (huggingface.co/Qwen/Qwen2.5-32B/blob/main/config.json)   -> 32,763,876,352 params
//   Qwen2-72B      hidden 8192, 80 layers, 64 heads / 8 kv, ffn 29568, vocab 152064, qkv bias, untied
//                  (huggingface.co/Qwen/Qwen2-72B/blob/main/config.json)     -> 72,706,203,648 params
//   Qwen3-30B-A3B  hidden 2048, 48 layers, 32 heads / 4 kv, head_dim 128, 128 experts, top 8,
//                  moe_intermediate_size 768, vocab 151936, q/k RMSNorm, untied
//                  (huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json) -> 30,532,122,624 params
//   Qwen2-VL-7B    the Qwen2-7B decoder plus a 32-layer ViT: embed_dim 1280, 16 heads, mlp_ratio 4
//                  (fc1 -> QuickGELU -> fc2), patch 14, temporal_patch_size 2, LayerNorm, biases,
//                  PatchMerger LayerNorm + Linear(5120, 5120) + GELU + Linear(5120, 3584)
//                  (huggingface.co/Qwen/Qwen2-VL-7B/blob/main/config.json and modeling_qwen2_vl.py)
//                  -> 8,291,375,616 params
// (Parameter counts are what these declarations give; tests/core/test_flops.cpp
// checks them, and they match the published 7.6B / 32.8B / 72.7B / 30.5B / 8.3B.)
#include "../core/components.hpp"
#include "../core/graph.hpp"
#include "../core/policies.hpp"
#include "../core/recipe.hpp"

namespace veomni::models::paper {

using qwen2 = graph<nodes<node<"lm", text_decoder>>>;      // Qwen2-7B, Qwen2.5-32B, Qwen2-72B
using qwen3_moe = graph<nodes<node<"lm", moe_text_decoder>>>;  // Qwen3-30B-A3B
//   pixels -> [vision] (ViT + patch merger to 3584) -> lm.image_embeds ; tokens -> [lm]
using qwen2_vl = graph<nodes<node<"vision", vision_encoder>, node<"lm", text_decoder>>,
                       edges<edge<"vision.embeds", "lm.image_embeds">>>;

constexpr qwen2::dims qwen2_7b() {
  qwen2::dims d;
  d.at<"lm">() = {.vocab = 152064, .hidden = 3584, .layers = 28, .heads = 28, .kv_heads = 4, .head_dim = 128,
                  .ffn = 18944, .qkv_bias = true};
  return d;
}

constexpr qwen2::dims qwen2_5_32b() {
  qwen2::dims d;
  d.at<"lm">() = {.vocab = 152064, .hidden = 5120, .layers = 64, .heads = 40, .kv_heads = 8, .head_dim = 128,
                  .ffn = 27648, .qkv_bias = true};
  return d;
}

constexpr qwen2::dims qwen2_72b() {
  qwen2::dims d;
  d.at<"lm">() = {.vocab = 152064, .hidden = 8192, .layers = 80, .heads = 64, .kv_heads = 8, .head_dim = 128,
                  .ffn = 29568, .qkv_bias = true};
  return d;
}

constexpr qwen3_moe::dims qwen3_30b_a3b() {
  qwen3_moe::dims d;
  d.at<"lm">() = {.vocab = 151936, .hidden = 2048, .layers = 48, .heads = 32, .kv_heads = 4, .head_dim = 128,
                  .experts = 128, .top_k = 8, .expert_ffn = 768, .qk_norm = true};
  return d;
}

constexpr qwen2_vl::dims qwen2_vl_7b() {
  qwen2_vl::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 14, .hidden = 1280, .layers = 32, .heads = 16, .ffn = 5120,
                      .temporal_patch = 2, .patch_bias = false, .layer_norm = true, .linear_bias = true,
                      .gelu_mlp = true, .out = 3584};
  d.at<"lm">() = qwen2_7b().at<"lm">();
  return d;
}

// The paper's recipes. Sizes of 1 make an axis's collectives no-ops, so one
// recipe covers FSDP alone and FSDP+SP (sp = 1 or more) at run time; they are
// kept apart here so that the printed plan shows only what runs.
using fsdp = recipe<apply<"lm", Shard<FSDP>>>;
using fsdp_sp = recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>;
using fsdp_ep = recipe<apply<"lm", Shard<FSDP>, Experts<EP>>>;
using fsdp_sp_ep = recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>>;
using vl_fsdp = recipe<apply<"vision", Shard<FSDP>>, apply<"lm", Shard<FSDP>>>;
using vl_fsdp_sp = recipe<apply<"vision", Shard<FSDP>>, apply<"lm", Shard<FSDP>, Split<Ulysses>>>;

}  // namespace veomni::models::paper
