#pragma once
// The example models (from the zoo) and their recipes, in one screen.
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>

namespace veomni::examples {

using models::omni_moe;
using models::tiny_vl;

// FSDP everywhere; Ulysses in the language model's attention.
using tiny_vl_fsdp = recipe<apply<"vision", Shard<FSDP>>, apply<"proj", Shard<FSDP>>,
                            apply<"lm", Shard<FSDP>, Split<Ulysses>>>;

// FSDP everywhere, Ulysses in the language model's attention, EP in its MoE layers.
using omni_fsdp_sp_ep = recipe<
    apply<"vision", Shard<FSDP>>, apply<"vision_proj", Shard<FSDP>>,
    apply<"audio", Shard<FSDP>>, apply<"audio_proj", Shard<FSDP>>,
    apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>,
    apply<"image_out", Shard<FSDP>>>;

constexpr tiny_vl::dims tiny_vl_dims() { return models::tiny_vl_tiny(); }
constexpr omni_moe::dims omni_moe_dims() { return models::omni_moe_tiny(); }

}  // namespace veomni::examples
