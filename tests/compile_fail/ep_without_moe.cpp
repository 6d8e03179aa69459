// Experts<EP> on a node that has no MoE layer.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"vision", Shard<FSDP>, Experts<EP>>>;
#else
using bad = recipe<apply<"vision", Shard<FSDP>>>;
#endif
constexpr auto n = plan<examples::tiny_vl, bad>::size;
