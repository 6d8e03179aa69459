// parity_worker's omni_moe recipes (parity_worker.hpp): a translation unit of
// their own, compiled beside parity_worker.cpp's dense_lm and tiny_vl ones.
#include "parity_worker.hpp"

namespace parity {

int run_omni(const args& a) {
  // the MoE language model's attention and experts
  using lm_lora = lora<lora_options{.rank = 4, .alpha = 8, .targets = layer_kinds({layer_kind::attention, layer_kind::moe})}>;
  static const char* const omni_names[] = {"ddp",       "fsdp",         "hsdp",         "fsdp_sp",
                                           "fsdp_ep",   "fsdp_sp_ep",   "lora_fsdp",    "lora_fsdp_sp",
                                           "lora_fsdp_ep", "lora_fsdp_sp_ep"};
  return dispatch<
      omni_moe,
      recipe<apply<"vision", Shard<DDP>>, apply<"vision_proj", Shard<DDP>>, apply<"audio", Shard<DDP>>,
             apply<"audio_proj", Shard<DDP>>, apply<"lm", Shard<DDP>>, apply<"image_out", Shard<DDP>>>,
      recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">, fsdp_on<"lm">,
             fsdp_on<"image_out">>,
      recipe<apply<"vision", Shard<HSDP>>, apply<"vision_proj", Shard<HSDP>>, apply<"audio", Shard<HSDP>>,
             apply<"audio_proj", Shard<HSDP>>, apply<"lm", Shard<HSDP>>, apply<"image_out", Shard<HSDP>>>,
      recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Split<Ulysses>>, fsdp_on<"image_out">>,
      recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Experts<EP>>, fsdp_on<"image_out">>,
      recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>, fsdp_on<"image_out">>,
      // LoRA: the encoders' attention and MLPs and the language model's
      // attention and experts adapted (with EP: the experts' adapters
      // split with them), the projectors and the image head trained
      recipe<apply<"vision", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"vision_proj">,
             apply<"audio", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Adapt<lm_lora>>, fsdp_on<"image_out">>,
      recipe<apply<"vision", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"vision_proj">,
             apply<"audio", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Split<Ulysses>, Adapt<lm_lora>>, fsdp_on<"image_out">>,
      recipe<apply<"vision", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"vision_proj">,
             apply<"audio", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Experts<EP>, Adapt<lm_lora>>, fsdp_on<"image_out">>,
      recipe<apply<"vision", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"vision_proj">,
             apply<"audio", Shard<FSDP>, Adapt<LoRA>>, fsdp_on<"audio_proj">,
             apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>, Adapt<lm_lora>>,
             fsdp_on<"image_out">>>(
      a, a.model == "omni_moe" ? models::omni_moe_tiny() : omni_moe_hf(), testing::kind::omni, omni_names);
}

}  // namespace parity
