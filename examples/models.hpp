#pragma once
// The example models and their recipes, declared in one screen each.
#include <veomni/core.hpp>

namespace veomni::examples {

// ---- a tiny vision-language model --------------------------------------------
//   pixels -> [vision] -> [proj] -> lm.image_embeds ; tokens -> [lm] -> logits
using tiny_vl = graph<
    nodes<node<"vision", vision_encoder>, node<"proj", projector>, node<"lm", text_decoder>>,
    edges<edge<"vision.embeds", "proj.in">, edge<"proj.out", "lm.image_embeds">>>;

using tiny_vl_fsdp = recipe<apply<"vision", Shard<FSDP>>, apply<"proj", Shard<FSDP>>,
                            apply<"lm", Shard<FSDP>, Split<Ulysses>>>;

constexpr tiny_vl::dims tiny_vl_dims() {
  tiny_vl::dims d;
  d.at<"vision">() = {.channels = 3, .patch = 4, .hidden = 32, .layers = 2, .heads = 4, .ffn = 64};
  d.at<"proj">() = {.in = 32, .out = 64};
  d.at<"lm">() = {.vocab = 512, .hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .ffn = 128};
  return d;
}

// ---- an omni MoE model ----------------------------------------------------------
//   image, audio encoders -> projectors -> MoE language model -> image-token decoder
using omni_moe = graph<
    nodes<node<"vision", vision_encoder>, node<"vision_proj", projector>,
          node<"audio", audio_encoder>, node<"audio_proj", projector>,
          node<"lm", moe_text_decoder>, node<"image_out", image_token_decoder>>,
    edges<edge<"vision.embeds", "vision_proj.in">, edge<"vision_proj.out", "lm.image_embeds">,
          edge<"audio.embeds", "audio_proj.in">, edge<"audio_proj.out", "lm.audio_embeds">,
          edge<"lm.hidden", "image_out.hidden">>>;

// FSDP everywhere, Ulysses in the language model's attention, EP in its MoE layers.
using omni_fsdp_sp_ep = recipe<
    apply<"vision", Shard<FSDP>>, apply<"vision_proj", Shard<FSDP>>,
    apply<"audio", Shard<FSDP>>, apply<"audio_proj", Shard<FSDP>>,
    apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>,
    apply<"image_out", Shard<FSDP>>>;

constexpr omni_moe::dims omni_moe_dims() {
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

}  // namespace veomni::examples
