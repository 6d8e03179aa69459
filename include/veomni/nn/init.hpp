#pragma once
// Parameter specs and deterministic, sliceable initialisation.
//
// Every parameter is named ("layers.3.self_attn.q_proj.weight") and its
// values are a pure function of (seed, name, flat index): element i is drawn
// from a counter-based generator keyed by a hash of the name. A rank that
// holds elements [begin, end) of a parameter (an FSDP flat shard, say)
// materialises exactly those, without allocating the rest, and any world size
// starts from the same weights.
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

#include "../core/layer.hpp"

namespace veomni::nn {

enum class init_kind { normal, zeros, ones };

struct param_spec {
  std::string name;
  std::vector<int64_t> shape;
  init_kind init = init_kind::normal;
  double stddev = 0.02;
  bool decay = true;    // weight decay applies (not to norms and biases)
  bool expert = false;  // an expert weight [E, ...], placed by Experts<> policies
  // A linear map [out, in] of a layer of kind `kind`, which the component
  // applies through hooks::linear (an expert tensor [E, out, in]: through
  // hooks::expert_linear): adapters (Adapt<LoRA>) may attach to it.
  bool linear = false;
  layer_kind kind = layer_kind::norm;

  int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  }
};

namespace detail {
constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
constexpr uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return h;
}
// Two uniforms in (0, 1] from one counter, then Box-Muller.
inline double normal_at(uint64_t key, uint64_t i) {
  const uint64_t a = splitmix64(key ^ splitmix64(2 * i));
  const uint64_t b = splitmix64(key ^ splitmix64(2 * i + 1));
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
}  // namespace detail

// Elements [begin, end) of the flattened parameter, as a 1-D tensor.
inline at::Tensor materialize_slice(const param_spec& s, uint64_t seed, int64_t begin, int64_t end,
                                    at::ScalarType dtype = at::kFloat) {
  TORCH_CHECK(0 <= begin && begin <= end && end <= s.numel(), "veomni::nn::materialize_slice: [", begin, ", ",
              end, ") is outside parameter '", s.name, "' of ", s.numel(), " elements");
  switch (s.init) {
    case init_kind::zeros: return at::zeros({end - begin}, at::TensorOptions().dtype(dtype));
    case init_kind::ones: return at::ones({end - begin}, at::TensorOptions().dtype(dtype));
    case init_kind::normal: break;
  }
  at::Tensor out = at::empty({end - begin}, at::TensorOptions().dtype(at::kDouble));
  double* p = out.data_ptr<double>();
  const uint64_t key = detail::splitmix64(seed ^ detail::fnv1a(s.name));
  for (int64_t i = begin; i < end; ++i) p[i - begin] = s.stddev * detail::normal_at(key, static_cast<uint64_t>(i));
  return out.to(dtype);
}

// The whole parameter with its shape.
inline at::Tensor materialize(const param_spec& s, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  return materialize_slice(s, seed, 0, s.numel(), dtype).view(s.shape);
}

// A weight's name less its ".weight" ("...q_proj.weight" -> "...q_proj"), the
// stem its adapters are named after ("...q_proj.lora_A.weight"); another
// name as it is.
inline std::string weight_stem(const std::string& name) {
  constexpr std::string_view w = ".weight";
  return name.size() > w.size() && name.ends_with(w) ? name.substr(0, name.size() - w.size()) : name;
}

inline int64_t total_numel(const std::vector<param_spec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs) n += s.numel();
  return n;
}

// Elements [begin, end) of the concatenation of `specs` flattened in order:
// the slice of a unit's flat buffer that one FSDP rank holds.
inline at::Tensor materialize_flat_slice(const std::vector<param_spec>& specs, uint64_t seed, int64_t begin,
                                         int64_t end, at::ScalarType dtype = at::kFloat) {
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (const auto& s : specs) {
    const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + s.numel());
    if (lo < hi) parts.push_back(materialize_slice(s, seed, lo - offset, hi - offset, dtype));
    offset += s.numel();
  }
  const int64_t pad = end - std::max(begin, std::min(end, offset));
  if (pad > 0) parts.push_back(at::zeros({pad}, at::TensorOptions().dtype(dtype)));  // FSDP padding
  return parts.empty() ? at::empty({0}, at::TensorOptions().dtype(dtype)) : at::cat(parts);
}

// Views of a flat unit buffer as the unit's parameters, in spec order.
inline std::vector<at::Tensor> unflatten(const at::Tensor& flat, const std::vector<param_spec>& specs) {
  std::vector<at::Tensor> out;
  out.reserve(specs.size());
  int64_t offset = 0;
  for (const auto& s : specs) {
    out.push_back(flat.narrow(0, offset, s.numel()).view(s.shape));
    offset += s.numel();
  }
  return out;
}

}  // namespace veomni::nn
