// docs/extending.md's component, its torch half (examples/depth_encoder_nn.hpp):
// its parameters are what the compile-time half's shape() counts, its
// gradients match finite differences (double), and the model runs with or
// without depth maps in the batch. Its parity under FSDP at world 2 and 4 is
// tests/parallel's (examples/train_depth_lm.cpp).
// torch first: doctest's CHECK must replace c10's one-argument CHECK
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <veomni/nn.hpp>

#include "../../examples/depth_encoder_nn.hpp"
#include "fd_check.hpp"

using namespace veomni;
using namespace veomni::nn;

namespace {
// Two samples, each around one 16 x 16 depth map (4 patches: 4 placeholders).
batch depth_sample(at::ScalarType dt, bool with_maps = true) {
  const int64_t ph = 250;
  std::vector<int64_t> toks{1, 2, 3};
  if (with_maps) toks.insert(toks.end(), {ph, ph, ph, ph});
  toks.insert(toks.end(), {4, 5, 6, 7, 8});
  const int64_t one = static_cast<int64_t>(toks.size());
  std::vector<int64_t> both = toks;
  both.insert(both.end(), toks.begin(), toks.end());
  batch b;
  b.tokens = at::tensor(both, at::kLong);
  b.targets = at::roll(b.tokens, -1).clone();
  b.targets.masked_fill_(b.targets.eq(ph), -100);
  b.targets[one - 1] = -100;
  b.targets[2 * one - 1] = -100;
  b.cu_seqlens = at::tensor({int64_t{0}, one, 2 * one}, at::kLong);
  b.position_ids = at::cat({at::arange(one, at::kLong), at::arange(one, at::kLong)});
  if (with_maps) b.inputs["depth"] = at::rand({2, 1, 16, 16}, at::TensorOptions().dtype(dt));
  b.image_token = ph;
  return b;
}
}  // namespace

TEST_CASE("a user's component: its specs hold the parameters its shape() counts") {
  const auto d = user::depth_lm_dims().at<"depth">();
  int64_t n = total_numel(impl<user::depth_encoder>::root_specs(d));
  for (int64_t b = 0; b < user::depth_encoder::blocks(d); ++b) n += total_numel(impl<user::depth_encoder>::block_specs(d, b));
  CHECK(n == total_params<user::depth_encoder>(d));
  CHECK(total_numel(impl<user::depth_encoder>::block_specs(d, 0)) == unit_params<user::depth_encoder>(d, scope::block, true));
}

TEST_CASE("a user's component: gradients of its model by finite differences (double), with and without its input") {
  const auto d = user::depth_lm_dims();
  local_params<user::depth_lm> params(d, 5, at::kDouble);
  const batch b = depth_sample(at::kDouble);
  auto loss_fn = [&](const batch& in) {
    context ctx;
    ctx.data = &in;
    const port_map out = forward<user::depth_lm>(d, params, ctx);
    CHECK(out.at("depth.embeds").sizes() == at::IntArrayRef{in.inputs.count("depth") ? 8 : 0, d.at<"depth">().hidden});
    return total_loss(ctx);
  };
  const at::Tensor loss = loss_fn(b);
  loss.backward();
  const auto& ps = params.parameters();
  const auto& specs = params.specs();
  const auto fd = testing::check_gradients_by_fd(ps, specs, [&] { return loss_fn(b); }, 3);
  CHECK(fd.checked >= 8);
  int depth_checked = 0;
  for (const auto& n : fd.names) depth_checked += n.rfind("depth.", 0) == 0;
  CHECK(depth_checked >= 2);
  // the depth maps reach the loss: the encoder's patch embedding has a gradient
  for (std::size_t i = 0; i < ps.size(); ++i)
    if (specs[i].name == "depth.patch_embed.weight") CHECK(ps[i].grad().abs().sum().item<double>() > 0);
  // a batch without depth maps runs every node too
  CHECK(std::isfinite(loss_fn(depth_sample(at::kDouble, false)).item<double>()));
}
