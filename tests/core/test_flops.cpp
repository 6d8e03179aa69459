// FLOPs, parameter counts and memory of the paper-scale models against
// hand-computed values (Qwen2-7B dense, Qwen3-30B-A3B MoE).
#include <doctest/doctest.h>

#include <veomni/core.hpp>
#include <veomni/models/paper.hpp>
#include <veomni/models/zoo.hpp>

using namespace veomni;
namespace paper = veomni::models::paper;

namespace {
using fsdp_7b = plan<paper::qwen2, paper::fsdp>;
using fsdp_ep_30b = plan<paper::qwen3_moe, paper::fsdp_ep>;
}  // namespace

TEST_CASE("paper models: parameter counts match the published configs") {
  // compile time: the declarations allocate nothing and evaluate as constants
  static_assert(total_params<text_decoder>(paper::qwen2_7b().at<"lm">()) == 7'615'616'512);
  static_assert(total_params<text_decoder>(paper::qwen2_5_32b().at<"lm">()) == 32'763'876'352);
  static_assert(total_params<text_decoder>(paper::qwen2_72b().at<"lm">()) == 72'706'203'648);
  static_assert(total_params<moe_text_decoder>(paper::qwen3_30b_a3b().at<"lm">()) == 30'532'122'624);
  static_assert(std::is_same_v<paper::qwen3_moe, models::moe_lm>);  // the trainer's moe_lm plans as the paper's model
  constexpr auto vl = paper::qwen2_vl_7b();
  static_assert(total_params<vision_encoder>(vl.at<"vision">()) == 675'759'104);
  static_assert(total_params<vision_encoder>(vl.at<"vision">()) + total_params<text_decoder>(vl.at<"lm">()) ==
                8'291'375'616);
  // Qwen2-7B by hand: one block = attention (q, k, v, o + q/k/v biases) + SwiGLU + two RMSNorms
  const long h = 3584, q = 28 * 128, kv = 4 * 128, ffn = 18944, V = 152064;
  const long block = (h * q + 2 * h * kv + q * h) + (q + 2 * kv) + 3 * h * ffn + 2 * h;
  CHECK(block == 233'057'792);
  CHECK(unit_params<text_decoder>(paper::qwen2_7b().at<"lm">(), scope::block, true) == block);
  CHECK(28 * block + 2 * V * h + h == 7'615'616'512);
  // the defaults of the new flags keep the old shapes
  text_decoder::dims plain = paper::qwen2_7b().at<"lm">();
  plain.qkv_bias = false;
  CHECK(total_params<text_decoder>(plain) == 7'615'616'512 - 28 * (q + 2 * kv));
}

TEST_CASE("flops: Qwen2-7B at 8k, matmuls and causal attention by hand") {
  const auto d = paper::qwen2_7b().at<"lm">();
  const double h = 3584, q = 3584, kv = 512, ffn = 18944, V = 152064, L = 28, s = 8192;
  const double block_matmul = 2 * h * q + 2 * h * kv + 3 * h * ffn;  // biases add no matmul FLOPs
  CHECK(block_matmul == 233'046'016);
  const flop_split f = forward_flops<text_decoder>(d, 8192, true);
  CHECK(f.gemm == 2 * (L * block_matmul + h * V));  // 14,140,571,648
  CHECK(f.gemm == 14'140'571'648.0);
  CHECK(f.attention == L * 4 * q * s / 2);            // causal: half of q k^T and p v
  CHECK(f.attention == 1'644'167'168.0);
  CHECK(forward_flops<text_decoder>(d, 8192, false).attention == 2 * f.attention);

  // per sample, 3 x forward; the paper's convention adds the embedding as a matmul and drops the halving
  const training_step st{.seq = 8192};
  CHECK(training_flops_per_sample<paper::qwen2>(paper::qwen2_7b(), st) == doctest::Approx(3 * f.total() * s));
  const double paper_per_token = 3 * (f.gemm + 2 * h * V + 2 * f.attention);
  CHECK(training_flops_per_sample<paper::qwen2>(paper::qwen2_7b(), st, flop_convention::paper) ==
        doctest::Approx(paper_per_token * s));
  // Megatron's 6N + 12 L h s with N the full parameter count, to 0.1%
  CHECK(paper_per_token == doctest::Approx(6 * 7'615'616'512.0 + 12 * L * h * s).epsilon(1e-3));
}

TEST_CASE("flops: Qwen3-30B-A3B at 16k counts the top-8 experts, not all 128") {
  const auto d = paper::qwen3_30b_a3b().at<"lm">();
  const double h = 2048, q = 4096, kv = 512, E = 128, k = 8, effn = 768, V = 151936, L = 48, s = 16384;
  const double block = (2 * h * q + 2 * h * kv) + h * E + k * 3 * h * effn;
  CHECK(block == 56'885'248);
  const flop_split f = forward_flops<moe_text_decoder>(d, 16384, true);
  CHECK(f.gemm == 2 * (L * block + h * V));
  CHECK(f.gemm == 6'083'313'664.0);
  CHECK(f.attention == L * 2 * q * s);
  CHECK(f.attention == 6'442'450'944.0);
}

TEST_CASE("flops: a vision encoder attends both ways over an image's patches") {
  const auto vl = paper::qwen2_vl_7b();
  training_step st{.seq = 4096};
  st.with("vision", 2048, 1024);
  CHECK(st.context("vision") == 1024);
  CHECK(st.context("lm") == 4096);
  static_assert(!causal_attention<vision_encoder>());
  const flop_split f = forward_flops<vision_encoder>(vl.at<"vision">(), 1024, false);
  CHECK(f.attention == 32.0 * 4 * 1280 * 1024);
  // patch embed (1176 -> 1280) + 32 x (qkv, proj, fc1, fc2) + merger per patch ((5120^2 + 5120*3584) / 4)
  const double blocks = 32.0 * 2 * (1280.0 * 3840 + 1280.0 * 1280 + 2 * 1280.0 * 5120);
  CHECK(f.gemm == 2.0 * 1176 * 1280 + blocks + 2.0 * (5120.0 * 5120 + 5120.0 * 3584) / 4);
}

TEST_CASE("memory: Qwen2-7B, FSDP over 128 GPUs, bf16 with fp32 master, by hand") {
  const mesh_shape m{.dp_shard = 128};
  // root (embedding, final norm, head) and a block both divide by 128: no padding
  const long root = 2 * 152064L * 3584 + 3584, block = 233'057'792;
  static_assert((2 * 152064L * 3584 + 3584) % 128 == 0 && 233'057'792 % 128 == 0);
  const long local = root / 128 + 28 * (block / 128);
  CHECK(local == 59'497'004);
  const memory_per_rank s = memory<fsdp_7b>(paper::qwen2_7b(), m, precisions::bf16);
  CHECK(s.params == 2 * local);
  CHECK(s.grads == 4 * local);
  CHECK(s.optimizer == 12 * local);
  CHECK(memory<fsdp_7b>(paper::qwen2_7b(), m, precisions::fp32).total() == 16 * local);
}

TEST_CASE("memory: activations of Qwen2-7B at 8k with and without checkpointing, by hand") {
  const mesh_shape m{.dp_shard = 128};
  const long T = 8192, h = 3584, q = 3584, kv = 512, ffn = 18944, V = 152064, L = 28, heads = 28;
  const long per_token_block = 4 * h + 2 * q + 2 * kv + 3 * ffn;  // norm, attention, norm, SwiGLU
  CHECK(per_token_block == 79'360);
  const long block_bytes = per_token_block * 2 + heads * 4;  // bf16, and one fp32 log-sum-exp per head
  // the reference system's loss: bf16 logits and their fp32 upcast
  const long root = (h + h) * T * 2 + V * 6 * T;  // final norm, head input; bf16 + fp32 logits

  training_step st{.seq = 8192, .checkpointing = true, .loss = loss_memory::logits};
  const activation_memory on = activations<paper::qwen2>(paper::qwen2_7b(), st, m);
  CHECK(on.kept == L * h * T * 2);  // 1,644,167,168: each block's input
  CHECK(on.working == block_bytes * T);
  CHECK(on.root == root);
  // backward's peak adds the largest layer's gradients in flight: SwiGLU's
  // output gradient, d(product), d(gate), d(up), less the product
  CHECK(on.backward == (h + 2 * ffn) * T * 2);
  CHECK(on.total() == on.kept + on.working + on.root + on.backward);
  st.checkpointing = false;
  const activation_memory off = activations<paper::qwen2>(paper::qwen2_7b(), st, m);
  CHECK(off.kept == L * block_bytes * T);  // 36.4 GB
  CHECK(off.working == 0);
  CHECK(off.root == root);

  // veomni's chunked loss: the head input's gradient (h per token) and one
  // chunk of 1024 rows of fp32 logits instead of the whole [T, V] twice
  st.loss = loss_memory::chunked;
  const activation_memory chunked = activations<paper::qwen2>(paper::qwen2_7b(), st, m);
  CHECK(chunked.root == (h + h) * T * 2 + h * T * 2 + 1024 * V * 4);
  CHECK(chunked.root < root / 5);

  // Ulysses over 4: a quarter of the tokens per rank, the same per-token sets
  st.checkpointing = true;
  st.loss = loss_memory::logits;
  st.seq = 4 * 8192;
  const activation_memory sp4 = activations<paper::qwen2>(paper::qwen2_7b(), st, mesh_shape{.dp_shard = 32, .sp = 4});
  CHECK(sp4.total() == on.total());
}

TEST_CASE("memory: Qwen3-30B-A3B, FSDP + EP8, experts by ep then ep_dp, activations per routed copy") {
  const mesh_shape m{.dp_shard = 128, .ep = 8};  // ep_dp = 16
  const auto d = paper::qwen3_30b_a3b();
  const auto& lm = d.at<"lm">();
  const long experts_per_layer = 128L * 3 * 2048 * 768;
  const long dense_block = unit_params<moe_text_decoder>(lm, scope::block, false);
  const long root = unit_params<moe_text_decoder>(lm, scope::model, false);
  CHECK(dense_block == 18'874'368 + 256 + 262'144 + 2 * 2048);  // attention, q/k norms, router, norms
  const long local = ceil_div(root, 128) + 48 * (ceil_div(dense_block, 128) + experts_per_layer / 8 / 16);
  const memory_per_rank s = memory<fsdp_ep_30b>(d, m, precisions::bf16);
  CHECK(s.params == 2 * local);
  CHECK(s.optimizer == 12 * local);

  // a block keeps, per token: norm, attention (in, q, k, v, out), norm, MoE (in, router logits,
  // and per routed copy: input, gate, up, product, output)
  const long per_token = 2048 + (2048 + 2 * 4096 + 2 * 512) + 2048 + (2048 + 128 + 8 * (2 * 2048 + 3 * 768));
  CHECK(per_token == 68'736);
  const training_step st{.seq = 16384, .checkpointing = false};
  const activation_memory a = activations<paper::qwen3_moe>(d, st, m);
  CHECK(a.kept == 48L * (per_token * 2 + 32 * 4) * 16384);  // bf16, and a fp32 log-sum-exp per head (32)
  // the largest backward in flight: the MoE layer's, its 8 routed SwiGLUs (attention: 2048 + 2 * 4096 + 2 * 512)
  CHECK(a.backward == (2048 + 8 * 2 * 768) * 16384L * 2);
}
