// veomni-plan: what a launch will do, before it is queued. For a model, a
// recipe and mesh sizes it prints the plan, the bytes per axis, the memory per
// GPU, the FLOPs per token and the predicted step time and tokens/s/GPU.
//
//   veomni-plan --model qwen2-72b --gpus 128 --sp 8 --seq 131072
//   veomni-plan --paper            # the VeOmni paper's Appendix A, predicted vs published
//
// Torch-free: it links veomni::core only.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <veomni/core.hpp>
#include <veomni/models/paper.hpp>

using namespace veomni;
namespace paper = veomni::models::paper;

namespace {

constexpr const char* usage_text =
    "usage: veomni-plan [--model NAME] [--recipe R] [--gpus N] [--sp N] [--ep N] [--dp-replicate N]\n"
    "                   [--seq N] [--global-batch N] [--micro-batch N] [--checkpointing on|off]\n"
    "                   [--precision bf16|fp32] [--hardware h100|h200] [--vision-tokens N] [--image-patches N]\n"
    "                   [--loss chunked|logits] [--budget-gib X] [--longest-gib X] [--no-plan]\n"
    "       veomni-plan --paper [--hardware h100|h200]\n"
    "models: qwen2-7b qwen2.5-32b qwen2-72b qwen3-30b-a3b qwen2-vl-7b dense-peer (benchmarks' CPU model)\n"
    "--loss: what the loss keeps, veomni's chunked loss (default) or whole logits (the reference system's)\n"
    "--longest-gib X: also report the longest sequence per sample that fits X GiB per GPU\n"
    "recipe: fsdp or hsdp, then +sp (Ulysses) and +ep (experts), e.g. fsdp+sp+ep; default from the sizes\n";

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "veomni-plan: %s\n%s", why.c_str(), usage_text);
  std::exit(2);
}

long parse_long(std::string_view flag, const char* v) {
  if (!v) usage("missing value after " + std::string(flag));
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*v == '\0' || *end != '\0' || n < 1) usage(std::string(flag) + " needs a positive integer, got '" + v + "'");
  return n;
}

double parse_double(std::string_view flag, const char* v) {
  if (!v) usage("missing value after " + std::string(flag));
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  if (*v == '\0' || *end != '\0' || !(x > 0)) usage(std::string(flag) + " needs a positive number, got '" + v + "'");
  return x;
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}
std::string gb(double bytes) { return fmt("%.2f", bytes / 1e9) + " GB"; }
std::string with_commas(double x) {
  std::string s = fmt("%.0f", x), out;
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n; ++i) {
    out += s[i];
    if (s[i] != '-' && (n - i - 1) % 3 == 0 && i + 1 < n) out += ',';
  }
  return out;
}

enum class model_id { qwen2_7b, qwen2_5_32b, qwen2_72b, qwen3_30b_a3b, qwen2_vl_7b, dense_peer };

// The dense_peer model of benchmarks/ (configs/dense_peer.yaml): what
// bench_long trains on this machine's CPUs at 8k-64k tokens.
constexpr paper::qwen2::dims dense_peer_dims() {
  paper::qwen2::dims d;
  d.at<"lm">() = {.vocab = 1024, .hidden = 256, .layers = 4, .heads = 4, .kv_heads = 4, .head_dim = 64, .ffn = 1024};
  return d;
}

struct model_entry {
  std::string_view flag, name;
  model_id id;
};
constexpr model_entry model_table[] = {
    {"qwen2-7b", "Qwen2-7B", model_id::qwen2_7b},
    {"qwen2.5-32b", "Qwen2.5-32B", model_id::qwen2_5_32b},
    {"qwen2-72b", "Qwen2-72B", model_id::qwen2_72b},
    {"qwen3-30b-a3b", "Qwen3-30B-A3B", model_id::qwen3_30b_a3b},
    {"qwen2-vl-7b", "Qwen2-VL-7B", model_id::qwen2_vl_7b},
    {"dense-peer", "dense_peer", model_id::dense_peer},
};

