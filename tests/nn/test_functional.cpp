// Functional pieces against plain reference computations; gradients by
// finite differences in double precision.
// torch first: doctest's CHECK must replace c10's one-argument CHECK
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <veomni/nn.hpp>
#include <veomni/train/optimizer.hpp>

using namespace veomni::nn;

namespace {
const auto f64 = at::TensorOptions().dtype(at::kDouble);

bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-10) {
  return a.sizes() == b.sizes() && (a - b).abs().max().item<double>() <= tol * (1 + b.abs().max().item<double>());
}

// Central finite differences of a scalar function against autograd, on a few
// coordinates of each input.
void check_gradients(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f, std::vector<at::Tensor> xs) {
  for (auto& x : xs) x = x.detach().clone().set_requires_grad(true);
  at::Tensor y = f(xs);
  const auto grads = torch::autograd::grad({y}, xs, {}, false, false, true);
  const double h = 1e-6;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const int64_t n = xs[i].numel();
    for (int64_t j : {int64_t{0}, n / 2, n - 1}) {
      at::Tensor plus = xs[i].detach().clone(), minus = xs[i].detach().clone();
      plus.view({-1})[j] += h;
      minus.view({-1})[j] -= h;
      auto args_p = xs, args_m = xs;
      args_p[i] = plus;
      args_m[i] = minus;
      const double fd = (f(args_p).item<double>() - f(args_m).item<double>()) / (2 * h);
      const double ad = grads[i].defined() ? grads[i].view({-1})[j].item<double>() : 0.0;
      CHECK_MESSAGE(std::abs(fd - ad) <= 1e-6 * (1 + std::abs(fd)), "input ", i, " coord ", j, ": fd ", fd, " vs ", ad);
    }
  }
}

// softmax(QK^T / sqrt(d) + M) V with M the explicit block-diagonal (causal) mask over the whole pack.
at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::vector<int64_t>& lens, bool causal) {
  const int64_t t = q.size(0), hq = q.size(1), hkv = k.size(1), d = q.size(2);
  std::vector<int64_t> seg;
  for (std::size_t s = 0; s < lens.size(); ++s)
    for (int64_t i = 0; i < lens[s]; ++i) seg.push_back(static_cast<int64_t>(s));
  at::Tensor mask = at::zeros({t, t}, f64);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < t; ++j)
      if (seg[i] != seg[j] || (causal && j > i)) mask[i][j] = -INFINITY;
  const at::Tensor kk = k.repeat_interleave(hq / hkv, 1), vv = v.repeat_interleave(hq / hkv, 1);
  const at::Tensor s = at::einsum("ihd,jhd->hij", {q, kk}) / std::sqrt(double(d)) + mask;
  return at::einsum("hij,jhd->ihd", {s.softmax(-1), vv});
}
}  // namespace

TEST_CASE("init: values depend only on (seed, name, index), and slices equal the whole") {
  const param_spec s{"layers.0.mlp.up_proj.weight", {8, 6}};
  const at::Tensor full = materialize(s, 7);
  CHECK(close(materialize_slice(s, 7, 10, 30), full.view({-1}).slice(0, 10, 30), 0));
  CHECK(!close(materialize(param_spec{"layers.1.mlp.up_proj.weight", {8, 6}}, 7), full, 0));
  CHECK(!close(materialize(s, 8), full, 0));
  const at::Tensor big = materialize(param_spec{"w", {200, 200}}, 1, at::kDouble);
  CHECK(big.mean().item<double>() == doctest::Approx(0).epsilon(0.001));
  CHECK(big.std().item<double>() == doctest::Approx(0.02).epsilon(0.01));
  CHECK(materialize(param_spec{"n", {4}, init_kind::ones}, 1).sum().item<double>() == 4);
}

TEST_CASE("init: a flat slice over several params, with FSDP padding past the end") {
  const std::vector<param_spec> specs{{"a", {3, 2}}, {"b", {5}, init_kind::ones}, {"c", {4}}};
  at::Tensor whole = at::cat({materialize(specs[0], 3).view({-1}), materialize(specs[1], 3), materialize(specs[2], 3)});
  CHECK(total_numel(specs) == 15);
  CHECK(close(materialize_flat_slice(specs, 3, 4, 12), whole.slice(0, 4, 12), 0));
  const at::Tensor tail = materialize_flat_slice(specs, 3, 12, 16);  // 3 real + 1 pad
  CHECK(close(tail.slice(0, 0, 3), whole.slice(0, 12, 15), 0));
  CHECK(tail[3].item<float>() == 0);
  const auto views = unflatten(whole, specs);
  CHECK(views[0].sizes() == at::IntArrayRef{3, 2});
  CHECK(close(views[2], materialize(specs[2], 3), 0));
  CHECK_THROWS_WITH(materialize_slice(specs[0], 3, 0, 7), doctest::Contains("outside parameter 'a'"));
}

TEST_CASE("rms_norm matches its formula, rope rotates pairs and keeps norms") {
  const at::Tensor x = at::randn({5, 8}, f64), w = at::randn({8}, f64);
  CHECK(close(rms_norm(x, w), x / (x.pow(2).mean(-1, true) + 1e-6).sqrt() * w));
  const at::Tensor q = at::randn({6, 2, 8}, f64);
  const at::Tensor pos = at::tensor({0, 1, 2, 0, 1, 5}, at::kLong);
  const at::Tensor r = rope(q, pos);
  CHECK(close(r.norm(2, -1), q.norm(2, -1)));
  CHECK(close(r[0], q[0]));  // position 0 is the identity
  // <rope(q, m), rope(k, n)> depends on m - n only
  const at::Tensor a = at::randn({1, 1, 8}, f64), b = at::randn({1, 1, 8}, f64);
  auto dot = [&](int64_t m, int64_t n) {
    return (rope(a, at::tensor({m}, at::kLong)) * rope(b, at::tensor({n}, at::kLong))).sum().item<double>();
  };
  CHECK(dot(3, 1) == doctest::Approx(dot(7, 5)));
}

