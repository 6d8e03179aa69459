#pragma once
// The parity worker's machinery (parity_worker.cpp: what it checks); its
// models' recipes are instantiated in two translation units, so that two
// cores share the compile: dense_lm and tiny_vl in parity_worker.cpp,
// omni_moe in parity_worker_omni.cpp.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "../../examples/ring_attention.hpp"
#include "../../examples/zero_policies.hpp"
#include "synthetic.hpp"

using namespace veomni;
using models::dense_lm;
using models::omni_moe;
using models::tiny_vl;

namespace parity {

struct args {
  std::string model, recipe, out;
  mesh_shape mesh;
  int steps = 20;
  bool checkpoint = false;
  int micro = 1;
};

using byte_map = std::map<std::pair<std::string, std::string>, int64_t>;

// The adapters' settings at run time (VEOMNI_PARITY_LORA_TARGETS), for the runtime and the cost model alike.
// The run's precision (parallel::options::prec), --precision=bf16: the ops
// whose recipe leaves the dtype open gather and compute in bf16, reduce in fp32.
inline precision g_precision = precisions::fp32;
inline precision run_precision() { return g_precision; }

inline adapter_settings lora_run() {
  adapter_settings a;
  if (const char* t = std::getenv("VEOMNI_PARITY_LORA_TARGETS")) {
    std::stringstream names(t);
    for (std::string n; std::getline(names, n, ',');)
      a.targets |= layer_kinds({n == "mlp" ? layer_kind::mlp : n == "moe" ? layer_kind::moe : layer_kind::attention});
  }
  return a;
}

// The plan's payload bytes, by (collective, axis key), added to `out`: of
// one micro-batch of lm_tokens (forward and backward), or of the optimizer
// (once a step).
template <class P>
void predicted(byte_map& out, const typename P::model::dims& d, const mesh_shape& m, int64_t lm_tokens,
               bool recompute, bool optimizer) {
  workload w;
  w.default_tokens = 0;
  w.with("lm", lm_tokens);
  w.adapters = lora_run();
  for (const auto& o : P::ops) {
    if ((o.ph == phase::optimizer) != optimizer) continue;
    op_cost c = cost_of<P>(o, d, m, w, run_precision());
    // a recomputed block runs its layers' forward collectives again
    if (recompute && o.ph == phase::forward && !o.target.is_unit && o.repeat == scope::block) c.calls *= 2;
    out[{std::string(to_string(o.coll)), comm::axis_key(o.over)}] += c.step_payload();
  }
}

// Global target counts of a batch by loss term, as forward_backward's
// accumulation divides by.
inline std::map<std::string, double> target_counts(const std::vector<parallel::sample>& batch) {
  double lm = 0, codes = 0;
  for (const auto& s : batch) {
    for (int64_t t : s.targets) lm += t != -100;
    for (int64_t t : s.code_targets) codes += t != -100;
  }
  return {{"lm", lm}, {"image_codes", codes}};
}

// This step's trace rows against the schedule: per micro-batch its
// instances (bytes for that micro-batch's tokens), then the optimizer's.
// Failures are appended to `failures`; EP's row bytes go to ep_got/ep_want
// by position, to be summed over the ranks.
template <class P>
void check_trace(const std::vector<comm::trace_event_ptr>& rows, const step_schedule& sched,
                 const std::vector<int64_t>& micro_tokens, const typename P::model::dims& d, const mesh_shape& m,
                 std::string& failures, std::vector<double>& ep_got, std::vector<double>& ep_want) {
  struct expected {
    scheduled_op s;
    long bytes;
  };
  std::vector<expected> want;
  for (int64_t tokens : micro_tokens) {
    workload w;
    w.default_tokens = 0;
    w.with("lm", tokens);
    w.adapters = lora_run();
    for (const auto& s : sched.micro)
      if (s.issued) want.push_back({s, instance_bytes<P>(s, d, m, w, run_precision())});
  }
  workload none;
  none.adapters = lora_run();
  for (const auto& s : sched.optimizer)
    if (s.issued) want.push_back({s, instance_bytes<P>(s, d, m, none, run_precision())});
  std::size_t r = 0;
  auto fail = [&](std::size_t j, const std::string& why) {
    if (failures.size() < 2000)
      failures += " trace row " + std::to_string(r) + " (schedule entry " + std::to_string(j) + ": " +
                  (j < want.size() ? describe_instance<P>(want[j].s) : std::string("none")) + "): " + why + ";";
  };
  for (std::size_t j = 0; j < want.size(); ++j, ++r) {
    const expected& e = want[j];
    const plan_op& o = P::ops[e.s.op];
    const bool ep = o.tensor == tensor_role::dispatch || o.tensor == tensor_role::combine;
    if (r < rows.size() && rows[r]->op == "all_to_all_counts") {  // an uneven all_to_all's counts: part of its op
      const comm::issue_tag& t = rows[r]->tag;
      if (!ep || !t || t.op->index != static_cast<int64_t>(e.s.op) || t.block != e.s.block)
        fail(j, "counts exchanged outside an EP all_to_all");
      ++r;
    }
    if (r >= rows.size()) {
      fail(j, "not run (the trace ends)");
      return;
    }
    const comm::trace_event& row = *rows[r];
    if (!row.tag) {
      fail(j, "a collective " + std::string(row.op) + " over " + row.axis + " without a plan op");
      continue;
    }
    if (row.tag.op->index != static_cast<int64_t>(e.s.op) || row.tag.block != e.s.block ||
        row.tag.recompute != e.s.recompute)
      fail(j, "ran plan op " + std::to_string(row.tag.op->index) + " (" + std::string(row.tag.op->node) + " " +
                  std::string(row.tag.op->where) + " " + std::string(row.tag.op->tensor) + ") block " +
                  std::to_string(row.tag.block) + (row.tag.recompute ? " recompute" : ""));
    if (row.op != to_string(o.coll)) fail(j, "ran " + std::string(row.op));
    if (row.axis != comm::axis_key(o.over)) fail(j, "over " + row.axis);
    const std::string_view dt = to_string(run_dtype(o, run_precision()));
    if (row.dtype != dt) fail(j, "moved " + std::string(row.dtype) + ", plan " + std::string(dt));
    if (ep) {
      ep_got.push_back(static_cast<double>(row.bytes));
      ep_want.push_back(static_cast<double>(e.bytes));
    } else if (row.bytes != e.bytes) {
      fail(j, "moved " + std::to_string(row.bytes) + " B, plan " + std::to_string(e.bytes) + " B");
    }
  }
  for (; r < rows.size(); ++r)
    failures += " trace row " + std::to_string(r) + ": " + std::string(rows[r]->op) + " over " + rows[r]->axis +
                " after the schedule's end;";
}

template <class G, class R>
int run(const args& a, const typename G::dims& d, testing::kind k) {
  const comm::launch_env env = comm::read_launch_env();
  comm::comm_options copts = comm::comm_options::from_env();
  if (copts.trace.empty()) copts.trace = a.out + ".trace";
  comm::gloo_mesh mesh(a.mesh, env, copts);
  comm::comm_trace& trace = *mesh.counters().trace();
  parallel::options opt;
  opt.seed = 1234;
  opt.checkpoint = a.checkpoint;
  opt.adapters.targets = lora_run().targets;
  opt.prec = run_precision();
  parallel::parallel_model<G, R, comm::gloo_mesh> model(d, mesh, opt);
  const double lr = std::getenv("VEOMNI_PARITY_LR") ? std::atof(std::getenv("VEOMNI_PARITY_LR")) : 1e-3;
  const double eps = std::getenv("VEOMNI_PARITY_EPS") ? std::atof(std::getenv("VEOMNI_PARITY_EPS")) : 1e-6;
  train::adamw optim(model.parameters(), model.decay_masks(), {.lr = lr, .eps = eps, .weight_decay = 0.1});
  std::vector<at::Tensor> frozen_before;
  for (auto& u : model.exec().units())
    for (auto& g : u.groups)
      if (!g.empty() && g.frozen) frozen_before.push_back(g.master.detach().clone());
  if (a.recipe.rfind("lora", 0) == 0 && frozen_before.empty()) {
    std::fprintf(stderr, "parity_worker: recipe %s freezes no parameters\n", a.recipe.c_str());
    return 4;
  }
  std::ofstream out;
  if (env.rank == 0) out.open(a.out);
  using P = plan<G, R>;
  for (int step = 0; step < a.steps; ++step) {
    const std::vector<parallel::sample> global = testing::global_batch(k, step);
    typename decltype(model)::accumulation acc;
    acc.global_counts = target_counts(global);
    acc.aux_scale = 1.0 / a.micro;
    const auto before = mesh.counters().snapshot();
    const std::size_t first_row = trace.size();
    std::vector<int64_t> micro_tokens;
    byte_map want;
    predicted<P>(want, d, a.mesh, 0, a.checkpoint, true);
    model.zero_grad();
    double loss = 0;
    const auto per = static_cast<std::ptrdiff_t>(global.size()) / a.micro;
    for (int m = 0; m < a.micro; ++m) {
      const std::vector<parallel::sample> part(global.begin() + m * per, global.begin() + (m + 1) * per);
      const nn::batch b = parallel::local_batch(part, a.mesh, env.rank, testing::image_token, testing::audio_token,
                                                decltype(model)::layout());
      loss += a.micro == 1 ? model.forward_backward(b).total : model.forward_backward(b, acc).total;
      predicted<P>(want, d, a.mesh, b.tokens.size(0), a.checkpoint, false);
      micro_tokens.push_back(b.tokens.size(0));
    }
    const double norm = model.optimizer_step([&](double n) { optim.step(lr, train::clip_scale(n, 1.0)); });
    // counters of this step against the plan
    std::map<std::pair<std::string, std::string>, int64_t> ran;
    for (const auto& e : mesh.counters().snapshot()) ran[{e.op, e.axis}] += e.count.bytes;
    for (const auto& e : before) ran[{e.op, e.axis}] -= e.count.bytes;
    // the trace of this step against the schedule
    std::string failures;
    std::vector<double> ep_got, ep_want;
    check_trace<P>(trace.rows(first_row), model.schedule(), micro_tokens, d, a.mesh, failures, ep_got, ep_want);
    // memory held against the cost model, once gradients and moments exist
    if (step == 0) {
      const parallel::held_memory held = model.held_bytes();
      long opt_bytes = 0;
      for (const auto* v : {&optim.exp_avg(), &optim.exp_avg_sq()})
        for (const auto& t : *v) opt_bytes += static_cast<long>(t.numel() * t.element_size());
      const memory_per_rank plan_mem = memory<P>(d, a.mesh, precisions::fp32, lora_run());
      if (held.params != plan_mem.params || held.grads != plan_mem.grads || opt_bytes != plan_mem.optimizer)
        failures += " memory held: params " + std::to_string(held.params) + " B, grads " + std::to_string(held.grads) +
                    " B, optimizer " + std::to_string(opt_bytes) + " B; cost model " + std::to_string(plan_mem.params) +
                    ", " + std::to_string(plan_mem.grads) + ", " + std::to_string(plan_mem.optimizer) + " B;";
    }
    // EP's all-to-alls move data-dependent rows; what is sent equals what is
    // received over the ep group, so compare their sums over all ranks (per
    // position in the trace, and in all).
    at::Tensor ep_sums = at::zeros({2 + 2 * static_cast<int64_t>(ep_got.size())}, at::kDouble);
    for (std::size_t i = 0; i < ep_got.size(); ++i) {
      ep_sums[2 + 2 * static_cast<int64_t>(i)] = ep_got[i];
      ep_sums[3 + 2 * static_cast<int64_t>(i)] = ep_want[i];
    }
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
      // every rank has the same positions (the same schedule); a rank whose
      // trace is short still joins with its own count, so no rank hangs
      at::Tensor n = at::full({1}, static_cast<double>(ep_sums.numel()), at::kFloat);
      mesh.world().all_reduce(n, comm::reduce_op::max).wait();
      at::Tensor s = at::zeros({static_cast<int64_t>(n.item<double>())}, at::kFloat);
      s.narrow(0, 0, ep_sums.numel()).copy_(ep_sums);  // byte counts well inside float's exact range here
      mesh.world().all_reduce(s, comm::reduce_op::sum).wait();
      for (int64_t i = 0; i + 1 < s.numel(); i += 2)
        if (s[i].item<double>() != s[i + 1].item<double>())
          failures += " all_to_all/ep " + (i == 0 ? std::string("in all") : "at EP position " + std::to_string(i / 2 - 1)) +
                      ": ran " + std::to_string(s[i].item<double>()) + " B over all ranks, plan " +
                      std::to_string(s[i + 1].item<double>()) + " B;";
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
  std::size_t changed = 0, i = 0;
  for (auto& u : model.exec().units())
    for (auto& g : u.groups)
      if (!g.empty() && g.frozen) changed += !at::equal(frozen_before[i++], g.master.detach());
  if (changed) {
    std::fprintf(stderr, "parity_worker: %zu of %zu frozen parameter groups changed in training\n", changed,
                 frozen_before.size());
    return 4;
  }
  if (env.rank == 0 && !frozen_before.empty())
    std::printf("parity_worker: %zu frozen parameter groups bit-identical after %d steps\n", frozen_before.size(), a.steps);
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

// The tiny models with the Hugging Face options of their language model on
// (Qwen2's q/k/v biases, Qwen3's q/k norms, rope_theta, rms_norm_eps, a head
// tied to the embedding: a root unit of 2 tensors; the MoE's top-k weights
// not renormalised): the same graphs and recipes, other dims.
template <class D>
void hf_options(D& lm) {
  lm.qkv_bias = lm.qk_norm = lm.tie_word_embeddings = true;
  lm.rope_theta = 1e6;
  lm.rms_norm_eps = 1e-5;
}
inline models::dense_lm::dims dense_lm_hf() {
  auto d = models::dense_lm_tiny();
  hf_options(d.at<"lm">());
  return d;
}
inline models::omni_moe::dims omni_moe_hf() {
  auto d = models::omni_moe_tiny();
  hf_options(d.at<"lm">());
  d.at<"lm">().norm_topk_prob = false;
  return d;
}

// omni_moe's recipes (parity_worker_omni.cpp)
int run_omni(const args& a);

}  // namespace parity
