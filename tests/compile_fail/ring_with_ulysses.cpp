// Split<Ring> and Split<Ulysses> both split the sequence over sp on one node.
#include "../../examples/ring_policy.hpp"
#include <veomni/models/zoo.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>, Split<user::Ring>>>;
#else
using bad = recipe<apply<"lm", Shard<FSDP>, Split<user::Ring>>>;
#endif
constexpr auto n = plan<models::dense_lm, bad>::size;