struct recipe_choice {
  bool hsdp = false, sp = false, ep = false;
  std::string name() const {
    return std::string(hsdp ? "HSDP" : "FSDP") + (sp ? "+SP" : "") + (ep ? "+EP" : "");
  }
  // "FSDP+SP4+EP8": the paper's notation, with sizes
  std::string label(const mesh_shape& m) const {
    return std::string(hsdp ? "HSDP" : "FSDP") + (sp ? "+SP" + std::to_string(m.sp) : "") +
           (ep ? "+EP" + std::to_string(m.ep) : "");
  }
};

struct options {
  model_entry model = model_table[0];
  bool recipe_given = false;
  recipe_choice recipe;
  long gpus = 128;
  mesh_shape mesh;
  training_step step;
  hardware hw = hardware_profiles::h100;
  long vision_tokens = 0, image_patches = 1024;
  double budget_gib = 0, longest_gib = 0;
  bool print_plan = true;
};

// ---- recipes as types ----------------------------------------------------------

template <class S, bool Sp, bool Ep>
struct lm_apply;
template <class S>
struct lm_apply<S, false, false> { using type = apply<"lm", S>; };
template <class S>
struct lm_apply<S, true, false> { using type = apply<"lm", S, Split<Ulysses>>; };
template <class S>
struct lm_apply<S, false, true> { using type = apply<"lm", S, Experts<EP>>; };
template <class S>
struct lm_apply<S, true, true> { using type = apply<"lm", S, Split<Ulysses>, Experts<EP>>; };

template <class G, class S, bool Sp, bool Ep>
struct recipe_for {
  using type = recipe<typename lm_apply<S, Sp, Ep>::type>;
};
template <class S, bool Sp, bool Ep>
struct recipe_for<paper::qwen2_vl, S, Sp, Ep> {
  using type = recipe<apply<"vision", S>, typename lm_apply<S, Sp, Ep>::type>;
};

template <class G>
constexpr bool lm_has_experts = has_layer_kind<typename G::template component_at<G::index_of("lm")>>(layer_kind::moe);

// Calls f.template operator()<G, R>(dims) for the model and recipe chosen at
// run time. EP recipes exist only for models with MoE layers (elsewhere they
// would not compile: "the policy touches no layer of its node").
template <class G, class F>
void with_recipe(const typename G::dims& d, const recipe_choice& r, F&& f) {
  auto pick = [&]<class S>() {
    if constexpr (lm_has_experts<G>) {
      if (r.ep) {
        if (r.sp) f.template operator()<G, typename recipe_for<G, S, true, true>::type>(d);
        else f.template operator()<G, typename recipe_for<G, S, false, true>::type>(d);
        return;
      }
    }
    if (r.sp) f.template operator()<G, typename recipe_for<G, S, true, false>::type>(d);
    else f.template operator()<G, typename recipe_for<G, S, false, false>::type>(d);
  };
  if (r.hsdp) pick.template operator()<Shard<HSDP>>();
  else pick.template operator()<Shard<FSDP>>();
}

template <class F>
void with_model(model_id id, const recipe_choice& r, F&& f) {
  switch (id) {
    case model_id::qwen2_7b: return with_recipe<paper::qwen2>(paper::qwen2_7b(), r, f);
    case model_id::qwen2_5_32b: return with_recipe<paper::qwen2>(paper::qwen2_5_32b(), r, f);
    case model_id::qwen2_72b: return with_recipe<paper::qwen2>(paper::qwen2_72b(), r, f);
    case model_id::qwen3_30b_a3b: return with_recipe<paper::qwen3_moe>(paper::qwen3_30b_a3b(), r, f);
    case model_id::qwen2_vl_7b: return with_recipe<paper::qwen2_vl>(paper::qwen2_vl_7b(), r, f);
    case model_id::dense_peer: return with_recipe<paper::qwen2>(dense_peer_dims(), r, f);
  }
}

bool is_moe(model_id id) { return id == model_id::qwen3_30b_a3b; }

