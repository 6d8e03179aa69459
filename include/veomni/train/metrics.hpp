#pragma once
// <veomni/train/metrics.hpp>: what a person sees of a run.
//   progress_line   "step 12/300 | loss 3.1416 | lr 9.87e-04 | grad norm 1.23 | 4,321 tok/s | MFU 1.2% | ETA 1m05s"
//   metrics.jsonl   one JSON object per step (step, loss, grad_norm, lr, tokens, tokens_per_s, mfu, ...)
//   loss_curve.png  the loss by step (and held-out loss points), drawn here and
//                   written by stb_image_write (Debian: libstb-dev)
// and the throughput yardstick for MFU: the measured fp32 GEMM rate of this CPU.
#include <stb/stb_image_write.h>  // Debian libstb-dev (link -lstb)
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace veomni::train {

inline std::string with_commas(double v) {
  std::string s = std::to_string(static_cast<long long>(std::llround(v)));
  for (int i = static_cast<int>(s.size()) - 3; i > (s[0] == '-' ? 1 : 0); i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

inline std::string format_duration(double seconds) {
  const long s = static_cast<long>(std::max(0.0, seconds) + 0.5);
  char b[32];
  if (s >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else if (s >= 60) std::snprintf(b, sizeof b, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(b, sizeof b, "%lds", s);
  return b;
}

struct step_record {
  long step = 0, total = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  double tokens = 0, seconds = 0, mfu = 0, eta_s = 0;
  long micro_batches = 1;
};

inline std::string progress_line(const step_record& r) {
  char b[256];
  std::snprintf(b, sizeof b, "step %ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | MFU %.2f%% | ETA %s", r.step,
                r.total, r.loss, r.lr, r.grad_norm, with_commas(r.seconds > 0 ? r.tokens / r.seconds : 0).c_str(),
                100.0 * r.mfu, format_duration(r.eta_s).c_str());
  return b;
}

inline nlohmann::ordered_json to_json(const step_record& r) {
  return {{"step", r.step},
          {"loss", r.loss},
          {"grad_norm", r.grad_norm},
          {"lr", r.lr},
          {"tokens", static_cast<long long>(r.tokens)},
          {"tokens_per_s", r.seconds > 0 ? r.tokens / r.seconds : 0.0},
          {"mfu", r.mfu},
          {"step_time_s", r.seconds},
          {"micro_batches", r.micro_batches}};
}

// fp32 GEMM FLOP/s of this process (what one rank can do): the best of a few
// 384^3 matmuls after a warm-up. MFU divides by it times the world size.
inline double measure_peak_flops() {
  const int64_t n = 384;
  const at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::Tensor c = at::matmul(a, b);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    c = at::matmul(a, b);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / std::max(s, 1e-9));
  }
  return best;
}

// ---- the loss curve ----------------------------------------------------------------------

namespace detail {
// 3x5 digits and a few signs, one row per 3 bits (MSB left).
inline const unsigned char* glyph(char c) {
  static const unsigned char digits[10][5] = {{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
                                              {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1},
                                              {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}};
  static const unsigned char dot[5] = {0, 0, 0, 0, 2}, minus[5] = {0, 0, 7, 0, 0}, blank[5] = {0, 0, 0, 0, 0};
  if (c >= '0' && c <= '9') return digits[c - '0'];
  return c == '.' ? dot : c == '-' ? minus : blank;
}

struct canvas {
  int w, h;
  std::vector<unsigned char> px;
  canvas(int w_, int h_) : w(w_), h(h_), px(static_cast<size_t>(w_ * h_ * 3), 255) {}
  void set(int x, int y, const unsigned char* c) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    for (int k = 0; k < 3; ++k) px[static_cast<size_t>((y * w + x) * 3 + k)] = c[k];
  }
  void line(double x0, double y0, double x1, double y1, const unsigned char* c, int thick = 1) {
    const int n = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      const double t = static_cast<double>(i) / n;
      const int x = static_cast<int>(std::lround(x0 + t * (x1 - x0))), y = static_cast<int>(std::lround(y0 + t * (y1 - y0)));
      for (int dx = 0; dx < thick; ++dx)
        for (int dy = 0; dy < thick; ++dy) set(x + dx, y + dy, c);
    }
  }
  void text(int x, int y, const std::string& s, const unsigned char* c, int scale = 2) {
    for (char ch : s) {
      const unsigned char* g = glyph(ch);
      for (int r = 0; r < 5; ++r)
        for (int col = 0; col < 3; ++col)
          if (g[r] >> (2 - col) & 1)
            for (int a = 0; a < scale; ++a)
              for (int b = 0; b < scale; ++b) set(x + col * scale + a, y + r * scale + b, c);
      x += 4 * scale;
    }
  }
};

inline std::string short_number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, std::abs(v) >= 100 ? "%.0f" : "%.2f", v);
  return b;
}
}  // namespace detail

// Training loss (blue) by step, held-out loss (orange dots) where evaluated;
// labelled axes: loss range on the left, first and last step below.
inline void write_loss_curve(const std::string& path, const std::vector<std::pair<double, double>>& train,
                             const std::vector<std::pair<double, double>>& eval = {}) {
  constexpr int W = 720, H = 420, L = 70, R = 20, T = 20, B = 40;
  detail::canvas c(W, H);
  static const unsigned char axis[3] = {40, 40, 40}, grid[3] = {225, 225, 225}, blue[3] = {31, 119, 180},
                             orange[3] = {255, 127, 14};
  if (train.empty()) return;
  double x0 = train.front().first, x1 = train.back().first, y0 = 0, y1 = 0;
  for (const auto& p : train) y1 = std::max(y1, p.second);
  for (const auto& p : eval) y1 = std::max(y1, p.second), x1 = std::max(x1, p.first);
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  auto X = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  for (int i = 0; i <= 4; ++i) {
    const double y = y0 + (y1 - y0) * i / 4;
    c.line(L, Y(y), W - R, Y(y), grid);
    c.text(4, static_cast<int>(Y(y)) - 5, detail::short_number(y), axis);
  }
  c.line(L, T, L, H - B, axis);
  c.line(L, H - B, W - R, H - B, axis);
  c.text(L, H - B + 10, std::to_string(static_cast<long>(x0)), axis);
  const std::string last = std::to_string(static_cast<long>(x1));
  c.text(W - R - 8 * static_cast<int>(last.size()), H - B + 10, last, axis);
  for (size_t i = 1; i < train.size(); ++i)
    c.line(X(train[i - 1].first), Y(train[i - 1].second), X(train[i].first), Y(train[i].second), blue, 2);
  if (train.size() == 1) c.line(X(train[0].first), Y(train[0].second), X(train[0].first) + 1, Y(train[0].second), blue, 3);
  for (const auto& p : eval)
    for (int dx = -3; dx <= 3; ++dx)
      for (int dy = -3; dy <= 3; ++dy)
        if (dx * dx + dy * dy <= 9) c.set(static_cast<int>(X(p.first)) + dx, static_cast<int>(Y(p.second)) + dy, orange);
  stbi_write_png(path.c_str(), W, H, 3, c.px.data(), W * 3);
}

}  // namespace veomni::train
