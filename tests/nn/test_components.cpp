// Components and whole models: specs agree with the core's sizes, packing is
// exact, and the omni model runs forward and backward on a multimodal sample.
// torch first: doctest's CHECK must replace c10's one-argument CHECK
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <veomni/models/zoo.hpp>
#include <veomni/nn.hpp>

#include "fd_check.hpp"

using namespace veomni;
using namespace veomni::nn;

namespace {
template <class C>
int64_t spec_params(const typename C::dims& d) {
  int64_t n = total_numel(impl<C>::root_specs(d));
  for (int64_t b = 0; b < C::blocks(d); ++b) n += total_numel(impl<C>::block_specs(d, b));
  return n;
}

// A real multimodal sample for the tiny omni model: two 16x16 images (4
// merged patches each), one 8-frame audio clip (4 tokens after the stride-2
// conv), text around the placeholders, and image-code targets on 4 positions.
batch omni_sample(at::ScalarType dt = at::kFloat) {
  const int64_t img = 500, aud = 501;
  std::vector<int64_t> toks{1, 2, img, img, img, img, 3, aud, aud, aud, aud, 4, 5, 6};
  std::vector<int64_t> toks2{7, 8, img, img, img, img, 9, 10};
  toks.insert(toks.end(), toks2.begin(), toks2.end());
  const int64_t t = static_cast<int64_t>(toks.size());
  batch b;
  b.tokens = at::tensor(toks, at::kLong);
  b.targets = at::roll(b.tokens, -1).clone();
  b.targets.masked_fill_(b.targets.eq(img).logical_or(b.targets.eq(aud)), -100);
  b.targets[13] = -100;  // last token of sample 0
  b.targets[t - 1] = -100;
  b.cu_seqlens = at::tensor({int64_t{0}, int64_t{14}, t}, at::kLong);
  b.position_ids = at::cat({at::arange(14, at::kLong), at::arange(t - 14, at::kLong)});
  b.pixels = at::rand({2, 3, 16, 16}, at::TensorOptions().dtype(dt));
  b.mel = at::randn({1, 8, 16}, at::TensorOptions().dtype(dt));
  b.code_targets = at::full({t}, -100, at::kLong);
  for (int64_t i = 16; i < 20; ++i) b.code_targets[i] = i * 7 % 256;
  b.image_token = img;
  b.audio_token = aud;
  return b;
}
}  // namespace

TEST_CASE("nn specs hold exactly the parameters the core's geometry counts") {
  const auto vl = models::tiny_vl_tiny();
  const auto om = models::omni_moe_tiny();
  CHECK(spec_params<text_decoder>(vl.at<"lm">()) == total_params<text_decoder>(vl.at<"lm">()));
  CHECK(spec_params<vision_encoder>(vl.at<"vision">()) == total_params<vision_encoder>(vl.at<"vision">()));
  CHECK(spec_params<projector>(vl.at<"proj">()) == total_params<projector>(vl.at<"proj">()));
  CHECK(spec_params<moe_text_decoder>(om.at<"lm">()) == total_params<moe_text_decoder>(om.at<"lm">()));
  CHECK(spec_params<audio_encoder>(om.at<"audio">()) == total_params<audio_encoder>(om.at<"audio">()));
  CHECK(spec_params<image_token_decoder>(om.at<"image_out">()) ==
        total_params<image_token_decoder>(om.at<"image_out">()));
  // per unit too: the FSDP unit the plan prices is the unit nn builds
  const auto lm = om.at<"lm">();
  int64_t dense = 0, experts = 0;
  for (const auto& s : impl<moe_text_decoder>::block_specs(lm, 0)) (s.expert ? experts : dense) += s.numel();
  CHECK(dense == unit_params<moe_text_decoder>(lm, scope::block, false));
  CHECK(experts == unit_expert_params<moe_text_decoder>(lm, scope::block));
}

TEST_CASE("dense lm: a packed batch equals its sequences run one by one") {
  const auto d = models::dense_lm_tiny();
  local_params<models::dense_lm> params(d, 11, at::kDouble);
  auto run = [&](const std::vector<int64_t>& toks, const std::vector<int64_t>& lens) {
    batch b;
    b.tokens = at::tensor(toks, at::kLong);
    b.targets = at::full_like(b.tokens, -100);
    std::vector<int64_t> cu{0}, pos;
    for (int64_t l : lens) {
      cu.push_back(cu.back() + l);
      for (int64_t i = 0; i < l; ++i) pos.push_back(i);
    }
    b.cu_seqlens = at::tensor(cu, at::kLong);
    b.position_ids = at::tensor(pos, at::kLong);
    context ctx;
    ctx.data = &b;
    return forward<models::dense_lm>(d, params, ctx).at("lm.hidden");
  };
  const at::Tensor packed = run({5, 6, 7, 8, 9, 10, 11, 12}, {3, 5});
  const at::Tensor a = run({5, 6, 7}, {3}), b = run({8, 9, 10, 11, 12}, {5});
  CHECK((packed - at::cat({a, b})).abs().max().item<double>() < 1e-12);
  // crossing the boundary would change sample 2: compare against one long sequence
  const at::Tensor joined = run({5, 6, 7, 8, 9, 10, 11, 12}, {8});
  CHECK((packed.slice(0, 3) - joined.slice(0, 3)).abs().max().item<double>() > 1e-6);
}

