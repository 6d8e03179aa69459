#pragma once
// LoRA adapters in PEFT's format (Hugging Face's peft library), so that a
// run's adapters load with PeftModel.from_pretrained and a PEFT folder loads
// here:
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in],
//                              base_model.model.<module>.lora_B.weight [out, r]
//                              (<module>: model.layers.3.self_attn.q_proj, ...)
//   adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout,
//                              target_modules, base_model_name_or_path, ...
// Inside veomni an adapter is named after its weight's parameter
// ("lm.model.layers.3.self_attn.q_proj.lora_A.weight", parallel_model::
// adapters()); the caller maps that to the name in the files, without the
// prefix (the trainer: its weight's Hugging Face name, hf_layout).
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../text/json_file.hpp"
#include "checkpoint.hpp"

namespace veomni::train {

struct peft_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct peft_config {
  long r = 0;
  double lora_alpha = 0;
  double lora_dropout = 0;
  std::vector<std::string> target_modules;  // the adapted modules' last names: q_proj, ..., down_proj
  std::string base_model;                   // base_model_name_or_path
};

inline const std::string& peft_prefix() {
  static const std::string p = "base_model.model.";
  return p;
}

// The modules an adapter set adapts, by their last name ("q_proj"), sorted.
inline std::vector<std::string> peft_modules(const std::vector<std::pair<std::string, at::Tensor>>& adapters) {
  std::set<std::string> out;
  for (const auto& [name, t] : adapters) {
    const auto lora = name.rfind(".lora_");
    const auto dot = lora == std::string::npos ? lora : name.rfind('.', lora - 1);
    if (dot != std::string::npos) out.insert(name.substr(dot + 1, lora - dot - 1));
  }
  return {out.begin(), out.end()};
}

// Writes dir/adapter_model.safetensors (float32) and dir/adapter_config.json;
// `adapters` named as in the files, without the prefix.
inline void write_peft_adapter(const std::filesystem::path& dir,
                               const std::vector<std::pair<std::string, at::Tensor>>& adapters, const peft_config& c) {
  std::filesystem::create_directories(dir);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, t] : adapters) named.emplace_back(peft_prefix() + name, t.detach().to(at::kFloat).contiguous());
  write_safetensors((dir / "adapter_model.safetensors").string(), named, {{"format", "pt"}});
  nlohmann::ordered_json j = {{"peft_type", "LORA"},
                              {"task_type", "CAUSAL_LM"},
                              {"base_model_name_or_path", c.base_model},
                              {"r", c.r},
                              {"lora_alpha", c.lora_alpha},
                              {"lora_dropout", c.lora_dropout},
                              {"target_modules", c.target_modules.empty() ? peft_modules(adapters) : c.target_modules},
                              {"bias", "none"},
                              {"fan_in_fan_out", false},
                              {"inference_mode", true},
                              {"init_lora_weights", true},
                              {"modules_to_save", nullptr}};
  write_text_atomically((dir / "adapter_config.json").string(), j.dump(2) + "\n");
}

struct peft_adapter {
  peft_config config;
  std::map<std::string, at::Tensor> tensors;  // by name in the file, without the prefix; float32
};

