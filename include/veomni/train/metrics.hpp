#pragma once
// <veomni/train/metrics.hpp>: what a person sees of a run.
//   progress_line   "step 12/300 | loss 3.1416 | lr 9.87e-04 | grad norm 1.23 | 4,321 tok/s | MFU 1.2% | ETA 1m05s"
//                   (a model with experts or an image head adds "| aux 1.0312 | total 3.1519" and the like)
//   metrics.jsonl   one JSON object per step (step, loss, aux_loss, total_loss, grad_norm, lr, tokens,
//                   tokens_per_s, mfu, ...)
// and the throughput yardstick for MFU: the measured fp32 GEMM rate of this
// process on the threads it uses. The loss curve is plot.hpp's.
//
// The losses: `loss` is the language-model loss alone (cross-entropy over the
// text targets, each step's mean over its target tokens) — what another
// framework reports for the same model and data. Other token losses of the
// model are named by their term (`image_codes_loss`: the image-token head's);
// `aux_loss` is the MoE load-balancing loss, unweighted; `total_loss` is what
// the backward minimises: the token losses + train.aux_weight * aux_loss.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace veomni::train {

inline std::string with_commas(double v) {
  std::string s = std::to_string(static_cast<long long>(std::llround(v)));
  for (int i = static_cast<int>(s.size()) - 3; i > (s[0] == '-' ? 1 : 0); i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

inline std::string format_duration(double seconds) {
  const long s = static_cast<long>(std::max(0.0, seconds) + 0.5);
  char b[32];
  if (s >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else if (s >= 60) std::snprintf(b, sizeof b, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(b, sizeof b, "%lds", s);
  return b;
}

struct step_record {
  long step = 0, total = 0;
  double loss = 0, grad_norm = 0, lr = 0;            // loss: the language-model loss alone
  std::map<std::string, double> other_losses;         // the model's other token losses by term ("image_codes")
  double aux_loss = 0, total_loss = 0;                // MoE load balance (unweighted); what is minimised
  bool has_aux = false;                               // the model has experts
  double tokens = 0, seconds = 0, mfu = 0, eta_s = 0;
  double data_seconds = 0;                            // of `seconds`: the step's batch, micro-batches, packing and slicing
  long micro_batches = 1;
};

inline std::string progress_line(const step_record& r) {
  char b[320];
  std::string extra;
  for (const auto& [name, v] : r.other_losses) {
    std::snprintf(b, sizeof b, " | %s %.4f", name.c_str(), v);
    extra += b;
  }
  if (r.has_aux) {
    std::snprintf(b, sizeof b, " | aux %.4f", r.aux_loss);
    extra += b;
  }
  if (!extra.empty()) {
    std::snprintf(b, sizeof b, " | total %.4f", r.total_loss);
    extra += b;
  }
  std::snprintf(b, sizeof b, "step %ld/%ld | loss %.4f%s | lr %.2e | grad norm %.3f | %s tok/s | MFU %.2f%% | ETA %s", r.step,
                r.total, r.loss, extra.c_str(), r.lr, r.grad_norm,
                with_commas(r.seconds > 0 ? r.tokens / r.seconds : 0).c_str(), 100.0 * r.mfu, format_duration(r.eta_s).c_str());
  return b;
}

inline nlohmann::ordered_json to_json(const step_record& r) {
  nlohmann::ordered_json j = {{"step", r.step}, {"loss", r.loss}};
  for (const auto& [name, v] : r.other_losses) j[name + "_loss"] = v;
  j["aux_loss"] = r.aux_loss;
  j["total_loss"] = r.total_loss;
  j["grad_norm"] = r.grad_norm;
  j["lr"] = r.lr;
  j["tokens"] = static_cast<long long>(r.tokens);
  j["tokens_per_s"] = r.seconds > 0 ? r.tokens / r.seconds : 0.0;
  j["mfu"] = r.mfu;
  j["step_time_s"] = r.seconds;
  j["data_time_s"] = r.data_seconds;
  j["micro_batches"] = r.micro_batches;
  return j;
}

// This process's resident memory now (VmRSS) and at its peak (VmHWM), in MiB; 0 where /proc is not there.
inline double proc_status_mib(const char* key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::strtod(line.c_str() + std::strlen(key), nullptr) / 1024.0;  // "VmRSS:  1234 kB"
  return 0;
}
inline double resident_mib() { return proc_status_mib("VmRSS:"); }
inline double peak_resident_mib() { return proc_status_mib("VmHWM:"); }

// fp32 GEMM FLOP/s of this process on the intra-op threads it uses now
// (at::get_num_threads): the best of a few 384^3 matmuls after a warm-up.
// MFU divides by the sum of every rank's.
inline double measure_peak_flops(const at::Device& device = at::kCPU, at::ScalarType type = at::kFloat) {
  // the CPU: fp32, the size the model's GEMMs have here; a GPU: the run's dtype, large enough to fill it
  const bool cpu = device.is_cpu();
  const int64_t n = cpu ? 384 : 8192;
  const auto on = at::TensorOptions().device(device).dtype(cpu ? at::kFloat : type);
  const at::Tensor a = at::randn({n, n}, on), b = at::randn({n, n}, on);
  at::Tensor c = at::matmul(a, b);
  (void)c.sum().item<double>();  // a GPU's queue drained before timing (item() waits)
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    c = at::matmul(a, b);
    if (!cpu) (void)c.sum().item<double>();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n * n * n) / std::max(s, 1e-9));
  }
  return best;
}

}  // namespace veomni::train
