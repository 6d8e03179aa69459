// Links, overlap and predicted throughput; the memory budget checks.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include <veomni/core.hpp>
#include <veomni/models/paper.hpp>

using namespace veomni;
namespace paper = veomni::models::paper;

namespace {
constexpr hardware h100 = hardware_profiles::h100;
using fsdp_7b = plan<paper::qwen2, paper::fsdp>;
using fsdp_sp_72b = plan<paper::qwen2, paper::fsdp_sp>;

struct launch_7b {  // Qwen2-7B, FSDP over 128 GPUs, 8k, against 80 GiB
  static constexpr auto dims = paper::qwen2_7b();
  static constexpr mesh_shape mesh{.dp_shard = 128};
  static constexpr training_step step{.seq = 8192};
  static constexpr long budget_bytes = 80L << 30;
};
}  // namespace

TEST_CASE("hardware: where an axis's groups sit (sp innermost, 8 GPUs per node)") {
  const mesh_shape m{.dp_shard = 32, .sp = 4, .ep = 8};  // 128 GPUs
  constexpr auto shard = axes<axis::dp_shard, axis::sp>;
  static_assert(placement_of(axes<axis::sp>, mesh_shape{.dp_shard = 32, .sp = 4}, 8).nodes == 1);
  const group_shape sp = placement_of(axes<axis::sp>, m, 8);
  CHECK((sp.size == 4 && sp.per_node == 4 && sp.nodes == 1));
  const group_shape all = placement_of(shard, m, 8);
  CHECK((all.size == 128 && all.per_node == 8 && all.nodes == 16));
  const group_shape dp = placement_of(axes<axis::dp_shard>, m, 8);  // stride 4: two per node
  CHECK((dp.size == 32 && dp.per_node == 2 && dp.nodes == 16));
  const group_shape ep = placement_of(axes<axis::ep>, m, 8);
  CHECK((ep.size == 8 && ep.per_node == 8 && ep.nodes == 1));
  const group_shape ep_dp = placement_of(axes<axis::ep_dp>, m, 8);  // stride 8: one per node
  CHECK((ep_dp.size == 16 && ep_dp.per_node == 1 && ep_dp.nodes == 16));
  const group_shape rep = placement_of(axes<axis::dp_replicate>, mesh_shape{.dp_replicate = 4, .dp_shard = 8}, 8);
  CHECK((rep.size == 4 && rep.per_node == 1 && rep.nodes == 4));
}

TEST_CASE("hardware: ring collectives use NVLink inside a node, per_node NICs across nodes") {
  const double gb = 1e9, lat = h100.collective_latency_s;
  // inside a node: 450 GB/s
  CHECK(ring_seconds(4.5 * gb, {8, 8, 1}, h100, 1.0) == doctest::Approx(lat + 0.01));
  // 16 nodes, 8 members each: 8 NICs x 50 GB/s = 400 GB/s
  CHECK(ring_seconds(4 * gb, {128, 8, 16}, h100, 1.0) == doctest::Approx(lat + 0.01));
  // one member per node: one NIC
  CHECK(ring_seconds(0.5 * gb, {16, 1, 16}, h100, 1.0) == doctest::Approx(lat + 0.01));
  // efficiency stretches the time; a group of one is free
  CHECK(ring_seconds(4 * gb, {128, 8, 16}, h100, 0.5) == doctest::Approx(lat + 0.02));
  CHECK(ring_seconds(4 * gb, {1, 1, 1}, h100, 1.0) == 0);
  // all_to_all of 8 GB over 16 ranks, 8 per node: 7/16 over NVLink, 8/16 through the rank's NIC
  CHECK(all_to_all_seconds(8 * gb, {16, 8, 2}, h100, 1.0) == doctest::Approx(lat + 4 * gb / 50e9));
}

TEST_CASE("step: data parallelism, micro-batches and tokens per rank") {
  const training_step s{.seq = 65536, .global_batch = 128, .micro_batch = 1};
  const mesh_shape m{.dp_shard = 32, .sp = 4};
  CHECK(s.data_parallel(m) == 32);
  CHECK(s.micro_batches(m) == 4);
  CHECK(s.tokens_per_rank("lm", m) == 16384);
  const workload w = s.micro_workload<paper::qwen2>(m);
  CHECK(w.tokens_for("lm") == 16384);
  CHECK(w.micro_batches == 1);
}