// ---- one launch ---------------------------------------------------------------

template <class G, class R>
void print_launch(const options& o, const typename G::dims& d) {
  using P = plan<G, R>;
  const mesh_shape& m = o.mesh;
  const training_step& st = o.step;
  const hardware& hw = o.hw;
  const long micro = st.micro_batches(m);

  std::printf("veomni-plan: %s, recipe %s, %ld x %s (%ld nodes of %ld)\n", std::string(o.model.name).c_str(),
              o.recipe.label(m).c_str(), m.world(), std::string(hw.name).c_str(),
              (m.world() + hw.gpus_per_node - 1) / hw.gpus_per_node, hw.gpus_per_node);
  std::printf("step: seq %ld, global batch %ld, micro-batch %ld -> data parallel %ld, %ld micro-batches of %ld tokens "
              "per rank\n",
              st.seq, st.global_batch, st.micro_batch, st.data_parallel(m), micro, st.tokens_per_rank("lm", m));
  for (std::size_t i = 0; i < G::size; ++i)
    if (G::names[i] != "lm")
      std::printf("      %s: %ld tokens per sample, attention over %ld, %ld per rank per micro-batch\n",
                  std::string(G::names[i]).c_str(), st.tokens_per_sample(G::names[i]), st.context(G::names[i]),
                  st.tokens_per_rank(G::names[i], m));
  std::printf("precision: %s; activation checkpointing %s\n",
              st.prec.param_bytes == 2 ? "bf16 params and activations, fp32 gradients, master and moments"
                                       : "fp32 everywhere",
              st.checkpointing ? "on (full)" : "off");

  // the plan, priced per step
  if (o.print_plan) {
    workload w = st.template micro_workload<G>(m);
    w.micro_batches = micro;
    std::printf("\n== plan (payload bytes per rank) ==\n%s", describe<P>(d, m, w, st.prec).c_str());
  }

  // communication by axis: links and time
  const step_prediction pr = predict<P>(d, m, st, hw);
  {
    workload w = st.template micro_workload<G>(m);
    w.micro_batches = micro;
    const step_traffic t = traffic<P>(d, m, w, st.prec);
    std::printf("\n== communication per GPU per step ==\n");
    std::vector<std::vector<std::string>> rows{
        {"axes", "group", "per node", "link", "calls", "wire/step", "time/step (serial)"}};
    for (const auto& a : t.by_axis) {
      const group_shape g = placement_of(a.over, m, hw.gpus_per_node);
      double secs = 0;
      for (const auto& s : pr.by_axis)
        if (s.over == a.over) secs = s.seconds;
      const std::string link = g.size <= 1 ? "-" : g.nodes <= 1 ? "NVLink" : std::to_string(g.per_node) + " NIC/node";
      rows.push_back({to_string(a.over), std::to_string(g.size), std::to_string(g.per_node), link,
                      std::to_string(a.calls), gb(a.wire_bytes), fmt("%.3f s", secs)});
    }
    std::printf("%s", detail::render_table(rows).c_str());
    bool layer_ops = false;
    for (const auto& op : P::ops) layer_ops = layer_ops || (!op.target.is_unit && op.ph == phase::forward && op.repeat == scope::block);
    if (st.checkpointing && layer_ops)
      std::printf("(calls and wire count each plan op once; time also counts the forward layer ops that checkpointing "
                  "runs again in the backward)\n");
  }

  // memory per GPU: the launch as given, then the other precision and checkpointing choices
  {
    std::printf("\n== memory per GPU (GB = 1e9 bytes) ==\n");
    std::vector<std::vector<std::string>> rows{{"precision", "checkpointing", "params", "grads", "optimizer",
                                                "activations", "buffers", "total", std::string("fits ") +
                                                std::string(hw.name)}};
    for (const precision& p : {precisions::bf16, precisions::fp32})
      for (bool ckpt : {true, false}) {
        training_step s = st;
        s.prec = p;
        s.checkpointing = ckpt;
        const gpu_memory g = footprint<P>(d, m, s);
        const bool chosen = p.param_bytes == st.prec.param_bytes && ckpt == st.checkpointing;
        rows.push_back({std::string(p.param_bytes == 2 ? "bf16+fp32 master" : "fp32") + (chosen ? " *" : ""),
                        ckpt ? "full" : "off", gb(static_cast<double>(g.states.params)),
                        gb(static_cast<double>(g.states.grads)), gb(static_cast<double>(g.states.optimizer)),
                        gb(static_cast<double>(g.activations.total())), gb(static_cast<double>(g.buffers)),
                        gb(static_cast<double>(g.total())), g.total() <= hw.hbm_bytes ? "yes" : "NO"});
      }
    std::printf("%s", detail::render_table(rows).c_str());
    const gpu_memory g = footprint<P>(d, m, st);
    std::printf("activations (*): kept %s, recomputed block %s, gradients in flight %s, head and loss %s (%s)\n",
                gb(static_cast<double>(g.activations.kept)).c_str(),
                gb(static_cast<double>(g.activations.working)).c_str(),
                gb(static_cast<double>(g.activations.backward)).c_str(),
                gb(static_cast<double>(g.activations.root)).c_str(),
                st.loss == loss_memory::chunked ? "chunked loss: the head input's gradient and one chunk of logits"
                                                : "whole logits in bf16 and fp32");
    if (o.longest_gib > 0) {
      // the vision stream, where there is one, follows the text as main() sets it
      const bool vision = st.find("vision") != nullptr && o.vision_tokens == 0;
      const long unit = vision ? 2 * m.sp : m.sp;
      const long budget = static_cast<long>(o.longest_gib * static_cast<double>(1L << 30));
      const long n = longest_sequence<P>(d, m, st, budget, unit, [&](training_step& s) {
        if (vision) s.with("vision", s.seq / 2, std::min(o.image_patches, s.seq / 2));
      });
      if (n == 0) {
        std::printf("longest sequence that fits %.2f GiB per GPU: none (even %ld tokens need more)\n", o.longest_gib,
                    unit);
      } else {
        training_step s = st;
        s.seq = n;
        if (vision) s.with("vision", n / 2, std::min(o.image_patches, n / 2));
        const gpu_memory at = footprint<P>(d, m, s);
        std::printf("longest sequence that fits %.2f GiB per GPU: %s tokens per sample (%s tokens per rank; "
                    "activations %s, states and buffers %s)\n",
                    o.longest_gib, with_commas(static_cast<double>(n)).c_str(),
                    with_commas(static_cast<double>(s.tokens_per_rank("lm", m))).c_str(),
                    gib(at.activations.total()).c_str(), gib(at.states.total() + at.buffers).c_str());
      }
    }
  }

  // FLOPs
  {
    std::printf("\n== FLOPs per token (forward) ==\n");
    double gemm = 0, attn = 0;
    for_each_node<G>([&](auto I) {
      using C = typename G::template component_at<I.value>;
      const auto name = G::names[I.value];
      const flop_split f = forward_flops<C>(veomni::get<I.value>(d), st.context(name), causal_attention<C>());
      std::printf("%s: matmuls %.2f GFLOP", std::string(name).c_str(), f.gemm / 1e9);
      if (f.experts > 0) std::printf(" (routed experts %.2f)", f.experts / 1e9);
      std::printf(", attention core %.2f GFLOP (context %ld, %s)\n", f.attention / 1e9, st.context(name),
                  causal_attention<C>() ? "causal" : "full");
      const double share = static_cast<double>(st.tokens_per_sample(name)) / static_cast<double>(st.seq);
      gemm += f.gemm * share;
      attn += f.attention * share;
    });
    std::printf("training (3 x forward) per text token: %.2f GFLOP; paper convention: %.2f GFLOP\n",
                3 * (gemm + attn) / 1e9,
                training_flops_per_sample<G>(d, st, flop_convention::paper) / static_cast<double>(st.seq) / 1e9);
  }

  // predicted step
  {
    const efficiency e{};
    std::printf("\n== predicted step on %s ==\n", std::string(hw.name).c_str());
    std::printf("efficiency: matmuls %.2f, attention %.2f of %.0f TFLOP/s; links %.2f of line rate\n", e.gemm,
                e.attention, hw.bf16_dense_flops / 1e12, e.network);
    if (pr.experts_s > 0)
      std::printf("MoE: grouped GEMMs %.2f of peak (half at %.0f rows per expert), busiest rank x %.2f, HBM %.2f of %.2f TB/s\n",
                  e.grouped_gemm, e.grouped_rows_half, e.expert_imbalance, e.memory, hw.hbm_bytes_per_s / 1e12);
    std::printf("compute %.3f s, communication %.3f s (exposed %.3f s), optimizer %.3f s\n", pr.compute_s, pr.comm_s,
                pr.exposed_comm_s, pr.optimizer_s);
    std::printf("compute by term: matmuls %.3f s, attention %.3f s", pr.gemm_s, pr.attention_s);
    if (pr.experts_s > 0) std::printf(", experts' grouped GEMMs %.3f s, MoE memory traffic %.3f s", pr.experts_s, pr.moe_memory_s);
    std::printf("\n");
    std::printf("step %.3f s: forward %.3f s, backward %.3f s\n", pr.step_s, pr.forward_s, pr.backward_s);
    std::printf("throughput %s tokens/s/GPU, MFU %.1f%% (paper convention %.1f%%)\n",
                with_commas(pr.tokens_per_s_per_gpu).c_str(), 100 * pr.mfu, 100 * pr.mfu_paper);
  }

  if (o.budget_gib > 0) {
    try {
      check_memory_budget<P>(d, m, st, static_cast<long>(o.budget_gib * static_cast<double>(1L << 30)));
      std::printf("\nfits the budget of %.2f GiB\n", o.budget_gib);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "%s\n", ex.what());
      std::exit(1);
    }
  }
}

