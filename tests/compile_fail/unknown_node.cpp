// A recipe naming a node the model lacks.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"decoder", Shard<FSDP>>>;
#else
using bad = recipe<apply<"lm", Shard<FSDP>>>;
#endif
constexpr auto n = plan<examples::tiny_vl, bad>::size;