TEST_CASE("predict: a compute-bound launch costs its compute, communication hides behind it") {
  const mesh_shape m{.dp_shard = 128};
  const training_step st{.seq = 8192};
  const step_prediction p = predict<fsdp_7b>(paper::qwen2_7b(), m, st, h100);
  CHECK(p.micro_batches == 1);
  CHECK(p.comm_s > 0);
  CHECK(p.exposed_comm_s < 0.05 * p.step_s);
  CHECK(p.step_s == doctest::Approx(p.compute_s + p.exposed_comm_s + p.optimizer_s - 0.0).epsilon(1e-9));
  // compute by hand: forward 1x, backward 2x (attention 2.5x), recompute 1x (blocks)
  const auto d = paper::qwen2_7b().at<"lm">();  // a copy: the dims are a temporary
  const efficiency e{};
  const double T = 8192, peak = h100.bf16_dense_flops;
  const flop_split blk = forward_flops<text_decoder>(d, scope::block, 8192, true);
  const flop_split root = forward_flops<text_decoder>(d, scope::model, 8192, true);
  const double blk_fwd = T * (blk.gemm / (peak * e.gemm) + blk.attention / (peak * e.attention));
  const double blk_bwd = T * (2 * blk.gemm / (peak * e.gemm) + 2.5 * blk.attention / (peak * e.attention));
  const double root_s = 3 * T * root.gemm / (peak * e.gemm);
  CHECK(p.compute_s == doctest::Approx(28 * (2 * blk_fwd + blk_bwd) + root_s));
  CHECK(p.tokens_per_s_per_gpu == doctest::Approx(8192 / p.step_s));
  // the same launch on fp32 gathers twice the bytes: still hidden
  training_step f32 = st;
  f32.prec = precisions::fp32;
  CHECK(predict<fsdp_7b>(paper::qwen2_7b(), m, f32, h100).exposed_comm_s < 0.05 * p.step_s);
}

TEST_CASE("predict: with few tokens per block the gathers are exposed, and overlap still helps") {
  // 72B, one micro-batch of 512 tokens over 128 ranks: a block computes in ~2 ms, its gather takes ~5 ms
  const mesh_shape m{.dp_shard = 128};
  const training_step st{.seq = 512, .global_batch = 128};
  const step_prediction p = predict<fsdp_sp_72b>(paper::qwen2_72b(), m, st, h100);
  CHECK(p.exposed_comm_s > p.compute_s);
  CHECK(p.step_s < p.compute_s + p.comm_s + p.optimizer_s);  // overlap: less than serial
  CHECK(p.step_s > p.comm_s * 0.9);                          // but at least the communication
}

TEST_CASE("predict: more Ulysses ranks on the same sequence add all-to-all time on NVLink") {
  const training_step st{.seq = 65536};
  const auto d = paper::qwen2_7b();
  using P = plan<paper::qwen2, paper::fsdp_sp>;
  const step_prediction sp2 = predict<P>(d, mesh_shape{.dp_shard = 64, .sp = 2}, st, h100);
  const step_prediction sp8 = predict<P>(d, mesh_shape{.dp_shard = 16, .sp = 8}, st, h100);
  CHECK(sp2.compute_s == doctest::Approx(sp8.compute_s).epsilon(1e-9));  // same FLOPs per GPU
  const auto sp_time = [](const step_prediction& p) {
    for (const auto& a : p.by_axis)
      if (a.over == axes<axis::sp>) return a.seconds;
    return 0.0;
  };
  CHECK(sp_time(sp8) > sp_time(sp2));
}

