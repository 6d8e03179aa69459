// Adapt<> around a policy that shards parameters.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = Adapt<FSDP>;
#else
using bad = Adapt<LoRA>;
#endif
constexpr auto n = plan<examples::tiny_vl, recipe<apply<"lm", bad>>>::size;