// ---- the paper's Appendix A ------------------------------------------------------

struct paper_row {
  model_id model;
  long sp, ep, seq;
  double tokens_per_s;  // published, per GPU
  double mfu = 0;       // published, where given
  double memory_gb = 0; // published, where given
};

// VeOmni (arXiv 2508.02317), Appendix A: 128 GPUs, global batch 128,
// micro-batch 1, full activation checkpointing.
constexpr paper_row paper_rows[] = {
    {model_id::qwen2_7b, 1, 1, 8192, 6940, 0.388},
    {model_id::qwen2_7b, 1, 1, 32768, 5315},
    {model_id::qwen2_7b, 4, 1, 65536, 3452},
    {model_id::qwen2_7b, 4, 1, 131072, 2187},
    {model_id::qwen2_5_32b, 4, 1, 16384, 1316},
    {model_id::qwen2_5_32b, 8, 1, 131072, 613},
    {model_id::qwen2_72b, 4, 1, 16384, 624},
    {model_id::qwen2_72b, 8, 1, 65536, 441},
    {model_id::qwen2_72b, 8, 1, 131072, 303, 0, 76.7},
    {model_id::qwen3_30b_a3b, 1, 8, 16384, 2853},
    {model_id::qwen3_30b_a3b, 4, 8, 131072, 1075},
};

