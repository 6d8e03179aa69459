// Two edges into one input port: two vision encoders, each through its own
// projector, both into the decoder's image_embeds. The runtime would keep one
// producer's tensor and drop the other's, so it does not compile.
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
using bad = graph<nodes<node<"v1", vision_encoder>, node<"p1", projector>, node<"v2", vision_encoder>, node<"p2", projector>,
                        node<"lm", text_decoder>>,
                  edges<edge<"v1.embeds", "p1.in">, edge<"p1.out", "lm.image_embeds">, edge<"v2.embeds", "p2.in">,
                        edge<"p2.out", "lm.image_embeds">>>;
#else
using bad = graph<nodes<node<"v1", vision_encoder>, node<"p1", projector>, node<"lm", text_decoder>>,
                  edges<edge<"v1.embeds", "p1.in">, edge<"p1.out", "lm.image_embeds">>>;
#endif
constexpr auto first = bad::order[0];
