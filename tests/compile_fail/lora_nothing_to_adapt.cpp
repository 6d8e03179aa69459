// Adapt<LoRA> on a node with no attention or MLP layer (a projector).
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"proj", Shard<FSDP>, Adapt<LoRA>>>;
#else
using bad = recipe<apply<"proj", Shard<FSDP>>>;
#endif
constexpr auto n = plan<examples::tiny_vl, bad>::size;