TEST_CASE("varlen attention equals softmax(QK^T)V with the explicit block-diagonal causal mask (GQA)") {
  const std::vector<int64_t> lens{3, 1, 4};
  const at::Tensor cu = at::tensor({0, 3, 4, 8}, at::kLong);
  const at::Tensor q = at::randn({8, 4, 8}, f64), k = at::randn({8, 2, 8}, f64), v = at::randn({8, 2, 8}, f64);
  CHECK(close(varlen_attention(q, k, v, cu, true), reference_attention(q, k, v, lens, true)));
  CHECK(close(varlen_attention(q, k, v, cu, false), reference_attention(q, k, v, lens, false)));
  CHECK_THROWS_WITH(varlen_attention(at::randn({8, 3, 8}, f64), k, v, cu, true), doctest::Contains("not a multiple"));
}

// The blocked form: runs of equal-length samples batched together, causal
// query blocks that skip the masked triangle. Every block size, including
// ones that do not divide a sample, and a pack that mixes runs and singles.
TEST_CASE("varlen attention in query blocks equals the reference for every block size, in value and gradient") {
  const std::vector<int64_t> lens{5, 5, 5, 3, 7, 7, 1};
  std::vector<int64_t> cu_v{0};
  for (int64_t l : lens) cu_v.push_back(cu_v.back() + l);
  const at::Tensor cu = at::tensor(cu_v, at::kLong);
  const int64_t t = cu_v.back();
  const at::Tensor q = at::randn({t, 4, 6}, f64), k = at::randn({t, 2, 6}, f64), v = at::randn({t, 2, 6}, f64);
  for (bool causal : {true, false}) {
    const at::Tensor want = reference_attention(q, k, v, lens, causal);
    for (int64_t block : {1, 2, 3, 4, 64}) {
      CAPTURE(causal);
      CAPTURE(block);
      CHECK(close(varlen_attention(q, k, v, cu, causal, block), want));
    }
  }
  for (int64_t block : {2, 3})
    check_gradients(
        [&](const std::vector<at::Tensor>& a) { return varlen_attention(a[0], a[1], a[2], cu, true, block).pow(2).sum(); },
        {q, k, v});
  // a sample of length 0 in the pack, and no token at all
  const at::Tensor cu0 = at::tensor({0, 3, 3, 8}, at::kLong);
  const at::Tensor q8 = q.narrow(0, 0, 8), k8 = k.narrow(0, 0, 8), v8 = v.narrow(0, 0, 8);
  CHECK(close(varlen_attention(q8, k8, v8, cu0, true, 2), reference_attention(q8, k8, v8, {3, 5}, true)));
  CHECK(varlen_attention(q.narrow(0, 0, 0), k.narrow(0, 0, 0), v.narrow(0, 0, 0), at::tensor({0}, at::kLong), true)
            .sizes() == at::IntArrayRef{0, 4, 6});
}

TEST_CASE("gemm_batched: every transpose, alpha and beta, on strided views, through CBLAS and through the fallback") {
  for (auto type : {at::kFloat, at::kDouble}) {
    const auto o = at::TensorOptions().dtype(type);
    const at::Tensor a = at::randn({3, 7, 5}, o), b = at::randn({3, 6, 5}, o);
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        CAPTURE(ta);
        CAPTURE(tb);
        // op(A) is [4, 5] and op(B) is [5, 6]: slice stored matrices to fit
        const at::Tensor sa = ta ? a.narrow(1, 0, 5).narrow(2, 0, 4) : a.narrow(1, 0, 4);  // [.,5,4] or [.,4,5]
        const at::Tensor sb = tb ? b : b.transpose(1, 2).contiguous();  // [., 6, 5] or [., 5, 6]
        const at::Tensor pa = ta ? sa.transpose(1, 2) : sa, pb = tb ? sb.transpose(1, 2) : sb;
        const at::Tensor c0 = at::randn({3, 4, 9}, o);
        at::Tensor c = c0.clone(), view = c.narrow(2, 2, 6);  // rows 9 apart
        veomni::nn::kernels::gemm_batched(view, sa, ta, sb, tb, 0.5, 2.0);
        CHECK(close(view, c0.narrow(2, 2, 6) * 2.0 + 0.5 * at::bmm(pa, pb), 1e-5));
        CHECK(close(c.narrow(2, 0, 2), c0.narrow(2, 0, 2), 0));  // outside the view: untouched
        // a column view (no unit stride): the ATen fallback, same result
        at::Tensor cc = c0.clone().transpose(1, 2).contiguous().transpose(1, 2);
        at::Tensor cview = cc.narrow(2, 2, 6);
        veomni::nn::kernels::gemm_batched(cview, sa, ta, sb, tb, 0.5, 2.0);
        CHECK(close(cview, view, 1e-5));
        at::Tensor fresh = at::empty({3, 4, 6}, o);
        veomni::nn::kernels::gemm_batched(fresh, sa, ta, sb, tb, 1.0, 0.0);  // beta 0: prior contents ignored
        CHECK(close(fresh, at::bmm(pa, pb), 1e-5));
      }
  }
}

