#pragma once
// <veomni/train/config.hpp>: the trainer's configuration — VeOmni-style
// sections (model, data, train), read from YAML and `--section.key=value`
// overrides, checked key by key against one schema.
//
//   veomni::train::config c = veomni::train::load_config("omni.yaml", {"--train.lr=3e-4"});
//
// Every key the schema does not know, and every value of the wrong type, is a
// config_error naming the key:
//   "train.lr: expected a number, got 'fast'"
//   "train.max_step: unknown key (did you mean train.max_steps?)"
// Nothing here touches the network: the trainer checks the config on every
// rank before its first collective, so all ranks fail alike (exit 2).
// Needs yaml-cpp (Debian: libyaml-cpp-dev) and nlohmann-json (hf.hpp: a
// model.path's config.json says which model it loads into).
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "hf.hpp"

namespace veomni::train {

struct config_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct accelerator_config {
  long dp_replicate_size = 1;
  long dp_shard_size = 0;  // 0: whatever the world leaves (world / (dp_replicate_size * ulysses_size))
  long ulysses_size = 1;
  long ep_size = 1;
};

struct config {
  struct {
    std::string name;                        // dense_lm | tiny_vl | omni_moe | moe_lm; unset: omni_moe, or with a path what it holds
    std::string path;                        // a Hugging Face checkpoint folder to start from (train/hf.hpp): its
                                             // config.json gives the dims, its weights the parameters
    std::map<std::string, long> dims;        // overrides of the tiny dims, "lm.hidden" -> 96
  } model;
  struct {
    std::string type = "manifest";           // manifest | synthetic
    std::string manifest = "data/default/train.jsonl";
    std::string eval_manifest = "data/default/eval.jsonl";  // "" : no held-out evaluation
    std::string tokenizer;                   // "" : bytes (0..255) plus specials; or a Hugging Face tokenizer.json (or its
                                             // folder, with tokenizer_config.json for the chat template): train/vocabulary.hpp
    long max_seq_len = 256;                  // a longer sample is a bad sample
    std::string bad_samples = "error";       // error: a bad manifest line stops the run (file:line) | skip: skipped, counted by reason
    long token_budget = 0;                   // > 0: micro-batches packed up to this many tokens per rank
    long sample_rate = 8000;                 // WAV files must have it
    long synthetic_seq_len = 64;             // tokens per synthetic sample
  } data;
  struct {
    std::string output_dir = "outputs/run";
    long max_steps = 100;
    long global_batch_size = 16;             // samples per optimizer step, over all data-parallel ranks
    long micro_batch_size = 0;               // samples per rank per micro-batch; 0: the whole share (no accumulation)
    long seed = 42;
    double lr = 1e-3;
    double lr_min = 0.0;                     // where linear and cosine decay end
    long lr_warmup_steps = 0;
    std::string lr_decay_style = "cosine";   // constant | linear | cosine
    double weight_decay = 0.01;
    double max_grad_norm = 1.0;              // 0: no clipping
    long save_steps = 0;                     // 0: save only at the end
    long eval_steps = 0;                     // 0: evaluate only at the end
    bool activation_checkpointing = false;
    bool save_checkpoints = true;
    long keep_checkpoints = 3;               // the newest N checkpoints stay, older ones go once a newer one verifies; 0: keep all
    std::string load_checkpoint_path;        // "" : fresh start; "auto": latest in output_dir; or a directory
    bool export_safetensors = true;          // output_dir/hf/model.safetensors + config.json at the end
    std::string export_dtype;                // with model.path: "" (the checkpoint's) | float32 | bfloat16 | float16
    double aux_weight = 0.01;                // MoE load-balancing loss weight
    double peak_flops_per_rank = 0;          // for MFU; 0: measure this CPU's fp32 GEMM throughput at start
    long log_steps = 1;                      // progress line every log_steps steps (rank 0)
    long threads = 0;                        // intra-op threads per rank; 0: OMP_NUM_THREADS if the user set it, else
                                             // the CPUs of the rank's affinity mask over the local ranks sharing them
    accelerator_config accelerator;
    std::string device = "cpu";              // cpu | cuda (cuda:LOCAL_RANK): where parameters, batches and compute live
    std::string comm_backend;                // gloo | nccl; "": nccl on cuda, gloo on cpu
    std::string mixed_precision = "fp32";    // fp32 | bf16: bf16 gathers and compute, fp32 reduction, fp32 masters
    // LoRA fine-tuning (Adapt<LoRA> on the language model; dense_lm): only
    // the adapters train, the model stays as loaded. Outputs adapter/ (PEFT's
    // format) and, with merge_on_export, hf/ holds the merged model.
    struct {
      long rank = 0;                         // > 0: LoRA of this rank on attention and MLP projections; 0: off
      double alpha = 0;                      // scale alpha / rank; 0: 16, or the adapter's (path)
      double dropout = 0;                    // on the adapters' input, in training
      std::string targets;                   // comma-separated attention, mlp, experts; "": the recipe's
      bool merge_on_export = false;          // hf/: base + adapters merged, in the base checkpoint's layout
      std::string path;                      // a PEFT adapter folder to start from (adapter_config.json, adapter_model.safetensors)
    } lora;
  } train;
};

namespace detail {

enum class value_kind { integer, number, boolean, string };

struct field {
  std::string key;
  value_kind kind;
  std::function<void(const YAML::Node&)> set;   // from a YAML scalar (throws YAML::Exception on a bad one)
  std::function<YAML::Node()> get;
  std::vector<std::string> choices;             // allowed strings (empty: any)
};

inline const char* kind_name(value_kind k) {
  switch (k) {
    case value_kind::integer: return "an integer";
    case value_kind::number: return "a number";
    case value_kind::boolean: return "true or false";
    default: return "a string";
  }
}

// Model dims the trainer exposes, by node; which apply depends on model.name.
inline const std::vector<std::string>& dim_keys() {
  static const std::vector<std::string> keys{
      "lm.vocab",        "lm.hidden",        "lm.layers",         "lm.heads",        "lm.kv_heads",
      "lm.head_dim",     "lm.ffn",           "lm.experts",        "lm.top_k",        "lm.expert_ffn",
      "vision.patch",    "vision.hidden",    "vision.layers",     "vision.heads",    "vision.ffn",
      "audio.mel_bins",  "audio.hidden",     "audio.layers",      "audio.heads",     "audio.ffn",
      "image_out.codebook", "image_out.code_dim"};
  return keys;
}

template <class T>
field make_field(std::string key, value_kind kind, T& ref, std::vector<std::string> choices = {}) {
  return {std::move(key), kind, [&ref](const YAML::Node& n) { ref = n.as<T>(); },
          [&ref] { return YAML::Node(ref); }, std::move(choices)};
}

inline std::vector<field> schema(config& c) {
  using K = value_kind;
  std::vector<field> f{
      make_field("model.name", K::string, c.model.name, {"dense_lm", "tiny_vl", "omni_moe", "moe_lm"}),
      make_field("model.path", K::string, c.model.path),
      make_field("data.type", K::string, c.data.type, {"manifest", "synthetic"}),
      make_field("data.manifest", K::string, c.data.manifest),
      make_field("data.eval_manifest", K::string, c.data.eval_manifest),
      make_field("data.tokenizer", K::string, c.data.tokenizer),
      make_field("data.max_seq_len", K::integer, c.data.max_seq_len),
      make_field("data.bad_samples", K::string, c.data.bad_samples, {"error", "skip"}),
      make_field("data.token_budget", K::integer, c.data.token_budget),
      make_field("data.sample_rate", K::integer, c.data.sample_rate),
      make_field("data.synthetic_seq_len", K::integer, c.data.synthetic_seq_len),
      make_field("train.output_dir", K::string, c.train.output_dir),
      make_field("train.max_steps", K::integer, c.train.max_steps),
      make_field("train.global_batch_size", K::integer, c.train.global_batch_size),
      make_field("train.micro_batch_size", K::integer, c.train.micro_batch_size),
      make_field("train.seed", K::integer, c.train.seed),
      make_field("train.lr", K::number, c.train.lr),
      make_field("train.lr_min", K::number, c.train.lr_min),
      make_field("train.lr_warmup_steps", K::integer, c.train.lr_warmup_steps),
      make_field("train.lr_decay_style", K::string, c.train.lr_decay_style, {"constant", "linear", "cosine"}),
      make_field("train.weight_decay", K::number, c.train.weight_decay),
      make_field("train.max_grad_norm", K::number, c.train.max_grad_norm),
      make_field("train.save_steps", K::integer, c.train.save_steps),
      make_field("train.eval_steps", K::integer, c.train.eval_steps),
      make_field("train.activation_checkpointing", K::boolean, c.train.activation_checkpointing),
      make_field("train.save_checkpoints", K::boolean, c.train.save_checkpoints),
      make_field("train.keep_checkpoints", K::integer, c.train.keep_checkpoints),
      make_field("train.load_checkpoint_path", K::string, c.train.load_checkpoint_path),
      make_field("train.export_safetensors", K::boolean, c.train.export_safetensors),
      make_field("train.export_dtype", K::string, c.train.export_dtype, {"", "float32", "bfloat16", "float16"}),
      make_field("train.aux_weight", K::number, c.train.aux_weight),
      make_field("train.peak_flops_per_rank", K::number, c.train.peak_flops_per_rank),
      make_field("train.log_steps", K::integer, c.train.log_steps),
      make_field("train.threads", K::integer, c.train.threads),
      make_field("train.accelerator.dp_replicate_size", K::integer, c.train.accelerator.dp_replicate_size),
      make_field("train.accelerator.dp_shard_size", K::integer, c.train.accelerator.dp_shard_size),
      make_field("train.accelerator.ulysses_size", K::integer, c.train.accelerator.ulysses_size),
      make_field("train.accelerator.ep_size", K::integer, c.train.accelerator.ep_size),
      make_field("train.device", K::string, c.train.device, {"cpu", "cuda"}),
      make_field("train.comm_backend", K::string, c.train.comm_backend, {"", "gloo", "nccl"}),
      make_field("train.mixed_precision", K::string, c.train.mixed_precision, {"fp32", "bf16"}),
      make_field("train.lora.rank", K::integer, c.train.lora.rank),
      make_field("train.lora.alpha", K::number, c.train.lora.alpha),
      make_field("train.lora.dropout", K::number, c.train.lora.dropout),
      make_field("train.lora.targets", K::string, c.train.lora.targets),
      make_field("train.lora.merge_on_export", K::boolean, c.train.lora.merge_on_export),
      make_field("train.lora.path", K::string, c.train.lora.path),
  };
  for (const auto& k : dim_keys())
    f.push_back({"model." + k, K::integer, [&c, k](const YAML::Node& n) { c.model.dims[k] = n.as<long>(); },
                 [&c, k] { return c.model.dims.count(k) ? YAML::Node(c.model.dims.at(k)) : YAML::Node(); }, {}});
  return f;
}

inline size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

inline std::string unknown_key(const std::string& key, const std::vector<field>& fields) {
  std::string best;
  size_t best_d = 4;  // suggest only close names
  for (const auto& f : fields)
    if (size_t d = edit_distance(key, f.key); d < best_d) best_d = d, best = f.key;
  return key + ": unknown key" + (best.empty() ? "" : " (did you mean " + best + "?)");
}

inline void set_value(std::vector<field>& fields, const std::string& key, const YAML::Node& v) {
  for (auto& f : fields) {
    if (f.key != key) continue;
    if (!v.IsScalar())
      throw config_error(key + ": expected " + kind_name(f.kind) + ", got a " + (v.IsMap() ? "mapping" : v.IsSequence() ? "list" : "null"));
    const std::string text = v.Scalar();
    try {
      // yaml-cpp reads "1.5" as a long without complaint in some versions: check integers by hand
      if (f.kind == value_kind::integer) {
        size_t used = 0;
        (void)std::stol(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
      }
      f.set(v);
    } catch (const std::exception&) {
      throw config_error(key + ": expected " + kind_name(f.kind) + ", got '" + text + "'");
    }
    if (!f.choices.empty()) {
      bool ok = false;
      std::string list;
      for (const auto& ch : f.choices) ok |= ch == text, list += (list.empty() ? "" : " | ") + ch;
      if (!ok) throw config_error(key + ": '" + text + "' is not one of " + list);
    }
    return;
  }
  throw config_error(unknown_key(key, fields));
}

inline void walk(std::vector<field>& fields, const YAML::Node& n, const std::string& prefix) {
  for (const auto& kv : n) {
    if (!kv.first.IsScalar()) {  // "? [a, b]: 1" or "~: 1" (as<std::string>() would throw YAML::TypedBadConversion)
      const YAML::Mark at = kv.first.Mark();
      throw config_error((prefix.empty() ? std::string("config") : prefix) + ": a key must be a name, got a " +
                         (kv.first.IsMap() ? "mapping" : kv.first.IsSequence() ? "list" : "null") +
                         (at.is_null() ? std::string() : " (line " + std::to_string(at.line + 1) + ")"));
    }
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (kv.second.IsMap()) {
      bool is_section = false;  // a mapping is fine only where the schema has keys below it
      for (const auto& f : fields) is_section |= f.key.rfind(key + ".", 0) == 0;
      if (!is_section) throw config_error(unknown_key(key, fields));
      walk(fields, kv.second, key);
    } else {
      set_value(fields, key, kv.second);
    }
  }
}

}  // namespace detail

// Applies `--a.b=c` overrides (YAML scalars) to a config.
inline void apply_overrides(config& c, const std::vector<std::string>& args) {
  auto fields = detail::schema(c);
  for (const auto& a : args) {
    const auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos || eq < 3)
      throw config_error("'" + a + "': overrides are written --section.key=value");
    YAML::Node v;
    try {
      v = YAML::Load(a.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw config_error(a.substr(2, eq - 2) + ": cannot read '" + a.substr(eq + 1) + "': " + e.msg);
    }
    if (v.IsNull()) v = YAML::Node(std::string());
    detail::set_value(fields, a.substr(2, eq - 2), v);
  }
}

// What an unset key means once the others are known: model.name is omni_moe,
// or, when model.path names a checkpoint, moe_lm for a Qwen3MoeForCausalLM in
// its config.json and dense_lm for the rest (whose load names what is wrong);
// data.tokenizer is the checkpoint's when it holds a tokenizer.json.
inline void settle_defaults(config& c) {
  if (c.model.name.empty()) {
    c.model.name = c.model.path.empty() ? "omni_moe" : "dense_lm";
    if (!c.model.path.empty()) try {
        c.model.name = hf_model_name(hf_checkpoint::read_config(c.model.path));
      } catch (const hf_error&) {
        // unreadable: dense_lm's load reports it, naming the file
      }
  }
  std::error_code ec;
  if (c.data.tokenizer.empty() && !c.model.path.empty() &&
      std::filesystem::is_regular_file(std::filesystem::path(c.model.path) / "tokenizer.json", ec))
    c.data.tokenizer = c.model.path;
}

// `settle`: fill the unset keys that depend on others (settle_defaults); load_config does it after the overrides.
inline config parse_config(const std::string& yaml_text, const std::string& origin = "config", bool settle = true) {
  config c;
  auto fields = detail::schema(c);
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw config_error(origin + ": not valid YAML: " + e.what());
  }
  if (!root.IsNull()) {
    if (!root.IsMap()) throw config_error(origin + ": expected a mapping of sections (model, data, train)");
    detail::walk(fields, root, "");
  }
  if (settle) settle_defaults(c);
  return c;
}

inline config load_config(const std::string& path, const std::vector<std::string>& overrides = {}) {
  std::string text;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw config_error(path + ": cannot open the config file");
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
  }
  config c = parse_config(text, path, false);
  apply_overrides(c, overrides);
  settle_defaults(c);
  return c;
}

