// Experts<EP> on a node that has no MoE layer.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"vision", Shard<FSDP>, Experts<EP>>>;
#else
using bad = recipe<apply<"vision", Shard<FSDP>>>;
#endif
constexpr auto n = plan<examples::tiny_vl, bad>::size;
// A user's own check after it, written as docs/extending.md says, adds no
// second error when the recipe failed (the plan is then valid == false).
static_assert(!plan<examples::tiny_vl, bad>::valid ||
              plan<examples::tiny_vl, bad>::count(phase::forward, collective::all_gather) > 0);