// fp32 takes the fused path when the CPU has AVX2 and the process a CBLAS:
// every (sample, head) read in place in [T, H, D], scores through
// cblas_sgemm, one AVX2 pass for mask + softmax and one for its backward
// (double above goes through the ATen/cblas_dgemm form). Against the double
// reference, in value and gradient, for several block sizes (ones that do
// not divide a sample, and the default), runs and singles, an empty sample,
// tokens of no sample (zero output, zero gradient) and a strided gradient.
TEST_CASE("varlen attention in fp32 equals the double reference, in value and gradient") {
  MESSAGE("fused fp32 attention on this machine: ",
          veomni::nn::detail::attention_fusable(at::zeros({1, 1, 8}), at::zeros({1, 1, 8}), at::zeros({1, 1, 8})));
  const std::vector<int64_t> lens{70, 70, 33, 0, 130};
  std::vector<int64_t> cu_v{0};
  for (int64_t l : lens) cu_v.push_back(cu_v.back() + l);
  const at::Tensor cu = at::tensor(cu_v, at::kLong);
  const int64_t covered = cu_v.back(), t = covered + 5;  // 5 tokens of no sample at the end
  const at::Tensor q = at::randn({t, 4, 16}), k = at::randn({t, 2, 16}), v = at::randn({t, 2, 16});
  const at::Tensor g = at::randn({4, t, 16}).transpose(0, 1);  // [t, 4, 16], not contiguous
  auto rel = [](const at::Tensor& x, const at::Tensor& ref) {
    return ((x.to(at::kDouble) - ref).abs().max() / ref.abs().max()).item<double>();
  };
  for (bool causal : {true, false})
    for (int64_t block : {7, 64}) {
      CAPTURE(causal);
      CAPTURE(block);
      std::vector<at::Tensor> x32{q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()};
      std::vector<at::Tensor> x64{q.narrow(0, 0, covered).to(at::kDouble).requires_grad_(),
                                  k.narrow(0, 0, covered).to(at::kDouble).requires_grad_(),
                                  v.narrow(0, 0, covered).to(at::kDouble).requires_grad_()};
      const at::Tensor y32 = varlen_attention(x32[0], x32[1], x32[2], cu, causal, block);
      const at::Tensor y64 = reference_attention(x64[0], x64[1], x64[2], lens, causal);
      y32.backward(g);
      y64.backward(g.narrow(0, 0, covered).to(at::kDouble));
      CHECK(rel(y32.narrow(0, 0, covered), y64) < 1e-5);
      CHECK(y32.narrow(0, covered, 5).abs().max().item<float>() == 0.0f);
      for (int i = 0; i < 3; ++i) {
        CAPTURE(i);
        CHECK(rel(x32[i].grad().narrow(0, 0, covered), x64[i].grad()) < 1e-5);
        CHECK(x32[i].grad().narrow(0, covered, 5).abs().max().item<float>() == 0.0f);
      }
    }
}

// Flash attention (the fused fp32 path): tiles of queries and keys with an
// online softmax, only each row's log-sum-exp kept for backward. Against the
// double reference, in value and in the gradients of q, k and v: tile sizes
// that divide the samples (35, 70) and that do not (1, 16, 64, 128 against
// lengths 70, 1, 130, 3), a one-token sample, packed samples of unequal
// lengths, GQA ratios 1, 2 and 4, causal and bidirectional.
TEST_CASE("flash attention in fp32 equals the double reference for every tile size and GQA ratio, in value and gradient") {
  const std::vector<int64_t> lens{70, 1, 130, 3, 70};
  std::vector<int64_t> cu_v{0};
  for (int64_t l : lens) cu_v.push_back(cu_v.back() + l);
  const at::Tensor cu = at::tensor(cu_v, at::kLong);
  const int64_t t = cu_v.back(), hq = 4;
  auto rel = [](const at::Tensor& x, const at::Tensor& ref) {
    return ((x.to(at::kDouble) - ref).abs().max() / ref.abs().max()).item<double>();
  };
  for (int64_t ratio : {1, 2, 4}) {
    const at::Tensor q = at::randn({t, hq, 16}), k = at::randn({t, hq / ratio, 16}), v = at::randn({t, hq / ratio, 16});
    const at::Tensor g = at::randn({t, hq, 16});
    for (bool causal : {true, false})
      for (int64_t tile : {1, 16, 35, 64, 70, 128}) {
        CAPTURE(ratio);
        CAPTURE(causal);
        CAPTURE(tile);
        std::vector<at::Tensor> x32{q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()};
        std::vector<at::Tensor> x64{q.to(at::kDouble).requires_grad_(), k.to(at::kDouble).requires_grad_(),
                                    v.to(at::kDouble).requires_grad_()};
        const at::Tensor y32 = varlen_attention(x32[0], x32[1], x32[2], cu, causal, tile);
        const at::Tensor y64 = reference_attention(x64[0], x64[1], x64[2], lens, causal);
        y32.backward(g);
        y64.backward(g.to(at::kDouble));
        CHECK(rel(y32, y64) < 1e-5);
        for (int i = 0; i < 3; ++i) {
          CAPTURE(i);
          CHECK(rel(x32[i].grad(), x64[i].grad()) < 1e-5);
        }
      }
  }
  // one token alone: its output is its value, its q and k get no gradient
  // (to rounding: P = exp(s - lse) is 1 within an ulp)
  const at::Tensor q1 = at::randn({1, 2, 8}).requires_grad_(), k1 = at::randn({1, 2, 8}).requires_grad_(),
                   v1 = at::randn({1, 2, 8}).requires_grad_();
  const at::Tensor y1 = varlen_attention(q1, k1, v1, at::tensor({0, 1}, at::kLong), true, 64);
  CHECK(close(y1, v1.detach(), 1e-6));
  y1.sum().backward();
  CHECK(q1.grad().abs().max().item<float>() < 1e-6f);
  CHECK(k1.grad().abs().max().item<float>() < 1e-6f);
  CHECK(close(v1.grad(), at::ones_like(v1), 1e-6));
}

