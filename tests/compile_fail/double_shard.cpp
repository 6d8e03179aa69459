// Two policies sharding dim 0 of the parameters over dp_shard on one node.
#include "../../examples/models.hpp"
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"lm", Shard<FSDP>, Shard<HSDP>>>;
#else
using bad = recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>;
#endif
constexpr auto n = plan<examples::tiny_vl, bad>::size;
