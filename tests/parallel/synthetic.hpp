#pragma once
// Deterministic synthetic global batches for the parity tests: text of
// varying lengths; for the multimodal models images (4 placeholder tokens
// each) and audio clips (4 tokens each) on some samples only, so that with
// data parallelism some ranks get no image at all; image-code targets.
#include <torch/torch.h>

#include <vector>

#include <veomni/parallel/data.hpp>

namespace veomni::testing {

inline constexpr int64_t image_token = 500, audio_token = 501;

enum class kind { text, vision, omni };

inline std::vector<parallel::sample> global_batch(kind k, int64_t step, int64_t samples = 8) {
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 + step));
  std::vector<parallel::sample> out;
  for (int64_t i = 0; i < samples; ++i) {
    parallel::sample s;
    const int64_t len = 6 + at::randint(0, 10, {1}, gen).item<int64_t>();
    // counting runs (a random start, then +1): learnable within a few steps
    auto text = [&](int64_t n) {
      int64_t t = at::randint(1, 480, {1}, gen).item<int64_t>();
      for (int64_t j = 0; j < n; ++j) s.tokens.push_back(t), t = t % 479 + 1;
    };
    text(2);
    if (k != kind::text && i % 4 == 0) {  // only samples 0, 4, ...: one data rank of 2 or 4 gets images
      for (int j = 0; j < 4; ++j) s.tokens.push_back(image_token);
      s.images.push_back(at::rand({3, 16, 16}, gen));
    }
    if (k == kind::omni && i % 3 == 1) {
      for (int j = 0; j < 4; ++j) s.tokens.push_back(audio_token);
      s.audio.push_back(at::randn({8, 16}, gen));
    }
    text(len);
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    for (int64_t j = 0; j < n; ++j) {
      const int64_t next = j + 1 < n ? s.tokens[static_cast<size_t>(j + 1)] : -100;
      s.targets.push_back(next == image_token || next == audio_token ? -100 : next);
    }
    if (k == kind::omni && i % 4 == 2) {  // image generation: predict codes at the last 4 positions
      s.code_targets.assign(static_cast<size_t>(n), -100);
      for (int64_t j = n - 4; j < n; ++j) s.code_targets[static_cast<size_t>(j)] = (j * 37 + step) % 256;
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace veomni::testing
