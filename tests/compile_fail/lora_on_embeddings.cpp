// LoRA targeting embeddings: not an adaptable kind (attention, mlp and moe are).
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = lora<lora_options{.targets = layer_kinds({layer_kind::attention, layer_kind::embedding})}>;
#else
using bad = lora<lora_options{.targets = layer_kinds({layer_kind::attention, layer_kind::moe})}>;
#endif
constexpr auto n = plan<examples::omni_moe, recipe<apply<"lm", Shard<FSDP>, Adapt<bad>>>>::size;