// The views a flat parameter buffer is cut into, through split_flat's one
// autograd node: the same gradient as narrow()'s views, zero in the padding
// and for a view that got none; without grad mode, plain views.
TEST_CASE("split_flat: views of a flat buffer, whose gradient equals narrow()'s, zero in padding and for unused views") {
  const std::vector<std::vector<int64_t>> shapes{{3, 4}, {5}, {2, 3}, {4}};
  const at::Tensor init = at::randn({30}, f64);  // 12 + 5 + 6 + 4 = 27 elements and 3 of padding
  std::vector<at::Tensor> c;
  for (const auto& s : shapes) c.push_back(at::randn(s, f64));
  auto loss = [&](const std::vector<at::Tensor>& w) {  // the third view unused
    return (w[0] * c[0]).sum() + (w[1] * w[1] * c[1]).sum() + (w[3].exp() * c[3]).sum();
  };
  const at::Tensor a = init.clone().requires_grad_(), b = init.clone().requires_grad_();
  const auto wa = split_flat(a, shapes);
  std::vector<at::Tensor> wb;
  for (int64_t off = 0; const auto& s : shapes) {
    const int64_t n = c10::multiply_integers(s);
    wb.push_back(b.narrow(0, off, n).view(s));
    off += n;
  }
  REQUIRE(wa.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(wa[i].sizes() == wb[i].sizes());
    // views of the buffer at the same places, no copy
    CHECK(wa[i].data_ptr<double>() - a.data_ptr<double>() == wb[i].data_ptr<double>() - b.data_ptr<double>());
  }
  CHECK(wa[0].grad_fn()->name().find("split_flat_fn") != std::string::npos);
  loss(wa).backward();
  loss(wb).backward();
  CHECK(close(a.grad(), b.grad(), 0));
  CHECK(a.grad().narrow(0, 17, 6).abs().max().item<double>() == 0);  // the unused view
  CHECK(a.grad().narrow(0, 27, 3).abs().max().item<double>() == 0);  // padding
  {
    torch::NoGradGuard no_grad;
    const auto w = split_flat(a, shapes);
    CHECK((!w[0].grad_fn() || w[0].grad_fn()->name().find("split_flat_fn") == std::string::npos));
    CHECK(w[3].data_ptr() == wa[3].data_ptr());
  }
  CHECK(split_flat(at::Tensor(), {}).empty());
  CHECK_THROWS_WITH(split_flat(at::zeros({20}), shapes), doctest::Contains("do not fit"));
}

// Direct gradients: nn::project and the LM loss write their weights' gradients
// straight into the flat gradient (no tensor of their own, no copy), which
// must equal what autograd gives through plain views in every case: a weight
// used once, twice (the second GEMM adds), also by an ordinary op (its
// gradient added to the written one), by nothing, and a view of a view (an
// ordinary gradient); a second backward over the same graph (retain_graph)
// starts afresh; and a flat whose every parameter was written directly.
TEST_CASE("split_flat with direct gradients: project and lm_loss_sum write into the flat gradient, equal to autograd's") {
  const std::vector<std::vector<int64_t>> shapes{{6, 5}, {4, 6}, {5}, {3, 5}, {7, 5}, {2, 3}};
  const at::Tensor init = at::randn({115 + 4}, f64) * 0.3;  // 4 of padding
  const at::Tensor x = at::randn({2, 4, 5}, f64), targets = at::randint(0, 7, {8}, at::kLong);
  auto loss = [&](const std::vector<at::Tensor>& w) {
    at::Tensor h = project(x, w[0]).tanh();                       // w0 once
    h = project(project(h, w[1]).sin(), w[1].t().contiguous());    // w1 twice: once as itself, once through a copy
    h = h.reshape({8, 6}).narrow(1, 0, 5) * w[2] + project(h.reshape({8, 6}).narrow(1, 0, 5), w[3]).sum(1, true);
    at::Tensor l = lm_loss_sum(h, w[4], targets, 3) + (w[4] * w[4]).sum();  // w4: the loss head and an ordinary op
    l = l + project(h, w[3].narrow(0, 0, 2)).pow(2).sum();        // a view of w3: an ordinary gradient
    l = l + project(h, w[0].narrow(0, 1, 5).t().contiguous().t()).sum();  // w0 again, written on top
    return l;                                                    // w5 unused
  };
  const at::Tensor a = init.clone().requires_grad_(), b = init.clone().requires_grad_();
  const auto wa = split_flat(a, shapes, true), wb = split_flat(b, shapes);
  const at::Tensor la = loss(wa), lb = loss(wb);
  CHECK(close(la, lb, 1e-12));
  la.backward({}, /*retain_graph=*/true);
  lb.backward({}, true);
  CHECK(close(a.grad(), b.grad(), 1e-12));
  CHECK(a.grad().narrow(0, 109, 10).abs().max().item<double>() == 0);  // w5 and the padding
  const at::Tensor first = a.grad().clone();
  la.backward();  // the same graph again: the same gradient once more, nothing left from the first
  CHECK(close(a.grad(), 2 * first, 1e-12));

  // every parameter written directly: the node still returns the flat gradient
  const at::Tensor c = at::randn({30 + 42}, f64).requires_grad_(), d = c.detach().clone().requires_grad_();
  const std::vector<std::vector<int64_t>> two{{6, 5}, {7, 6}};
  auto head = [&](const std::vector<at::Tensor>& w) { return lm_loss_sum(project(x.reshape({8, 5}), w[0]), w[1], targets, 4); };
  head(split_flat(c, two, true)).backward();
  head(split_flat(d, two)).backward();
  CHECK(close(c.grad(), d.grad(), 1e-12));
  // without autograd: plain values
  {
    torch::NoGradGuard no_grad;
    CHECK(close(project(x, wa[0]), at::matmul(x, wa[0].t()), 0));
  }
  CHECK_THROWS_WITH(project(x, wa[1]), doctest::Contains("does not fit a weight of shape"));
}

