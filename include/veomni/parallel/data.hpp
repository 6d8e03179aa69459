#pragma once
// From a global batch of samples to what one rank computes on.
//
//   data rank d = r_rep * dp_shard + r_shard of D = dp_replicate * dp_shard
//   takes samples d, d + D, d + 2D, ... packed into one row (padding-free:
//   samples back to back, positions restarting, cu_seqlens marking the
//   boundaries), padded to a multiple of sp with a target-free segment; sp
//   rank s then keeps tokens [s T/sp, (s+1) T/sp) with their true positions.
//   Images and clips stay whole on every sp rank; a rank's placeholders take
//   the encoder rows from the offset of its first placeholder.
//
// The loss is normalised by the global count of targets, so any split of
// the same global batch gives the single-process loss and gradient.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "../comm/mesh_layout.hpp"
#include "../nn/components.hpp"

namespace veomni::parallel {

struct sample {
  std::vector<int64_t> tokens;
  std::vector<int64_t> targets;       // same length; -100 where no loss
  std::vector<int64_t> code_targets;  // empty, or same length: VQ codes to predict
  std::vector<at::Tensor> images;     // [C, H, W] each
  std::vector<at::Tensor> audio;      // [F, M] each
};

struct data_coords {
  long data_index = 0, data_size = 1;  // over dp_replicate x dp_shard
  long sp_index = 0, sp_size = 1;
};

inline data_coords data_coords_of(const mesh_shape& m, long rank) {
  const auto c = comm::coords_of(m, rank);
  return {c.dp_replicate * m.dp_shard + c.dp_shard, m.dp_replicate * m.dp_shard, c.sp, m.sp};
}

// Packs samples into one row whose length is a multiple of `multiple`.
inline nn::batch pack(const std::vector<const sample*>& samples, int64_t multiple, int64_t image_token,
                      int64_t audio_token) {
  std::vector<int64_t> tokens, targets, codes, pos, cu{0};
  std::vector<at::Tensor> images, audio;
  bool any_codes = false;
  for (const sample* s : samples) {
    TORCH_CHECK(s->tokens.size() == s->targets.size(), "veomni::parallel::pack: a sample has ", s->tokens.size(),
                " tokens but ", s->targets.size(), " targets");
    tokens.insert(tokens.end(), s->tokens.begin(), s->tokens.end());
    targets.insert(targets.end(), s->targets.begin(), s->targets.end());
    if (s->code_targets.empty())
      codes.insert(codes.end(), s->tokens.size(), -100);
    else
      codes.insert(codes.end(), s->code_targets.begin(), s->code_targets.end()), any_codes = true;
    for (size_t i = 0; i < s->tokens.size(); ++i) pos.push_back(static_cast<int64_t>(i));
    cu.push_back(static_cast<int64_t>(tokens.size()));
    images.insert(images.end(), s->images.begin(), s->images.end());
    audio.insert(audio.end(), s->audio.begin(), s->audio.end());
  }
  const int64_t real = static_cast<int64_t>(tokens.size());
  const int64_t pad = (multiple - real % multiple) % multiple;
  for (int64_t i = 0; i < pad; ++i) tokens.push_back(0), targets.push_back(-100), codes.push_back(-100), pos.push_back(i);
  if (pad) cu.push_back(static_cast<int64_t>(tokens.size()));
  nn::batch b;
  b.tokens = at::tensor(tokens, at::kLong);
  b.targets = at::tensor(targets, at::kLong);
  b.position_ids = at::tensor(pos, at::kLong);
  b.cu_seqlens = at::tensor(cu, at::kLong);
  if (any_codes) b.code_targets = at::tensor(codes, at::kLong);
  if (pad) b.token_mask = at::cat({at::ones({real}), at::zeros({pad})});
  if (!images.empty()) b.pixels = at::stack(images);
  if (!audio.empty()) b.mel = at::stack(audio);
  b.image_token = image_token;
  b.audio_token = audio_token;
  return b;
}

// Keeps sp rank `index`'s share of the tokens; the layout stays global.
inline nn::batch slice_sequence(const nn::batch& full, long index, long size) {
  if (size == 1) return full;
  const int64_t t = full.tokens.size(0), n = t / size, a = index * n;
  TORCH_CHECK(t % size == 0, "veomni::parallel::slice_sequence: ", t, " tokens do not split over sp = ", size);
  nn::batch b = full;
  b.tokens = full.tokens.narrow(0, a, n).clone();
  b.targets = full.targets.narrow(0, a, n).clone();
  b.position_ids = full.position_ids.narrow(0, a, n).clone();
  if (full.code_targets.defined()) b.code_targets = full.code_targets.narrow(0, a, n).clone();
  if (full.token_mask.defined()) b.token_mask = full.token_mask.narrow(0, a, n).clone();
  b.sequence_slice = true;
  const at::Tensor before = full.tokens.narrow(0, 0, a);
  b.image_row_offset = full.image_token >= 0 ? before.eq(full.image_token).sum().item<int64_t>() : 0;
  b.audio_row_offset = full.audio_token >= 0 ? before.eq(full.audio_token).sum().item<int64_t>() : 0;
  return b;
}

// What rank `rank` of mesh `m` computes on, from the global batch.
inline nn::batch local_batch(const std::vector<sample>& global, const mesh_shape& m, long rank, int64_t image_token,
                             int64_t audio_token) {
  const data_coords c = data_coords_of(m, rank);
  std::vector<const sample*> mine;
  for (size_t i = static_cast<size_t>(c.data_index); i < global.size(); i += static_cast<size_t>(c.data_size))
    mine.push_back(&global[i]);
  return slice_sequence(pack(mine, c.sp_size, image_token, audio_token), c.sp_index, c.sp_size);
}

}  // namespace veomni::parallel
