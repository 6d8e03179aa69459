// LoRA targeting the experts (moe layers): not an adaptable kind.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = lora<lora_options{.targets = layer_kinds({layer_kind::attention, layer_kind::moe})}>;
#else
using bad = lora<lora_options{.targets = layer_kinds({layer_kind::attention})}>;
#endif
constexpr auto n = plan<examples::omni_moe, recipe<apply<"lm", Shard<FSDP>, Adapt<bad>>>>::size;