TEST_CASE("rms_norm: value and gradients by finite differences, and the weight's gradient when only it wants one") {
  check_gradients([&](const std::vector<at::Tensor>& a) { return rms_norm(a[0], a[1]).pow(3).sum(); },
                  {at::randn({4, 3, 6}, f64), at::randn({6}, f64)});
  const at::Tensor x = at::randn({5, 6}, f64), w = at::randn({6}, f64).requires_grad_();
  const at::Tensor wr = w.detach().clone().requires_grad_();
  (rms_norm(x, w) * x).sum().backward();
  ((x / (x.pow(2).mean(-1, true) + 1e-6).sqrt() * wr) * x).sum().backward();
  CHECK(close(w.grad(), wr.grad()));
}

// The fused fp32 SwiGLU middle (AVX2 where the CPU has it) against the
// double-precision formula: values and both gradients, across the whole
// range of the exponential (saturated ends included) and a length that
// leaves a tail after the 8-wide loop.
TEST_CASE("silu_mul: the fused fp32 kernel equals silu(a) * b in double, in value and gradient") {
  MESSAGE("fused fp32 kernels available on this CPU: ", veomni::nn::kernels::fused_available());
  const int64_t n = 8 * 129 + 5;
  at::Tensor a = at::randn({n}) * 6;
  a[0] = 100.f, a[1] = -100.f, a[2] = 88.5f, a[3] = -88.5f, a[4] = 0.f;
  const at::Tensor b = at::randn({n}), g = at::randn({n});
  const at::Tensor a32 = a.clone().requires_grad_(), b32 = b.clone().requires_grad_();
  const at::Tensor z = veomni::nn::kernels::silu_mul(a32, b32);
  z.backward(g);
  const at::Tensor a64 = a.to(at::kDouble).requires_grad_(), b64 = b.to(at::kDouble).requires_grad_();
  const at::Tensor z64 = at::silu(a64) * b64;
  z64.backward(g.to(at::kDouble));
  // error relative to the largest value: an element-wise ratio is meaningless
  // where the gradient crosses zero (d silu / da = 0 near a = -1.28)
  auto rel = [](const at::Tensor& x, const at::Tensor& ref) {
    return ((x.to(at::kDouble) - ref).abs().max() / ref.abs().max()).item<double>();
  };
  CHECK(rel(z, z64) < 1e-6);
  CHECK(rel(a32.grad(), a64.grad()) < 1e-6);
  CHECK(rel(b32.grad(), b64.grad()) < 1e-6);
  CHECK(std::isfinite(z.sum().item<double>()));
  // not fusable (a strided view): the ATen composition, same values
  const at::Tensor wide = at::randn({n, 2});
  CHECK(close(veomni::nn::kernels::silu_mul(wide.select(1, 0), wide.select(1, 1)).to(at::kDouble),
              (at::silu(wide.select(1, 0)) * wide.select(1, 1)).to(at::kDouble), 1e-6));
}

// The fused fp32 RMSNorm and rotary kernels against the double-precision
// formulas (the double tests above run the ATen forms): values and every
// gradient, with widths that leave a tail after the 8-wide loops.
TEST_CASE("rms_norm and rope: the fused fp32 kernels equal the double formulas, in value and gradient") {
  auto rel = [](const at::Tensor& x, const at::Tensor& ref) {
    return ((x.to(at::kDouble) - ref).abs().max() / ref.abs().max()).item<double>();
  };
  for (int64_t n : {256, 13}) {
    CAPTURE(n);
    const at::Tensor x = at::randn({37, n}) * 3, w = at::randn({n}), g = at::randn({37, n});
    const at::Tensor x32 = x.clone().requires_grad_(), w32 = w.clone().requires_grad_();
    rms_norm(x32, w32).backward(g);
    const at::Tensor x64 = x.to(at::kDouble).requires_grad_(), w64 = w.to(at::kDouble).requires_grad_();
    const at::Tensor y64 = x64 / (x64.pow(2).mean(-1, true) + 1e-6).sqrt() * w64;
    y64.backward(g.to(at::kDouble));
    CHECK(rel(rms_norm(x, w), y64.detach()) < 1e-6);
    CHECK(rel(x32.grad(), x64.grad()) < 1e-5);
    CHECK(rel(w32.grad(), w64.grad()) < 1e-5);
  }
  for (int64_t d : {64, 10}) {
    CAPTURE(d);
    const at::Tensor pos = at::randint(0, 300, {21}, at::kLong);
    const at::Tensor x = at::randn({21, 3, d}), g = at::randn({21, 3, d});
    const rope_table t32 = make_rope_table(pos, d, at::kFloat);
    const at::Tensor x32 = x.clone().requires_grad_();
    rope(x32, t32).backward(g);
    // the same (fp32) table in double: what is left is the kernel's arithmetic
    const rope_table t64{pos, t32.cos.to(at::kDouble), t32.sin.to(at::kDouble), d};
    const at::Tensor x64 = x.to(at::kDouble).requires_grad_();
    const at::Tensor y64 = rope(x64, t64);
    y64.backward(g.to(at::kDouble));
    CHECK(rel(rope(x, t32), y64.detach()) < 1e-6);
    CHECK(rel(x32.grad(), x64.grad()) < 1e-6);
  }
}