// The resolved config as YAML (every key, defaults included): output_dir/config.yaml.
inline std::string to_yaml(config c) {
  YAML::Node root;
  for (auto& f : detail::schema(c)) {
    const YAML::Node v = f.get();
    if (!v.IsDefined() || v.IsNull()) continue;
    std::vector<std::string> parts;
    for (size_t a = 0, b; a <= f.key.size(); a = b + 1) {
      b = f.key.find('.', a);
      if (b == std::string::npos) b = f.key.size();
      parts.push_back(f.key.substr(a, b - a));
    }
    // chained operator[] attaches the new nodes on assignment (a reset() node would not be)
    if (parts.size() == 2) root[parts[0]][parts[1]] = v;
    else if (parts.size() == 3) root[parts[0]][parts[1]][parts[2]] = v;
    else root[parts[0]][parts[1]][parts[2]][parts[3]] = v;
  }
  YAML::Emitter out;
  out << root;
  return std::string(out.c_str()) + "\n";
}

// train.lora.targets as names: "attention, mlp" -> {attention, mlp}.
inline std::vector<std::string> lora_target_names(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s + ",") {
    if (ch == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else if (ch != ' ') {
      cur += ch;
    }
  }
  return out;
}

// Checks of values against each other and the launch: mesh sizes, batch sizes.
// world: WORLD_SIZE. Fills dp_shard_size when it is 0. Throws config_error naming the key.
inline void resolve(config& c, long world) {
  auto positive = [](const std::string& key, long v) {
    if (v < 1) throw config_error(key + ": must be >= 1, got " + std::to_string(v));
  };
  auto& a = c.train.accelerator;
  positive("train.accelerator.dp_replicate_size", a.dp_replicate_size);
  positive("train.accelerator.ulysses_size", a.ulysses_size);
  positive("train.accelerator.ep_size", a.ep_size);
  // sizes (>= 1 here) can be anything a config says: a product past 2^63 is an error, not undefined behaviour
  auto times = [](long x, long y, const char* what) {
    if (x > std::numeric_limits<long>::max() / y)
      throw config_error(std::string("train.accelerator: ") + what + " overflows (" + std::to_string(x) + " * " + std::to_string(y) + ")");
    return x * y;
  };
  if (a.dp_shard_size == 0) {
    const long rest = times(a.dp_replicate_size, a.ulysses_size, "dp_replicate_size*ulysses_size");
    if (world % rest != 0)
      throw config_error("train.accelerator: dp_replicate_size*ulysses_size = " + std::to_string(rest) +
                         " does not divide WORLD_SIZE = " + std::to_string(world));
    a.dp_shard_size = world / rest;
  }
  positive("train.accelerator.dp_shard_size", a.dp_shard_size);
  const long product = times(times(a.dp_replicate_size, a.dp_shard_size, "dp_replicate_size*dp_shard_size*ulysses_size"),
                             a.ulysses_size, "dp_replicate_size*dp_shard_size*ulysses_size");
  if (product != world)
    throw config_error("train.accelerator: dp_replicate_size*dp_shard_size*ulysses_size = " + std::to_string(product) +
                       " but WORLD_SIZE = " + std::to_string(world));
  if ((a.dp_shard_size * a.ulysses_size) % a.ep_size != 0)
    throw config_error("train.accelerator.ep_size: " + std::to_string(a.ep_size) +
                       " must divide dp_shard_size*ulysses_size = " + std::to_string(a.dp_shard_size * a.ulysses_size));
  positive("train.max_steps", c.train.max_steps);
  positive("train.global_batch_size", c.train.global_batch_size);
  positive("train.log_steps", c.train.log_steps);
  positive("data.max_seq_len", c.data.max_seq_len);
  const long dp = a.dp_replicate_size * a.dp_shard_size;
  if (c.train.global_batch_size % dp != 0)
    throw config_error("train.global_batch_size: " + std::to_string(c.train.global_batch_size) +
                       " does not split over " + std::to_string(dp) + " data-parallel ranks (dp_replicate_size*dp_shard_size)");
  const long share = c.train.global_batch_size / dp;
  if (c.train.micro_batch_size < 0) throw config_error("train.micro_batch_size: must be >= 0");
  if (c.train.micro_batch_size > 0 && c.data.token_budget == 0 && share % c.train.micro_batch_size != 0)
    throw config_error("train.micro_batch_size: " + std::to_string(c.train.micro_batch_size) +
                       " does not divide each data rank's " + std::to_string(share) + " samples (train.global_batch_size / " +
                       std::to_string(dp) + ")");
  for (const auto& [key, v] : {std::pair<const char*, double>{"train.lr", c.train.lr}, {"train.lr_min", c.train.lr_min},
                                {"train.weight_decay", c.train.weight_decay}, {"train.max_grad_norm", c.train.max_grad_norm},
                                {"train.aux_weight", c.train.aux_weight}, {"train.peak_flops_per_rank", c.train.peak_flops_per_rank}})
    if (!std::isfinite(v) || v < 0) {
      char got[32];
      std::snprintf(got, sizeof got, "%g", v);
      throw config_error(std::string(key) + ": must be a finite number >= 0, got " + got);
    }
  if (c.train.save_steps < 0) throw config_error("train.save_steps: must be >= 0");
  if (c.train.keep_checkpoints < 0) throw config_error("train.keep_checkpoints: must be >= 0 (0 keeps every checkpoint)");
  if (c.train.threads < 0) throw config_error("train.threads: must be >= 0 (0 chooses from the CPUs this rank may use)");
  if (c.data.token_budget < 0) throw config_error("data.token_budget: must be >= 0");
  if (c.data.token_budget % a.ulysses_size != 0)
    throw config_error("data.token_budget: " + std::to_string(c.data.token_budget) + " is not a multiple of train.accelerator.ulysses_size = " +
                       std::to_string(a.ulysses_size) + " (each sequence-parallel rank holds token_budget / ulysses_size tokens)");
  const auto& l = c.train.lora;
  if (l.rank < 0) throw config_error("train.lora.rank: must be >= 0 (0: no LoRA)");
  if (!std::isfinite(l.alpha) || l.alpha < 0) throw config_error("train.lora.alpha: must be a finite number >= 0");
  if (!(l.dropout >= 0 && l.dropout < 1)) throw config_error("train.lora.dropout: must be in [0, 1)");
  for (const auto& t : lora_target_names(l.targets))
    if (t != "attention" && t != "mlp" && t != "experts")
      throw config_error("train.lora.targets: '" + t +
                         "' is not a layer kind LoRA adapts (attention, mlp, experts; comma-separated)");
  const bool lora_keys = l.alpha > 0 || l.dropout > 0 || l.merge_on_export || !l.path.empty() || !l.targets.empty();
  if (l.rank == 0 && l.path.empty() && lora_keys)
    throw config_error("train.lora: set train.lora.rank (> 0) or train.lora.path to fine-tune with LoRA");
  if ((l.rank > 0 || !l.path.empty()) && c.model.name != "dense_lm" && c.model.name != "moe_lm")
    throw config_error("train.lora: LoRA fine-tuning is built for model.name dense_lm (Llama, Qwen2, Qwen3 checkpoints) "
                       "and moe_lm (Qwen3-MoE); model.name is " + c.model.name);
  if (l.rank > 0 || !l.path.empty()) {
    const auto names = lora_target_names(l.targets);
    const auto has = [&](const char* k) { return std::find(names.begin(), names.end(), k) != names.end(); };
    if (c.model.name == "dense_lm" && has("experts"))
      throw config_error("train.lora.targets: dense_lm has no experts (its layers: attention, mlp)");
    // moe_lm's recipe adapts the attention and the experts in separate ops
    // (the experts' adapters split with the experts over ep): both, or neither named
    if (c.model.name == "moe_lm" && has("mlp"))
      throw config_error("train.lora.targets: moe_lm has no dense mlp (its layers: attention, experts)");
    if (c.model.name == "moe_lm" && !names.empty() && !(has("attention") && has("experts")))
      throw config_error("train.lora.targets: moe_lm adapts attention and experts together (its recipe reduces the "
                         "experts' adapters apart from the attention's, so neither may be left without adapters); "
                         "leave train.lora.targets empty or name both");
  }
  if (l.dropout > 0 && c.train.activation_checkpointing)
    throw config_error("train.lora.dropout: must be 0 with train.activation_checkpointing (the recompute would draw another mask)");
}

}  // namespace veomni::train
