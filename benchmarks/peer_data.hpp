#pragma once
// The dense_peer workload (benchmarks/configs/dense_peer.yaml) shared by the
// veomni benchmarks: model dims and the synthetic global batch. The token
// formula is repeated in benchmarks/peer_torch.py so that both sides train on
// the same tokens.
//
//   token(step, i, j) = (i * 7919 + j * 104729 + step * 31 + (j * j) % 97) % vocab
//   sample i: inputs token(step, i, 0..seq-1), targets token(step, i, 1..seq)
#include <cstdint>
#include <vector>

#include <veomni/models/zoo.hpp>
#include <veomni/parallel/data.hpp>

namespace veomni::bench {

struct peer_config {
  int64_t vocab = 1024, hidden = 256, layers = 4, heads = 4, ffn = 1024;
  int64_t seq = 256, global_batch = 8;
};

inline models::dense_lm::dims peer_dims(const peer_config& c = {}) {
  models::dense_lm::dims d;
  d.at<"lm">() = {.vocab = c.vocab, .hidden = c.hidden, .layers = c.layers, .heads = c.heads, .kv_heads = c.heads,
                  .head_dim = c.hidden / c.heads, .ffn = c.ffn};
  return d;
}

inline int64_t peer_token(int64_t step, int64_t i, int64_t j, int64_t vocab) {
  return (i * 7919 + j * 104729 + step * 31 + (j * j) % 97) % vocab;
}

inline std::vector<parallel::sample> peer_batch(int64_t step, const peer_config& c = {}) {
  std::vector<parallel::sample> out(static_cast<size_t>(c.global_batch));
  for (int64_t i = 0; i < c.global_batch; ++i) {
    auto& s = out[static_cast<size_t>(i)];
    for (int64_t j = 0; j < c.seq; ++j) {
      s.tokens.push_back(peer_token(step, i, j, c.vocab));
      s.targets.push_back(peer_token(step, i, j + 1, c.vocab));
    }
  }
  return out;
}

}  // namespace veomni::bench