TEST_CASE("rope: a table built once equals the per-call form, and a mismatched table is refused") {
  const at::Tensor x = at::randn({5, 3, 8}, f64), pos = at::tensor({0, 1, 2, 0, 4}, at::kLong);
  const rope_table table = make_rope_table(pos, 8, at::kDouble);
  // rotate-half form written out
  const at::Tensor inv = at::pow(10000.0, -at::arange(0, 8, 2, f64) / 8.0);
  const at::Tensor ang = pos.to(at::kDouble).unsqueeze(1) * inv.unsqueeze(0);
  const at::Tensor c = at::cat({ang.cos(), ang.cos()}, -1).unsqueeze(1), sn = at::cat({ang.sin(), ang.sin()}, -1).unsqueeze(1);
  const at::Tensor want = x * c + at::cat({-x.narrow(-1, 4, 4), x.narrow(-1, 0, 4)}, -1) * sn;
  CHECK(close(rope(x, table), want));
  CHECK(close(rope(x, pos), want));
  CHECK_THROWS_WITH(rope(at::randn({5, 3, 6}, f64), table), doctest::Contains("does not match a table"));
  // a layout builds its table once per head dim and type
  veomni::nn::seq_layout s{at::tensor({0, 5}, at::kLong), pos, true, {}};
  const rope_table a = s.rope_for(8, at::kDouble), b = s.rope_for(8, at::kDouble);
  CHECK(a.cos.is_same(b.cos));
  CHECK(!s.rope_for(4, at::kDouble).cos.is_same(a.cos));
  CHECK(s.rope_tables->size() == 2);
}

TEST_CASE("chunked lm loss: gradients reach whichever input wants them, and no-grad forward computes none") {
  const at::Tensor h = at::randn({7, 5}, f64), w = at::randn({11, 5}, f64);
  const at::Tensor t = at::tensor({1, -100, 3, 10, 0, -100, 4}, at::kLong);
  const at::Tensor full_h = h.clone().requires_grad_(), full_w = w.clone().requires_grad_();
  lm_loss_sum(full_h, full_w, t, 3).backward(at::tensor(2.0, f64));
  const at::Tensor only_w = w.clone().requires_grad_();
  (lm_loss_sum(h, only_w, t, 3) * 2).backward();
  CHECK(close(only_w.grad(), full_w.grad()));
  // plain cross-entropy's gradient, scaled by the incoming 2
  const at::Tensor rh = h.clone().requires_grad_();
  (2 * at::cross_entropy_loss(at::matmul(rh, w.t()), t, {}, at::Reduction::Sum, -100)).backward();
  CHECK(close(full_h.grad(), rh.grad()));
  CHECK(full_h.grad()[1].abs().sum().item<double>() == 0);  // an ignored row
  torch::NoGradGuard off;
  CHECK(lm_loss_sum(full_h, full_w, t, 3).item<double>() ==
        doctest::Approx(at::cross_entropy_loss(at::matmul(h, w.t()), t, {}, at::Reduction::Sum, -100).item<double>()));
}

TEST_CASE("moe: a router that sends everything to one expert equals that expert's MLP") {
  const int64_t t = 6, h = 8, f = 12, e = 4;
  const at::Tensor x = at::randn({t, h}, f64).abs() + 0.1;  // positive: the router below picks expert 2
  at::Tensor router = at::zeros({e, h}, f64);
  router[2].fill_(50.0);
  const expert_weights w{at::randn({e, f, h}, f64), at::randn({e, f, h}, f64), at::randn({e, h, f}, f64), {}};
  const routing r = route(x, router, 1, true);
  CHECK((r.experts == 2).all().item<bool>());
  const at::Tensor y = hooks{}.experts(x, r, w);
  CHECK(close(y, swiglu(x, w.gate[2], w.up[2], w.down[2])));
}

TEST_CASE("moe: grouped experts equal a per-token reference with top-k weights") {
  const int64_t t = 10, h = 6, f = 5, e = 4, k = 2;
  const at::Tensor x = at::randn({t, h}, f64), router = at::randn({e, h}, f64);
  const expert_weights w{at::randn({e, f, h}, f64), at::randn({e, f, h}, f64), at::randn({e, h, f}, f64), {}};
  for (bool renorm : {true, false}) {
    const routing r = route(x, router, k, renorm);
    at::Tensor ref = at::zeros({t, h}, f64);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t ex = r.experts[i][j].item<int64_t>();
        ref[i] += r.weights[i][j] * swiglu(x[i].unsqueeze(0), w.gate[ex], w.up[ex], w.down[ex])[0];
      }
    CHECK(close(hooks{}.experts(x, r, w), ref));
    if (renorm) CHECK(close(r.weights.sum(-1), at::ones({t}, f64)));
  }
}