// Reads a PEFT LoRA folder; what it cannot use is an error naming the file
// and the field or tensor.
inline peft_adapter read_peft_adapter(const std::filesystem::path& dir) {
  const std::filesystem::path cfg = dir / "adapter_config.json", st = dir / "adapter_model.safetensors";
  if (!std::filesystem::is_regular_file(cfg)) throw peft_error(cfg.string() + ": no such file (a PEFT adapter folder has one)");
  if (!std::filesystem::is_regular_file(st))
    throw peft_error(st.string() + ": no such file (adapter_model.bin, PyTorch's pickle, is not read: save with safetensors)");
  const nlohmann::json j = text::read_json_file<peft_error>(cfg.string());
  peft_adapter a;
  auto field = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) throw peft_error(cfg.string() + ": no '" + std::string(k) + "'");
    return j.at(k);
  };
  if (field("peft_type") != "LORA")
    throw peft_error(cfg.string() + ": peft_type " + field("peft_type").dump() + " (LORA is read)");
  try {
    a.config.r = field("r").get<long>();
    a.config.lora_alpha = field("lora_alpha").get<double>();
    a.config.lora_dropout = j.value("lora_dropout", 0.0);
    a.config.base_model = j.value("base_model_name_or_path", std::string());
  } catch (const nlohmann::json::exception& e) {
    throw peft_error(cfg.string() + ": " + e.what());
  }
  if (a.config.r <= 0) throw peft_error(cfg.string() + ": r = " + std::to_string(a.config.r) + " must be positive");
  for (const char* k : {"use_dora", "use_rslora"})
    if (j.value(k, false)) throw peft_error(cfg.string() + ": " + k + " is true (plain LoRA is read)");
  if (j.contains("bias") && j["bias"] != "none") throw peft_error(cfg.string() + ": bias " + j["bias"].dump() + " (\"none\" is read)");
  if (j.contains("target_modules") && j["target_modules"].is_array())
    for (const auto& m : j["target_modules"]) a.config.target_modules.push_back(m.get<std::string>());
  const safetensors_file f(st.string());
  for (const auto& name : f.names()) {
    if (name.rfind(peft_prefix(), 0) != 0)
      throw peft_error(st.string() + ": tensor '" + name + "' is not under " + peft_prefix());
    a.tensors[name.substr(peft_prefix().size())] = f.read(name).to(at::kFloat);
  }
  return a;
}

// An adapter's tensors in PEFT's files: one name, or (stacked experts
// [E, ...]) one per expert, in expert order.
using peft_names = std::function<std::vector<std::string>(const std::string&)>;

// The model's adapters whole (whole_adapters) under their names in the files:
// stacked experts' one tensor per expert.
inline std::vector<std::pair<std::string, at::Tensor>> peft_tensors(
    const std::vector<std::pair<nn::param_spec, at::Tensor>>& whole, const peft_names& file_names) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [spec, t] : whole) {
    const auto names = file_names(spec.name);
    if (names.size() == 1) {
      out.emplace_back(names[0], t);
      continue;
    }
    if (t.dim() != 3 || t.size(0) != static_cast<int64_t>(names.size()))
      throw peft_error("LoRA: the adapter '" + spec.name + "' is not stacked over its " + std::to_string(names.size()) +
                       " experts");
    for (std::size_t e = 0; e < names.size(); ++e) out.emplace_back(names[e], t[static_cast<int64_t>(e)]);
  }
  return out;
}

// Copies a PEFT adapter into the model's adapters (the elements of each that
// this rank holds: parallel_model::pieces(held::adapters)), each found under
// file_names(its name) (stacked experts: one tensor per expert): each must be
// in the file with its shape, and the file may hold nothing else.
template <class M>
void load_peft_adapter(const peft_adapter& a, M& model, const std::string& where, const peft_names& file_names) {
  using held = typename M::held;
  std::set<std::string> used;
  std::map<std::string, at::Tensor> whole;  // by our name, flat
  for (const auto& spec : model.adapter_specs()) {
    std::vector<at::Tensor> parts;
    const auto names = file_names(spec.name);
    const std::vector<int64_t> each = names.size() == 1 ? spec.shape : std::vector<int64_t>(spec.shape.begin() + 1, spec.shape.end());
    for (const auto& name : names) {
      auto it = a.tensors.find(name);
      if (it == a.tensors.end())
        throw peft_error(where + ": no tensor '" + peft_prefix() + name + "' (the run adapts it; check r and the targets)");
      if (it->second.sizes() != at::IntArrayRef(each)) {
        std::ostringstream s;
        s << where << ": '" << peft_prefix() << name << "' has shape " << it->second.sizes() << ", the run's adapter "
          << at::IntArrayRef(each);
        throw peft_error(s.str());
      }
      parts.push_back(it->second.reshape({-1}));
      used.insert(name);
    }
    whole[spec.name] = at::cat(parts);
  }
  for (const auto& [name, t] : a.tensors)
    if (!used.count(name))
      throw peft_error(where + ": tensor '" + peft_prefix() + name + "' adapts nothing in this run's model");
  torch::NoGradGuard no_grad;
  const auto masters = model.masters(held::adapters);
  for (const piece& p : model.pieces(held::adapters))
    masters[p.tensor].detach().narrow(0, p.offset, p.end - p.begin).copy_(whole.at(p.name).narrow(0, p.begin, p.end - p.begin));
}

}  // namespace veomni::train
