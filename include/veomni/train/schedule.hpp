#pragma once
// <veomni/train/schedule.hpp>: the learning rate of step s (0-based) —
// linear warmup over `warmup` steps, then constant, linear or cosine decay
// from `peak` to `min` at step `total`. Worked example, peak 1e-3, warmup 2,
// total 10, cosine: 5.0e-4, 1.0e-3, 1.0e-3, 9.6e-4, 8.5e-4, ... (step 9: 3.8e-5).
#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

namespace veomni::train {

struct lr_schedule {
  double peak = 1e-3, min = 0.0;
  long warmup = 0, total = 1;
  std::string style = "cosine";  // constant | linear | cosine

  double at(long step) const {
    if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (style == "constant") return peak;
    const double p = std::clamp(static_cast<double>(step - warmup) / static_cast<double>(std::max(1L, total - warmup)), 0.0, 1.0);
    if (style == "linear") return min + (peak - min) * (1.0 - p);
    return min + (peak - min) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
  }
};

}  // namespace veomni::train