TEST_CASE("predict: the dense rows of the paper's Appendix A within 25%") {
  struct row { const paper::qwen2::dims d; long sp, seq; double paper; };
  const row rows[] = {
      {paper::qwen2_7b(), 1, 8192, 6940},       {paper::qwen2_7b(), 1, 32768, 5315},
      {paper::qwen2_7b(), 4, 65536, 3452},      {paper::qwen2_7b(), 4, 131072, 2187},
      {paper::qwen2_5_32b(), 4, 16384, 1316},   {paper::qwen2_5_32b(), 8, 131072, 613},
      {paper::qwen2_72b(), 4, 16384, 624},      {paper::qwen2_72b(), 8, 65536, 441},
      {paper::qwen2_72b(), 8, 131072, 303},
  };
  for (const auto& r : rows) {
    const training_step st{.seq = r.seq};
    const step_prediction p = predict<fsdp_sp_72b>(r.d, mesh_shape{.dp_shard = 128 / r.sp, .sp = r.sp}, st, h100);
    CAPTURE(r.seq);
    CAPTURE(r.sp);
    CHECK(p.tokens_per_s_per_gpu / r.paper == doctest::Approx(1.0).epsilon(0.25));
  }
}

TEST_CASE("predict: the MoE rows of the paper's Appendix A within 25%, and their terms by hand") {
  using P = plan<paper::qwen3_moe, paper::fsdp_sp_ep>;
  const auto d = paper::qwen3_30b_a3b();
  const efficiency e{};
  struct row { long sp, seq; double paper; };
  for (const row r : {row{1, 16384, 2853}, row{4, 131072, 1075}}) {
    CAPTURE(r.seq);
    const mesh_shape m{.dp_shard = 128 / r.sp, .sp = r.sp, .ep = 8};
    const training_step st{.seq = r.seq};
    const step_prediction p = predict<P>(d, m, st, h100);
    CHECK(p.tokens_per_s_per_gpu / r.paper == doctest::Approx(1.0).epsilon(0.25));
    // the four compute terms add up to the compute
    CHECK(p.gemm_s + p.attention_s + p.experts_s + p.moe_memory_s == doctest::Approx(p.compute_s).epsilon(1e-9));
    // the experts' grouped GEMMs by hand: 48 layers x (forward + recompute + 2 x backward) of the
    // routed matmuls, at the busiest rank's rows; each expert takes T x 8 x ep / 128 rows
    const double T = static_cast<double>(st.tokens_per_rank("lm", m)), mb = static_cast<double>(st.micro_batches(m));
    const double rows = T * 8 * 8 / 128;  // 16k: 8,192 rows per expert
    const double routed = 2.0 * 8 * 3 * 2048 * 768;
    const double eff = e.grouped_gemm * rows / (rows + e.grouped_rows_half);
    CHECK(p.experts_s ==
          doctest::Approx(mb * 48 * 4 * T * e.expert_imbalance * routed / (h100.bf16_dense_flops * eff)).epsilon(1e-9));
    // HBM traffic by hand: router 2 h b + 16 E, permute + combine 3 k h b, SwiGLU 3 k f b, EP's regrouping 4 k h b (b = 2)
    const double bytes = 2.0 * 2048 * 2 + 16.0 * 128 + 3.0 * 8 * 2048 * 2 + 3.0 * 8 * 768 * 2 + 4.0 * 8 * 2048 * 2;
    CHECK(p.moe_memory_s == doctest::Approx(mb * 48 * 4 * T * bytes / (h100.hbm_bytes_per_s * e.memory)).epsilon(1e-9));
  }
}

TEST_CASE("predict: a grouped GEMM with few rows per expert runs slower, and recompute repeats the all-to-alls") {
  using P = plan<paper::qwen3_moe, paper::fsdp_ep>;
  const auto d = paper::qwen3_30b_a3b();
  const mesh_shape m{.dp_shard = 128, .ep = 8};
  const step_prediction longer = predict<P>(d, m, training_step{.seq = 16384}, h100);
  const step_prediction shorter = predict<P>(d, m, training_step{.seq = 2048}, h100);
  // per token, 2k (1,024 rows per expert, half the saturated rate) costs more than 16k (8,192 rows)
  CHECK(shorter.experts_s / 2048 > 1.5 * longer.experts_s / 16384);
  // checkpointing runs each block's dispatch and combine again in its backward: 6 all-to-alls a block, not 4
  const auto ep_time = [](const step_prediction& p) {
    for (const auto& a : p.by_axis)
      if (a.over == axes<axis::ep>) return a.seconds;
    return 0.0;
  };
  const step_prediction kept = predict<P>(d, m, training_step{.seq = 16384, .checkpointing = false}, h100);
  CHECK(ep_time(longer) == doctest::Approx(1.5 * ep_time(kept)).epsilon(1e-9));
}