TEST_CASE("omni model: forward and backward on an image + audio + text sample") {
  const auto d = models::omni_moe_tiny();
  local_params<models::omni_moe> params(d, 3);
  const batch b = omni_sample();
  context ctx;
  ctx.data = &b;
  const port_map out = forward<models::omni_moe>(d, params, ctx);
  CHECK(out.at("vision.embeds").sizes() == at::IntArrayRef{8, 32});  // 2 images x 2x2 merged patches
  CHECK(out.at("audio.embeds").sizes() == at::IntArrayRef{4, 32});   // 8 frames, stride 2
  CHECK(out.at("lm.hidden").size(0) == b.tokens.size(0));
  REQUIRE(ctx.losses.size() == 2);
  CHECK(ctx.aux_losses.size() == 2);  // one per MoE layer
  const at::Tensor loss = total_loss(ctx);
  // untrained: near ln(vocab) for text and ln(codebook) for codes
  CHECK(ctx.losses[0].sum.item<double>() / ctx.losses[0].count.item<double>() == doctest::Approx(std::log(512.0)).epsilon(0.05));
  CHECK(ctx.losses[1].count.item<int64_t>() == 4);
  loss.backward();
  int64_t with_grad = 0, nonzero = 0;
  for (const auto& p : params.parameters()) {
    with_grad += p.grad().defined();
    nonzero += p.grad().defined() && p.grad().abs().sum().item<double>() > 0;
  }
  CHECK(with_grad == static_cast<int64_t>(params.parameters().size()) - 3);  // the VQ decoder is not trained
  CHECK(nonzero >= with_grad - 2);
}

TEST_CASE("omni model: gradients of the whole model by finite differences (double)") {
  const auto d = models::omni_moe_tiny();
  local_params<models::omni_moe> params(d, 5, at::kDouble);
  const batch b = omni_sample(at::kDouble);
  auto loss_fn = [&] {
    context ctx;
    ctx.data = &b;
    forward<models::omni_moe>(d, params, ctx);
    return total_loss(ctx);
  };
  const at::Tensor loss = loss_fn();
  loss.backward();
  CHECK(testing::check_gradients_by_fd(params.parameters(), params.specs(), loss_fn, 7).checked >= 8);
}

TEST_CASE("omni model: a batch without images or audio still runs every node") {
  const auto d = models::omni_moe_tiny();
  local_params<models::omni_moe> params(d, 3);
  batch b = omni_sample();
  b.tokens = at::arange(1, 9, at::kLong);
  b.targets = at::arange(2, 10, at::kLong);
  b.position_ids = at::arange(8, at::kLong);
  b.cu_seqlens = at::tensor({0, 8}, at::kLong);
  b.pixels = at::Tensor();
  b.mel = at::Tensor();
  b.code_targets = at::Tensor();
  context ctx;
  ctx.data = &b;
  const port_map out = forward<models::omni_moe>(d, params, ctx);
  CHECK(out.at("vision.embeds").size(0) == 0);
  CHECK(out.at("audio.embeds").size(0) == 0);
  total_loss(ctx).backward();
  for (const auto& p : params.parameters())
    if (p.grad().defined()) CHECK(std::isfinite(p.grad().sum().item<double>()));
}

TEST_CASE("omni model: placeholder tokens must match the encoder outputs") {
  const auto d = models::omni_moe_tiny();
  local_params<models::omni_moe> params(d, 3);
  batch b = omni_sample();
  b.pixels = b.pixels.slice(0, 0, 1);  // one image for two images' placeholders
  context ctx;
  ctx.data = &b;
  CHECK_THROWS_WITH(forward<models::omni_moe>(d, params, ctx),
                    doctest::Contains("8 'image_embeds' placeholder tokens but the encoder produced 4"));
}

TEST_CASE("image-token decoder: codes back to pixels") {
  const auto d = models::omni_moe_tiny().at<"image_out">();
  tensors w;
  for (const auto& s : impl<image_token_decoder>::root_specs(d)) w.push_back(materialize(s, 1));
  const at::Tensor codes = at::randint(0, d.codebook, {2, 3, 5}, at::kLong);
  const at::Tensor px = impl<image_token_decoder>::decode(d, w, codes);
  CHECK(px.sizes() == at::IntArrayRef{2, 3, 12, 20});
  // each patch is the linear image of its code's embedding
  const at::Tensor e = w[1][codes[1][2][4].item<int64_t>()];
  const at::Tensor patch = (at::matmul(w[2], e) + w[3]).view({3, 4, 4});
  CHECK((px[1].slice(1, 8, 12).slice(2, 16, 20) - patch).abs().max().item<double>() < 1e-6);
}
