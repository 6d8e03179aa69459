// Adapt<LoRA> targeting mlp on a node whose component has none (omni_moe's
// language model has attention and moe layers).
#include "../../examples/models.hpp"
using namespace veomni;
using attention_only = lora<lora_options{.targets = layer_kinds({layer_kind::attention})}>;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"lm", Shard<FSDP>, Adapt<LoRA>>>;
#else
using bad = recipe<apply<"lm", Shard<FSDP>, Adapt<attention_only>>>;
#endif
constexpr auto n = plan<examples::omni_moe, bad>::size;
