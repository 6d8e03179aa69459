// One rank of a parity job: trains MODEL with RECIPE on the mesh given on the
// command line for STEPS fp32 AdamW steps on the synthetic global batches,
// and (rank 0) writes "step loss grad_norm" lines to OUT. Every step it also
// holds the communicators' counters against the plan's cost model, and fails
// on any difference. With --micro=N each step's global batch is cut into N
// micro-batches (contiguous runs of samples), whose gradients accumulate.
//   parity_worker MODEL RECIPE DP_REPLICATE DP_SHARD SP EP STEPS OUT [--checkpoint] [--micro=N]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "../../examples/ring_attention.hpp"
#include "synthetic.hpp"

using namespace veomni;
using models::dense_lm;
using models::omni_moe;
using models::tiny_vl;

namespace {

struct args {
  std::string model, recipe, out;
  mesh_shape mesh;
  int steps = 20;
  bool checkpoint = false;
  int micro = 1;
};

using byte_map = std::map<std::pair<std::string, std::string>, int64_t>;

// The plan's payload bytes, by (collective, axis key), added to `out`: of
// one micro-batch of lm_tokens (forward and backward), or of the optimizer
// (once a step).
template <class P>
void predicted(byte_map& out, const typename P::model::dims& d, const mesh_shape& m, int64_t lm_tokens,
               bool recompute, bool optimizer) {
  workload w;
  w.default_tokens = 0;
  w.with("lm", lm_tokens);
  for (const auto& o : P::ops) {
    if ((o.ph == phase::optimizer) != optimizer) continue;
    op_cost c = cost_of<P>(o, d, m, w);
    // a recomputed block runs its layers' forward collectives again
    if (recompute && o.ph == phase::forward && !o.target.is_unit && o.repeat == scope::block) c.calls *= 2;
    out[{std::string(to_string(o.coll)), comm::axis_key(o.over)}] += c.step_payload();
  }
}

// Global target counts of a batch by loss term, as forward_backward's
// accumulation divides by.
std::map<std::string, double> target_counts(const std::vector<parallel::sample>& batch) {
  double lm = 0, codes = 0;
  for (const auto& s : batch) {
    for (int64_t t : s.targets) lm += t != -100;
    for (int64_t t : s.code_targets) codes += t != -100;
  }
  return {{"lm", lm}, {"image_codes", codes}};
}

template <class G, class R>
int run(const args& a, const typename G::dims& d, testing::kind k) {
  const comm::launch_env env = comm::read_launch_env();
  comm::gloo_mesh mesh(a.mesh, env);
  parallel::options opt;
  opt.seed = 1234;
  opt.checkpoint = a.checkpoint;
  parallel::parallel_model<G, R, comm::gloo_mesh> model(d, mesh, opt);
  const double lr = std::getenv("VEOMNI_PARITY_LR") ? std::atof(std::getenv("VEOMNI_PARITY_LR")) : 1e-3;
  const double eps = std::getenv("VEOMNI_PARITY_EPS") ? std::atof(std::getenv("VEOMNI_PARITY_EPS")) : 1e-6;
  train::adamw optim(model.parameters(), model.decay_masks(), {.lr = lr, .eps = eps, .weight_decay = 0.1});
  std::ofstream out;
  if (env.rank == 0) out.open(a.out);
  using P = plan<G, R>;
  for (int step = 0; step < a.steps; ++step) {
    const std::vector<parallel::sample> global = testing::global_batch(k, step);
    typename decltype(model)::accumulation acc;
    acc.global_counts = target_counts(global);
    acc.aux_scale = 1.0 / a.micro;
    const auto before = mesh.counters().snapshot();
    byte_map want;
    predicted<P>(want, d, a.mesh, 0, a.checkpoint, true);
    model.zero_grad();
    double loss = 0;
    const auto per = static_cast<std::ptrdiff_t>(global.size()) / a.micro;
    for (int m = 0; m < a.micro; ++m) {
      const std::vector<parallel::sample> part(global.begin() + m * per, global.begin() + (m + 1) * per);
      const nn::batch b = parallel::local_batch(part, a.mesh, env.rank, testing::image_token, testing::audio_token,
                                                decltype(model)::layout());
      loss += a.micro == 1 ? model.forward_backward(b).loss : model.forward_backward(b, acc).loss;
      predicted<P>(want, d, a.mesh, b.tokens.size(0), a.checkpoint, false);
    }
    const double norm = model.grad_norm();
    optim.step(lr, train::clip_scale(norm, 1.0));
    // counters of this step against the plan
    std::map<std::pair<std::string, std::string>, int64_t> ran;
    for (const auto& e : mesh.counters().snapshot()) ran[{e.op, e.axis}] += e.count.bytes;
    for (const auto& e : before) ran[{e.op, e.axis}] -= e.count.bytes;
    // EP's all-to-alls move data-dependent rows; what is sent equals what is
    // received over the ep group, so compare their sums over all ranks.
    at::Tensor ep_sums = at::zeros({2}, at::kDouble);
    std::string failures;
    for (const auto& [key, bytes] : want) {
      const int64_t got = ran.count(key) ? ran.at(key) : 0;
      if (key.first == "all_to_all" && key.second == "ep") {
        ep_sums[0] = static_cast<double>(got);
        ep_sums[1] = static_cast<double>(bytes);
      } else if (got != bytes) {
        failures += " " + key.first + "/" + key.second + " ran " + std::to_string(got) + " B, plan " +
                    std::to_string(bytes) + " B;";
      }
    }
    for (const auto& [key, bytes] : ran)
      if (bytes != 0 && key.first != "all_to_all_counts" && !want.count(key))
        failures += " " + key.first + "/" + key.second + " ran " + std::to_string(bytes) + " B, not in the plan;";
    if (a.mesh.world() > 1) {
      at::Tensor s = ep_sums.to(at::kFloat);  // byte counts well inside float's exact range here
      mesh.world().all_reduce(s, comm::reduce_op::sum).wait();
      if (s[0].item<double>() != s[1].item<double>())
        failures += " all_to_all/ep ran " + std::to_string(s[0].item<double>()) + " B over all ranks, plan " +
                    std::to_string(s[1].item<double>()) + " B;";
    }
    if (!failures.empty()) {
      std::fprintf(stderr, "parity_worker: step %d: counters differ from the plan:%s\n", step, failures.c_str());
      return 3;
    }
    if (env.rank == 0) {
      char line[128];
      std::snprintf(line, sizeof line, "%d %.9e %.9e\n", step, loss, norm);
      out << line;
    }
  }
  if (env.rank == 0)
    std::printf("parity_worker: %s %s world %ld: %d steps, local params %lld of %lld\n", a.model.c_str(),
                a.recipe.c_str(), a.mesh.world(), a.steps, static_cast<long long>(model.local_numel()),
                static_cast<long long>(0));
  return 0;
}

template <class G, class... Recipes>
int dispatch(const args& a, const typename G::dims& d, testing::kind k, const char* const* names) {
  int rc = -1, i = 0;
  ((rc = (rc == -1 && a.recipe == names[i]) ? run<G, Recipes>(a, d, k) : rc, ++i), ...);
  if (rc == -1) std::fprintf(stderr, "parity_worker: unknown recipe '%s' for %s\n", a.recipe.c_str(), a.model.c_str());
  return rc == -1 ? 2 : rc;
}

template <fixed_string N>
using fsdp_on = apply<N, Shard<FSDP>>;

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::fprintf(stderr,
                 "usage: parity_worker MODEL RECIPE DP_REPLICATE DP_SHARD SP EP STEPS OUT [--checkpoint] [--micro=N]\n");
    return 2;
  }
  args a;
  a.model = argv[1];
  a.recipe = argv[2];
  a.mesh = {.dp_replicate = std::atol(argv[3]), .dp_shard = std::atol(argv[4]), .sp = std::atol(argv[5]),
            .ep = std::atol(argv[6])};
  a.steps = std::atoi(argv[7]);
  a.out = argv[8];
  for (int i = 9; i < argc; ++i) {
    const std::string o = argv[i];
    if (o == "--checkpoint") {
      a.checkpoint = true;
    } else if (o.rfind("--micro=", 0) == 0 && std::atoi(o.c_str() + 8) > 0) {
      a.micro = std::atoi(o.c_str() + 8);
      if (8 % a.micro != 0) {
        std::fprintf(stderr, "parity_worker: --micro=%d does not divide the 8 samples of a step\n", a.micro);
        return 2;
      }
    } else {
      std::fprintf(stderr, "parity_worker: unknown option '%s'\n", o.c_str());
      return 2;
    }
  }
  try {
    static const char* const dense_names[] = {"ddp",      "fsdp",      "hsdp",     "fsdp_sp",
                                              "fsdp_bf16", "ring_ddp", "ring_fsdp", "fsdp_keep"};
    using bf16_fsdp = fsdp<fsdp_options{.param_dtype = dtype::bf16, .reduce_dtype = dtype::f32}>;
    using keep_fsdp = fsdp<fsdp_options{.reshard_after_forward = false}>;
    static const char* const omni_names[] = {"ddp", "fsdp", "hsdp", "fsdp_sp", "fsdp_ep", "fsdp_sp_ep"};
    if (a.model == "dense_lm")
      return dispatch<dense_lm, recipe<apply<"lm", Shard<DDP>>>, recipe<apply<"lm", Shard<FSDP>>>,
                      recipe<apply<"lm", Shard<HSDP>>>, recipe<apply<"lm", Shard<FSDP>, Split<Ulysses>>>,
                      recipe<apply<"lm", Shard<bf16_fsdp>>>, recipe<apply<"lm", Shard<DDP>, Split<user::Ring>>>,
                      recipe<apply<"lm", Shard<FSDP>, Split<user::Ring>>>, recipe<apply<"lm", Shard<keep_fsdp>>>>(
          a, models::dense_lm_tiny(), testing::kind::text, dense_names);
    if (a.model == "tiny_vl")
      return dispatch<tiny_vl,
                      recipe<apply<"vision", Shard<DDP>>, apply<"proj", Shard<DDP>>, apply<"lm", Shard<DDP>>>,
                      recipe<fsdp_on<"vision">, fsdp_on<"proj">, fsdp_on<"lm">>,
                      recipe<apply<"vision", Shard<HSDP>>, apply<"proj", Shard<HSDP>>, apply<"lm", Shard<HSDP>>>,
                      recipe<fsdp_on<"vision">, fsdp_on<"proj">, apply<"lm", Shard<FSDP>, Split<Ulysses>>>>(
          a, models::tiny_vl_tiny(), testing::kind::vision, dense_names);
    if (a.model == "omni_moe") {
      using enc = std::tuple<>;
      (void)sizeof(enc);
      return dispatch<
          omni_moe,
          recipe<apply<"vision", Shard<DDP>>, apply<"vision_proj", Shard<DDP>>, apply<"audio", Shard<DDP>>,
                 apply<"audio_proj", Shard<DDP>>, apply<"lm", Shard<DDP>>, apply<"image_out", Shard<DDP>>>,
          recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">, fsdp_on<"lm">,
                 fsdp_on<"image_out">>,
          recipe<apply<"vision", Shard<HSDP>>, apply<"vision_proj", Shard<HSDP>>, apply<"audio", Shard<HSDP>>,
                 apply<"audio_proj", Shard<HSDP>>, apply<"lm", Shard<HSDP>>, apply<"image_out", Shard<HSDP>>>,
          recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
                 apply<"lm", Shard<FSDP>, Split<Ulysses>>, fsdp_on<"image_out">>,
          recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
                 apply<"lm", Shard<FSDP>, Experts<EP>>, fsdp_on<"image_out">>,
          recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
                 apply<"lm", Shard<FSDP>, Split<Ulysses>, Experts<EP>>, fsdp_on<"image_out">>>(
          a, models::omni_moe_tiny(), testing::kind::omni, omni_names);
    }
    std::fprintf(stderr, "parity_worker: unknown model '%s'\n", a.model.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_worker: %s\n", e.what());
    return 1;
  }
}