std::string_view model_name(model_id id) {
  for (const auto& e : model_table)
    if (e.id == id) return e.name;
  return "?";
}

void print_paper(const hardware& hw) {
  std::printf("VeOmni paper, Appendix A (128 GPUs, global batch 128, micro-batch 1, full activation checkpointing)\n");
  constexpr efficiency e{};
  std::printf("predicted on %s; efficiency: matmuls %.2f, attention %.2f, links %.2f; MoE: grouped GEMMs %.2f, busiest rank x %.2f, HBM %.2f (one model for every row)\n\n",
              std::string(hw.name).c_str(), e.gemm, e.attention, e.network, e.grouped_gemm, e.expert_imbalance, e.memory);
  std::vector<std::vector<std::string>> rows{{"model", "recipe", "seq", "paper tok/s", "predicted", "pred/paper",
                                              "MFU (paper conv.)", "memory/GPU", "exposed comm", "step"}};
  for (const auto& r : paper_rows) {
    recipe_choice rc{false, r.sp > 1, r.ep > 1};
    mesh_shape m{.dp_shard = 128 / r.sp, .sp = r.sp, .ep = r.ep};
    // the paper's system: a loss over the whole logits tensor
    training_step st{
        .seq = r.seq, .global_batch = 128, .micro_batch = 1, .checkpointing = true, .loss = loss_memory::logits};
    with_model(r.model, rc, [&]<class G, class R>(const typename G::dims& d) {
      using P = plan<G, R>;
      const step_prediction pr = predict<P>(d, m, st, hw);
      const gpu_memory g = footprint<P>(d, m, st);
      std::string mfu = fmt("%.1f%%", 100 * pr.mfu_paper);
      if (r.mfu > 0) mfu += fmt(" (paper %.1f%%)", 100 * r.mfu);
      std::string mem = gb(static_cast<double>(g.total()));
      if (r.memory_gb > 0) mem += fmt(" (paper %.1f GB)", r.memory_gb);
      rows.push_back({std::string(model_name(r.model)), rc.label(m),
                      std::to_string(r.seq / 1024) + "k", with_commas(r.tokens_per_s),
                      with_commas(pr.tokens_per_s_per_gpu), fmt("%.2f", pr.tokens_per_s_per_gpu / r.tokens_per_s),
                      mfu, mem, fmt("%.2f s", pr.exposed_comm_s), fmt("%.2f s", pr.step_s)});
    });
  }
  std::printf("%s", detail::render_table(rows).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  bool paper_mode = false;
  std::string precision_name = "bf16";
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    auto word = [&]() -> std::string_view {
      if (!v) usage("missing value after " + std::string(a));
      ++i;
      return v;
    };
    if (a == "--paper") paper_mode = true;
    else if (a == "--model") {
      const std::string_view n = word();
      bool found = false;
      for (const auto& e : model_table)
        if (e.flag == n) o.model = e, found = true;
      if (!found) usage("unknown model '" + std::string(n) + "'");
    } else if (a == "--recipe") {
      const std::string r(word());
      o.recipe_given = true;
      o.recipe = {};
      std::size_t start = 0;
      for (int part = 0;; ++part) {
        const std::size_t plus = r.find('+', start);
        const std::string tok = r.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
        if (part == 0 && (tok == "fsdp" || tok == "hsdp")) o.recipe.hsdp = tok == "hsdp";
        else if (part > 0 && tok == "sp") o.recipe.sp = true;
        else if (part > 0 && tok == "ep") o.recipe.ep = true;
        else usage("unknown recipe '" + r + "'");
        if (plus == std::string::npos) break;
        start = plus + 1;
      }
    } else if (a == "--gpus") o.gpus = parse_long(a, v), ++i;
    else if (a == "--sp") o.mesh.sp = parse_long(a, v), ++i;
    else if (a == "--ep") o.mesh.ep = parse_long(a, v), ++i;
    else if (a == "--dp-replicate") o.mesh.dp_replicate = parse_long(a, v), ++i;
    else if (a == "--seq") o.step.seq = parse_long(a, v), ++i;
    else if (a == "--global-batch") o.step.global_batch = parse_long(a, v), ++i;
    else if (a == "--micro-batch") o.step.micro_batch = parse_long(a, v), ++i;
    else if (a == "--vision-tokens") o.vision_tokens = parse_long(a, v), ++i;
    else if (a == "--image-patches") o.image_patches = parse_long(a, v), ++i;
    else if (a == "--budget-gib") o.budget_gib = parse_double(a, v), ++i;
    else if (a == "--longest-gib") o.longest_gib = parse_double(a, v), ++i;
    else if (a == "--loss") {
      const std::string_view l = word();
      if (l != "chunked" && l != "logits") usage("--loss takes chunked or logits, got '" + std::string(l) + "'");
      o.step.loss = l == "chunked" ? loss_memory::chunked : loss_memory::logits;
    }
    else if (a == "--no-plan") o.print_plan = false;
    else if (a == "--checkpointing") {
      const std::string_view c = word();
      if (c != "on" && c != "off") usage("--checkpointing takes on or off, got '" + std::string(c) + "'");
      o.step.checkpointing = c == "on";
    } else if (a == "--precision") {
      precision_name = word();
      if (precision_name == "bf16") o.step.prec = precisions::bf16;
      else if (precision_name == "fp32") o.step.prec = precisions::fp32;
      else usage("--precision takes bf16 or fp32, got '" + precision_name + "'");
    } else if (a == "--hardware") {
      const std::string_view h = word();
      if (h == "h100") o.hw = hardware_profiles::h100;
      else if (h == "h200") o.hw = hardware_profiles::h200;
      else usage("--hardware takes h100 or h200, got '" + std::string(h) + "'");
    } else if (a == "-h" || a == "--help") {
      std::printf("%s", usage_text);
      return 0;
    } else usage("unknown argument '" + std::string(a) + "'");
  }
  if (paper_mode) {
    print_paper(o.hw);
    return 0;
  }

  // sizes: world = dp_replicate x dp_shard x sp; ep is carved out of dp_shard x sp
  mesh_shape& m = o.mesh;
  if (o.gpus % (m.dp_replicate * m.sp) != 0)
    usage("--gpus (" + std::to_string(o.gpus) + ") must be a multiple of dp_replicate x sp (" +
          std::to_string(m.dp_replicate * m.sp) + ")");
  m.dp_shard = o.gpus / (m.dp_replicate * m.sp);
  if ((m.dp_shard * m.sp) % m.ep != 0)
    usage("--ep must divide dp_shard x sp (" + std::to_string(m.dp_shard * m.sp) +
          "): expert ranks are carved out of the data/sequence ranks");
  if (m.ep > 1 && !is_moe(o.model.id)) usage("--ep needs an MoE model (qwen3-30b-a3b)");
  if (m.ep > 1 && paper::qwen3_30b_a3b().at<"lm">().experts % m.ep != 0)
    usage("--ep must divide the number of experts (128)");
  if (o.step.seq % m.sp != 0) usage("--sp must divide --seq");
  if (o.step.global_batch % (o.step.micro_batch * o.step.data_parallel(m)) != 0)
    usage("--global-batch (" + std::to_string(o.step.global_batch) + ") must be a multiple of micro-batch x data " +
          "parallel (" + std::to_string(o.step.micro_batch * o.step.data_parallel(m)) + ")");
  if (o.recipe_given) {
    if (m.sp > 1 && !o.recipe.sp) usage("--sp " + std::to_string(m.sp) + " needs a recipe with +sp");
    if (m.ep > 1 && !o.recipe.ep) usage("--ep " + std::to_string(m.ep) + " needs a recipe with +ep");
    if (m.dp_replicate > 1 && !o.recipe.hsdp) usage("--dp-replicate needs the hsdp recipe");
    if (o.recipe.ep && !is_moe(o.model.id)) usage("+ep needs an MoE model (qwen3-30b-a3b)");
  } else {
    o.recipe = {m.dp_replicate > 1, m.sp > 1, m.ep > 1};
  }
  if (o.model.id == model_id::qwen2_vl_7b) {
    // patches per sample (4 patches merge into one language-model token) and per image
    const long patches = o.vision_tokens ? o.vision_tokens : o.step.seq / 2;
    if (patches % m.sp != 0) usage("--sp must divide --vision-tokens");
    o.step.with("vision", patches, std::min(o.image_patches, patches));
  }
  with_model(o.model.id, o.recipe, [&]<class G, class R>(const typename G::dims& d) { print_launch<G, R>(o, d); });
  return 0;
}
