// docs/extending.md's component and graph (examples/depth_encoder.hpp): a
// user's component with its own modality and tensor kind is planned, priced
// and described as a built-in one is.
#include <doctest/doctest.h>

#include <string>

#include "../../examples/depth_encoder.hpp"
#include "../../examples/models.hpp"

using namespace veomni;

namespace {
template <class P>
constexpr long ops_of(std::string_view node) {
  long n = 0;
  for (const auto& o : P::ops) n += o.node == node;
  return n;
}
}  // namespace

// The depth encoder has the vision encoder's layer structure (a model-scope
// patch embedding, then blocks): FSDP gives it the same ops.
static_assert(ops_of<user::depth_lm_plan>("depth") > 0);
static_assert(ops_of<user::depth_lm_plan>("depth") == ops_of<plan<examples::tiny_vl, examples::tiny_vl_fsdp>>("vision"));
static_assert(user::depth_lm::order[0] == 0 && user::depth_lm::order[2] == 2);  // depth, proj, lm
static_assert(to_string(user::depth_encoder::mod) == "depth" && !(user::depth_encoder::mod == modality::image));

TEST_CASE("extending: a user's component is planned, priced and described like a built-in one") {
  const auto d = user::depth_lm_dims();
  const mesh_shape m{.dp_shard = 2};
  workload w;
  w.default_tokens = 64;
  // memory: every parameter of the three nodes, sharded over dp_shard (fp32: 4 bytes)
  long params = 0;
  params += unit_params<user::depth_encoder>(d.at<"depth">(), scope::model, true) +
            d.at<"depth">().layers * unit_params<user::depth_encoder>(d.at<"depth">(), scope::block, true);
  params += unit_params<projector>(d.at<"proj">(), scope::model, true);
  params += unit_params<text_decoder>(d.at<"lm">(), scope::model, true) +
            d.at<"lm">().layers * unit_params<text_decoder>(d.at<"lm">(), scope::block, true);
  const memory_per_rank mem = memory<user::depth_lm_plan>(d, m);
  CHECK(mem.params >= 4 * params / 2);
  CHECK(mem.params <= 4 * (params / 2 + 16));  // shards round up per unit
  const std::string s = describe<user::depth_lm_plan>(d, m, w);
  INFO(s);
  CHECK(s.find("depth  root") != std::string::npos);
  CHECK(s.find("depth  block") != std::string::npos);
}
