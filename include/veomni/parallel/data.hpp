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
#include <map>
#include <string>
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
  // inputs of components outside the library, by name: items stacked over
  // the rank's samples into batch.inputs[name] ([1, H, W] depth maps ->
  // [N, 1, H, W]); like images, whole on every sp rank
  std::map<std::string, std::vector<at::Tensor>> inputs;
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
  std::map<std::string, std::vector<at::Tensor>> inputs;
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
    for (const auto& [name, items] : s->inputs) inputs[name].insert(inputs[name].end(), items.begin(), items.end());
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
  for (const auto& [name, items] : inputs)
    if (!items.empty()) b.inputs[name] = at::stack(items);
  b.image_token = image_token;
  b.audio_token = audio_token;
  return b;
}

// How a Split policy lays the sequence over its ranks:
//   contiguous  rank s keeps tokens [s T/P, (s+1) T/P)                    (Ulysses)
//   zigzag      the pack is cut into 2P chunks; rank s keeps chunks s and
//               2P-1-s, so every rank gets as much causal work        (Ring)
enum class sequence_layout { contiguous, zigzag };

// The global indices of the tokens sp rank `index` of `size` keeps.
inline at::Tensor sequence_indices(int64_t tokens, long index, long size, sequence_layout layout) {
  const auto opts = at::TensorOptions().dtype(at::kLong);
  if (layout == sequence_layout::contiguous) {
    const int64_t n = tokens / size;
    return at::arange(index * n, (index + 1) * n, opts);
  }
  const int64_t c = tokens / (2 * size);
  return at::cat({at::arange(index * c, (index + 1) * c, opts),
                  at::arange((2 * size - 1 - index) * c, (2 * size - index) * c, opts)});
}

// Keeps sp rank `index`'s share of the tokens; the layout (cu_seqlens) stays global.
inline nn::batch slice_sequence(const nn::batch& full, long index, long size,
                                sequence_layout layout = sequence_layout::contiguous) {
  if (size == 1) return full;
  const int64_t t = full.tokens.size(0);
  const int64_t multiple = layout == sequence_layout::zigzag ? 2 * size : size;
  TORCH_CHECK(t % multiple == 0, "veomni::parallel::slice_sequence: ", t, " tokens do not split into ", multiple,
              " chunks");
  const at::Tensor idx = sequence_indices(t, index, size, layout);
  nn::batch b = full;
  b.tokens = full.tokens.index_select(0, idx);
  b.targets = full.targets.index_select(0, idx);
  b.position_ids = full.position_ids.index_select(0, idx);
  if (full.code_targets.defined()) b.code_targets = full.code_targets.index_select(0, idx);
  if (full.token_mask.defined()) b.token_mask = full.token_mask.index_select(0, idx);
  b.sequence_slice = true;
  b.global_index = idx;
  // each placeholder's encoder row: its ordinal among the pack's placeholders of that kind
  auto rows = [&](int64_t token) {
    if (token < 0) return at::zeros({0}, at::kLong);
    const at::Tensor is = full.tokens.eq(token);
    const at::Tensor ordinal = is.to(at::kLong).cumsum(0) - 1;
    const at::Tensor mine = is.index_select(0, idx);
    return ordinal.index_select(0, idx).masked_select(mine);
  };
  b.image_rows = rows(full.image_token);
  b.audio_rows = rows(full.audio_token);
  return b;
}

// What rank `rank` of mesh `m` computes on, from the global batch.
inline nn::batch local_batch(const std::vector<sample>& global, const mesh_shape& m, long rank, int64_t image_token,
                             int64_t audio_token, sequence_layout layout = sequence_layout::contiguous) {
  const data_coords c = data_coords_of(m, rank);
  std::vector<const sample*> mine;
  for (size_t i = static_cast<size_t>(c.data_index); i < global.size(); i += static_cast<size_t>(c.data_size))
    mine.push_back(&global[i]);
  const int64_t multiple = layout == sequence_layout::zigzag ? 2 * c.sp_size : c.sp_size;
  return slice_sequence(pack(mine, multiple, image_token, audio_token), c.sp_index, c.sp_size, layout);
}

}  // namespace veomni::parallel