TEST_CASE("moe: the load-balancing loss matches E * sum_e f_e * P_e") {
  const at::Tensor probs = at::tensor({0.7, 0.2, 0.1, 0.1, 0.6, 0.3}, f64).view({2, 3});
  const at::Tensor counts = at::tensor({1.0, 1.0, 0.0}, f64);  // top-1 picks: 0 and 1
  const double f0 = 0.5, f1 = 0.5, p0 = 0.4, p1 = 0.4;
  const double expect = 3 * (f0 * p0 + f1 * p1);
  CHECK(load_balancing_loss(counts, probs.sum(0), at::tensor(2.0, f64), 1).item<double>() == doctest::Approx(expect));
  // perfectly balanced routing gives 1
  CHECK(load_balancing_loss(at::full({4}, 2.0, f64), at::full({4}, 2.0, f64), at::tensor(8.0, f64), 1)
            .item<double>() == doctest::Approx(1.0));
}

TEST_CASE("chunked lm loss equals plain cross-entropy, in value and gradient, for any chunk") {
  const at::Tensor h = at::randn({7, 5}, f64), w = at::randn({11, 5}, f64);
  const at::Tensor t = at::tensor({1, -100, 3, 10, 0, -100, 4}, at::kLong);
  const double plain = at::cross_entropy_loss(at::matmul(h, w.t()), t, {}, at::Reduction::Sum, -100).item<double>();
  for (int64_t chunk : {1, 3, 7, 100}) CHECK(lm_loss_sum(h, w, t, chunk).item<double>() == doctest::Approx(plain));
  check_gradients([&](const std::vector<at::Tensor>& a) { return lm_loss_sum(a[0], a[1], t, 3); }, {h, w});
}

TEST_CASE("lm loss in fp32 (fused cross-entropy) matches double, with ignored rows and any vocabulary width") {
  for (int64_t vocab : {1, 7, 37, 64}) {
    const at::Tensor h = at::randn({9, 6}, f64), w = at::randn({vocab, 6}, f64);
    at::Tensor t = at::randint(0, vocab, {9}, at::kLong);
    t[2] = -100, t[5] = -100, t[0] = vocab - 1, t[8] = 0;
    const at::Tensor h32 = h.to(at::kFloat).requires_grad_(true), w32 = w.to(at::kFloat).requires_grad_(true);
    const at::Tensor hd = h.clone().requires_grad_(true), wd = w.clone().requires_grad_(true);
    for (int64_t chunk : {4, 100}) {
      h32.mutable_grad() = at::Tensor(), w32.mutable_grad() = at::Tensor();
      hd.mutable_grad() = at::Tensor(), wd.mutable_grad() = at::Tensor();
      const at::Tensor got = lm_loss_sum(h32, w32, t, chunk), want = lm_loss_sum(hd, wd, t, chunk);
      CHECK(got.item<double>() == doctest::Approx(want.item<double>()).epsilon(1e-5));
      (got * 0.5).backward();
      (want * 0.5).backward();
      CHECK(at::allclose(h32.grad().to(f64), hd.grad(), 1e-4, 1e-5));
      CHECK(at::allclose(w32.grad().to(f64), wd.grad(), 1e-4, 1e-5));
      CHECK(h32.grad()[2].abs().max().item<double>() == 0.0);  // an ignored row gets no gradient
    }
    // without autograd: the loss alone, the logits left unnormalised
    torch::NoGradGuard no_grad;
    CHECK(lm_loss_sum(h32, w32, t, 4).item<double>() == doctest::Approx(lm_loss_sum(hd, wd, t, 4).item<double>()).epsilon(1e-5));
  }
  // a target outside the vocabulary, not the ignore index, is named
  const at::Tensor h = at::randn({3, 4}), w = at::randn({5, 4}), bad = at::tensor({1, 5, -100}, at::kLong);
  CHECK_THROWS_WITH_AS(lm_loss_sum(h, w, bad), doctest::Contains("target 5 of row 1 is outside the vocabulary [0, 5)"),
                       c10::Error);
}

TEST_CASE("gradients: attention, SwiGLU and the MoE layer by finite differences in double") {
  const at::Tensor cu = at::tensor({0, 2, 5}, at::kLong);
  check_gradients(
      [&](const std::vector<at::Tensor>& a) { return varlen_attention(a[0], a[1], a[2], cu, true).pow(2).sum(); },
      {at::randn({5, 2, 4}, f64), at::randn({5, 1, 4}, f64), at::randn({5, 1, 4}, f64)});
  check_gradients([&](const std::vector<at::Tensor>& a) { return swiglu(a[0], a[1], a[2], a[3]).sum(); },
                  {at::randn({3, 4}, f64), at::randn({6, 4}, f64), at::randn({6, 4}, f64), at::randn({4, 6}, f64)});
  check_gradients(
      [&](const std::vector<at::Tensor>& a) {
        const routing r = route(a[0], a[1], 2, true);
        return hooks{}.experts(a[0], r, expert_weights{a[2], a[3], a[4], {}}).pow(2).sum();
      },
      {at::randn({5, 4}, f64), at::randn({3, 4}, f64), at::randn({3, 6, 4}, f64), at::randn({3, 6, 4}, f64),
       at::randn({3, 4, 6}, f64)});
  check_gradients([&](const std::vector<at::Tensor>& a) { return rope(a[0], at::tensor({0, 3, 1}, at::kLong)).sum(); },
                  {at::randn({3, 2, 4}, f64)});
}