TEST_CASE("budget: fits at compile time, and a runtime overflow throws with the numbers") {
  static_assert(fits_memory_budget<fsdp_7b, launch_7b>);
  static_assert(memory_budget<fsdp_7b, launch_7b>::predicted.total() < (80L << 30));

  const mesh_shape m{.dp_shard = 128};
  const training_step st{.seq = 8192};
  const gpu_memory g = check_memory_budget<fsdp_7b>(paper::qwen2_7b(), m, st, 80L << 30);
  CHECK(g.total() == footprint<fsdp_7b>(paper::qwen2_7b(), m, st).total());
  try {
    check_memory_budget<fsdp_7b>(paper::qwen2_7b(), m, st, 10L << 30);
    FAIL("expected std::length_error");
  } catch (const std::length_error& e) {
    const std::string what = e.what();
    CHECK(what.find("veomni::check_memory_budget") == 0);
    CHECK(what.find("exceeds the budget of 10.00 GiB") != std::string::npos);
    CHECK(what.find(gib(g.total())) != std::string::npos);
    CHECK(what.find("activations") != std::string::npos);
  }
}

TEST_CASE("budget: the longest sequence that fits a memory per GPU, against the affine footprint by hand") {
  const mesh_shape m{.dp_shard = 128};
  const training_step st{.seq = 8192};
  const long budget = 80L << 30;
  const long longest = longest_sequence<fsdp_7b>(paper::qwen2_7b(), m, st, budget);
  auto at = [&](long seq) {
    training_step s = st;
    s.seq = seq;
    return footprint<fsdp_7b>(paper::qwen2_7b(), m, s).total();
  };
  CHECK(at(longest) <= budget);
  CHECK(at(longest + 1) > budget);
  // past one loss chunk the footprint is fixed + per_token * seq: solve it
  const long per_token = (at(16384) - at(8192)) / 8192;
  CHECK(at(16384) - at(8192) == per_token * 8192);
  CHECK(longest == 8192 + (budget - at(8192)) / per_token);
  MESSAGE("Qwen2-7B, FSDP-128, bf16, checkpointing, 80 GiB: ", longest, " tokens, ", per_token, " bytes per token");
  // at compile time too; Ulysses-4 gives a multiple of 4, and a budget below
  // the states alone gives 0
  static_assert(longest_sequence<fsdp_7b>(paper::qwen2_7b(), mesh_shape{.dp_shard = 128}, training_step{}, 80L << 30) >
                100'000);
  using sp_7b = plan<paper::qwen2, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>>;
  const long sp4 = longest_sequence<sp_7b>(paper::qwen2_7b(), mesh_shape{.dp_shard = 32, .sp = 4}, st, budget);
  CHECK(sp4 % 4 == 0);
  CHECK(sp4 > 3 * longest);
  CHECK(longest_sequence<fsdp_7b>(paper::qwen2_7b(), m, st, 1L << 20) == 0);
}

TEST_CASE("budget: FSDP buffers hold the gathered root, two blocks and one unsharded gradient") {
  const mesh_shape m{.dp_shard = 128};
  const training_step st{.seq = 8192};
  const auto d = paper::qwen2_7b().at<"lm">();  // a copy: the dims are a temporary
  const long root = unit_params<text_decoder>(d, scope::model, true);
  const long block = unit_params<text_decoder>(d, scope::block, true);
  CHECK(fsdp_buffers<fsdp_7b>(paper::qwen2_7b(), m, st) == (root + 2 * block) * 2 + root * 4);
  CHECK(fsdp_buffers<fsdp_7b>(paper::qwen2_7b(), mesh_shape{}, st) == 0);  // one rank: nothing gathered
}
