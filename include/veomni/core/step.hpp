#pragma once
// One training step as the planner sees it: samples, their lengths, how they
// are split into micro-batches, checkpointing and precision.
//
//   training_step s{.seq = 65536, .global_batch = 128, .micro_batch = 1};
//   mesh_shape m{.dp_shard = 32, .sp = 4};             // 128 GPUs
//   s.data_parallel(m) == 32    s.micro_batches(m) == 4    s.tokens_per_rank("lm", m) == 16384
//
// Every rank of an sp group works on the same samples, a 1/sp slice of
// each; so data parallelism is world / sp, and one optimizer step runs
// global_batch / (micro_batch * dp) micro-batches (gradient accumulation).
#include <array>
#include <stdexcept>
#include <string>
#include <string_view>

#include "axis.hpp"
#include "cost.hpp"

namespace veomni {

namespace precisions {
// bf16 parameters and activations, fp32 gradient reduction, fp32 master
// weights and AdamW moments: 2 + 4 + 4 + 8 = 18 bytes per parameter.
inline constexpr precision bf16{.param_bytes = 2, .grad_bytes = 4, .comm_bytes = 2, .optimizer_state_bytes = 8,
                                .master_bytes = 4};
// fp32 everywhere: 4 + 4 + 8 = 16 bytes per parameter.
inline constexpr precision fp32{.param_bytes = 4, .grad_bytes = 4, .comm_bytes = 4, .optimizer_state_bytes = 8,
                                .master_bytes = 0};
}  // namespace precisions

// Bytes of one activation element under a precision (what comm_bytes moves).
constexpr long activation_bytes_of(const precision& p) { return p.comm_bytes; }

// What the loss keeps for its backward.
//   chunked  veomni's LM loss (nn::lm_loss_sum): logits exist one chunk of
//            rows at a time, in fp32; its forward computes the gradient of the
//            head's input and keeps that (the width of the head's input per
//            token, in the activation dtype)
//   logits   a loss over the whole logits tensor (Hugging Face's, the
//            reference system's): bf16 logits and their fp32 upcast, 6 bytes
//            per vocabulary entry per token
enum class loss_memory { chunked, logits };

namespace detail {
// Called when a training_step has no room for another stream (see workload's).
[[noreturn]] inline void training_step_holds_at_most_32_streams(std::string_view node) {
  throw std::length_error("veomni::training_step::with(\"" + std::string(node) + "\"): a training_step holds at most 32 streams");
}
}  // namespace detail

struct training_step {
  long seq = 8192;            // tokens per sample of the default stream (the language model's text)
  long global_batch = 128;    // samples per optimizer step
  long micro_batch = 1;       // samples per data-parallel rank per micro-batch
  bool checkpointing = true;  // full activation checkpointing: each block keeps its input, recomputes in backward
  precision prec = precisions::bf16;
  loss_memory loss = loss_memory::chunked;  // veomni's runtime
  long loss_chunk = 1024;                   // rows of logits at once (chunked)

  // A node whose tokens per sample differ from `seq` (a vision encoder's
  // patches), and the span its attention sees (an image's patches, not the
  // sample). context 0: the node's whole share of the sample.
  struct stream { std::string_view node; long tokens = 0; long context = 0; };
  static constexpr std::size_t capacity = 32;
  std::array<stream, capacity> streams{};  // filled from the front

  constexpr training_step& with(std::string_view node, long tokens, long context = 0) {
    for (auto& e : streams)
      if (e.node.empty() || e.node == node) { e = {node, tokens, context}; return *this; }
    detail::training_step_holds_at_most_32_streams(node);
  }
  constexpr const stream* find(std::string_view node) const {
    for (const auto& e : streams) {
      if (e.node.empty()) break;
      if (e.node == node) return &e;
    }
    return nullptr;
  }
  constexpr long tokens_per_sample(std::string_view node) const {
    const stream* s = find(node);
    return s ? s->tokens : seq;
  }
  // Tokens an attention core sees per query's sample (before the causal mask).
  constexpr long context(std::string_view node) const {
    const stream* s = find(node);
    return s && s->context > 0 ? s->context : tokens_per_sample(node);
  }
  constexpr long data_parallel(const mesh_shape& m) const { return m.sp > 0 ? m.world() / m.sp : 0; }
  constexpr long micro_batches(const mesh_shape& m) const {
    const long per_micro = micro_batch * data_parallel(m);
    return per_micro > 0 ? (global_batch + per_micro - 1) / per_micro : 0;
  }
  // Tokens one rank holds of a node's stream in one micro-batch.
  constexpr long tokens_per_rank(std::string_view node, const mesh_shape& m) const {
    return m.sp > 0 ? micro_batch * tokens_per_sample(node) / m.sp : 0;
  }
  // The cost model's workload for one micro-batch of plan P's model.
  template <class G>
  constexpr workload micro_workload(const mesh_shape& m) const {
    workload w;
    w.default_tokens = micro_batch * seq / (m.sp > 0 ? m.sp : 1);
    w.micro_batches = 1;
    for (std::size_t i = 0; i < G::size; ++i)  // only the nodes that differ: a long chain of text nodes needs none
      if (const long t = tokens_per_rank(G::names[i], m); t != w.default_tokens) w.with(G::names[i], t);
    return w;
  }
};

}  // namespace veomni