TEST_CASE("conv1d_frames equals a double-precision convolution, in value and gradient (fp32)") {
  // Debian's LibTorch 1.13 gets fp32 gradients of stacked at::conv1d wrong
  // (oneDNN); the audio front end uses this unfold + matmul form instead.
  const at::Tensor x = at::randn({2, 9, 5}), w1 = at::randn({7, 5, 3}) * 0.3, b1 = at::randn({7});
  const at::Tensor w2 = at::randn({6, 7, 3}) * 0.3, b2 = at::randn({6});
  auto ours = [&](const std::vector<at::Tensor>& p) {
    return conv1d_frames(at::gelu(conv1d_frames(p[0], p[1], p[2], 1, 1)), p[3], p[4], 2, 1);
  };
  auto reference = [&](const std::vector<at::Tensor>& p) {  // torch's conv1d in double: [N, C, F] layout
    const at::Tensor h = at::gelu(at::conv1d(p[0].transpose(1, 2), p[1], p[2], 1, 1));
    return at::conv1d(h, p[3], p[4], 2, 1).transpose(1, 2);
  };
  std::vector<at::Tensor> p32{x, w1, b1, w2, b2}, p64;
  for (auto& t : p32) t = t.clone().set_requires_grad(true), p64.push_back(t.detach().to(at::kDouble).set_requires_grad(true));
  const at::Tensor y32 = ours(p32), y64 = reference(p64);
  CHECK(y32.sizes() == at::IntArrayRef{2, 5, 6});
  CHECK(close(y32.to(at::kDouble), y64, 1e-5));
  const at::Tensor g = at::randn(y32.sizes());
  (y32 * g).sum().backward();
  (y64 * g.to(at::kDouble)).sum().backward();
  for (size_t i = 0; i < p32.size(); ++i) CHECK(close(p32[i].grad().to(at::kDouble), p64[i].grad(), 1e-5));
}

TEST_CASE("adamw: three steps equal the textbook update, with the decay mask and a clipping scale") {
  const at::Tensor p0 = at::randn({7}, f64), mask = at::tensor({1, 1, 0, 1, 0, 0, 1}, f64);
  at::Tensor p = p0.clone().requires_grad_();
  veomni::train::adamw opt({p}, {mask}, {.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-3, .weight_decay = 0.3});
  at::Tensor rp = p0.clone(), m = at::zeros({7}, f64), v = at::zeros({7}, f64);
  const double scales[] = {1.0, 0.5, 1.0}, lrs[] = {0.1, 0.05, 0.02};
  for (int t = 1; t <= 3; ++t) {
    const at::Tensor g = at::randn({7}, f64);
    p.mutable_grad() = g.clone();
    opt.step(lrs[t - 1], scales[t - 1]);
    const at::Tensor gs = g * scales[t - 1];
    m = 0.8 * m + 0.2 * gs;
    v = 0.9 * v + 0.1 * gs * gs;
    const at::Tensor mh = m / (1 - std::pow(0.8, t)), vh = v / (1 - std::pow(0.9, t));
    rp = rp * (1 - lrs[t - 1] * 0.3 * mask);
    rp = rp - lrs[t - 1] * mh / (vh.sqrt() + 1e-3);
    CHECK(close(p.detach(), rp, 1e-12));
  }
  CHECK(opt.steps() == 3);
}

// fp32 parameters take the fused one-pass update (when the CPU has AVX2):
// against the textbook in double, over a length with a loop tail.
TEST_CASE("adamw in fp32 (the fused update) and squared_norm equal the double formulas") {
  MESSAGE("fused fp32 kernels available on this CPU: ", veomni::nn::kernels::fused_available());
  const int64_t n = 1037;
  const at::Tensor p0 = at::randn({n}), mask = (at::rand({n}) > 0.5).to(at::kFloat);
  at::Tensor p = p0.clone().requires_grad_();
  veomni::train::adamw opt({p}, {mask}, {.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-3, .weight_decay = 0.3});
  at::Tensor rp = p0.to(at::kDouble), m = at::zeros({n}, f64), v = at::zeros({n}, f64);
  const at::Tensor mk = mask.to(at::kDouble);
  const double scales[] = {1.0, 0.5, 1.0}, lrs[] = {0.1, 0.05, 0.02};
  for (int t = 1; t <= 3; ++t) {
    const at::Tensor g = at::randn({n});
    p.mutable_grad() = g.clone();
    const auto version = p._version();
    opt.step(lrs[t - 1], scales[t - 1]);
    CHECK(p._version() > version);
    const at::Tensor gs = g.to(at::kDouble) * scales[t - 1];
    m = 0.8 * m + 0.2 * gs;
    v = 0.9 * v + 0.1 * gs * gs;
    const at::Tensor mh = m / (1 - std::pow(0.8, t)), vh = v / (1 - std::pow(0.9, t));
    rp = rp * (1 - lrs[t - 1] * 0.3 * mk);
    rp = rp - lrs[t - 1] * mh / (vh.sqrt() + 1e-3);
    CHECK(close(p.detach().to(at::kDouble), rp, 1e-6));
    CHECK(close(opt.exp_avg_sq()[0].to(at::kDouble), v, 1e-6));
  }
  const at::Tensor x = at::randn({100002});  // 7 x 14286
  const double want = x.to(at::kDouble).pow(2).sum().item<double>();
  CHECK(std::abs(veomni::nn::kernels::squared_norm(x) - want) <= 1e-12 * want);
  CHECK(std::abs(veomni::nn::kernels::squared_norm(x.view({-1, 7}).t()) - want) <= 1e-12 * want);  // strided: ATen
  CHECK(veomni::nn::kernels::squared_norm(x.narrow(0, 0, 0)) == 0);
}

