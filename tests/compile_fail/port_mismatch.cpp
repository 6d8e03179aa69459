// An edge between ports of different tensor kinds (embeds -> token_ids).
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = graph<nodes<node<"vision", vision_encoder>, node<"lm", text_decoder>>,
                  edges<edge<"vision.embeds", "lm.tokens">>>;
#else
using bad = graph<nodes<node<"vision", vision_encoder>, node<"lm", text_decoder>>,
                  edges<edge<"vision.embeds", "lm.image_embeds">>>;
#endif
constexpr auto first = bad::order[0];
