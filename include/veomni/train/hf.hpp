#pragma once
// <veomni/train/hf.hpp>: a Hugging Face checkpoint folder, read the way a
// sharded run needs it. Torch-free.
//
//   hf_checkpoint ck("models/qwen3-0.6b");   // config.json + model.safetensors, or shards + model.safetensors.index.json
//   ck.config()                              // config.json, parsed
//   ck.tensor("model.layers.0.self_attn.q_proj.weight")   // {file, dtype BF16, shape [2048, 1024], where its bytes are}
//   ck.read("model.norm.weight", 0, 1024, out)            // elements [0, 1024) as float32, from that byte range alone
//
// Only the headers are read when the folder is opened; read() then fetches
// exactly the bytes of the elements asked for (pread), converting BF16 / F16 /
// F32 to float32. A rank of an FSDP run asks for the elements of its own
// shard only (train::load_hf_weights), so no rank holds the whole model.
//
// Everything is checked before anything is read: each file of the index is
// there, each header parses, each tensor's bytes lie inside its file (a
// truncated shard is named), its dtype is one of the three and its byte
// count matches its shape. Each problem is an hf_error naming the file and
// the tensor.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../core/components.hpp"
#include "../text/json_file.hpp"

namespace veomni::train {

struct hf_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

// bf16: the high half of a float32; f16: IEEE half, subnormals included.
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000 | (man << 13);  // inf, NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(man & 0x400)) man <<= 1, --exp;
    u = sign | (exp << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// An open file descriptor (RAII).
class fd_file {
 public:
  explicit fd_file(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw hf_error(path + ": cannot open (" + std::strerror(errno) + ")");
  }
  ~fd_file() {
    if (fd_ >= 0) ::close(fd_);
  }
  fd_file(const fd_file&) = delete;
  fd_file& operator=(const fd_file&) = delete;
  uint64_t size() const {
    struct stat st {};
    ::fstat(fd_, &st);
    return static_cast<uint64_t>(st.st_size);
  }
  // exactly n bytes at offset, or false
  bool read_at(void* dst, uint64_t n, uint64_t offset) const {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      p += got, n -= static_cast<uint64_t>(got), offset += static_cast<uint64_t>(got);
    }
    return true;
  }

 private:
  int fd_ = -1;
};

}  // namespace detail

class hf_checkpoint {
 public:
  struct tensor_info {
    std::string file;            // its safetensors file
    std::string dtype;           // F32, BF16, F16
    std::vector<int64_t> shape;
    uint64_t offset = 0;         // of its first byte in the file
    int64_t numel() const {
      int64_t n = 1;
      for (int64_t s : shape) n *= s;
      return n;
    }
  };

  // A checkpoint folder's config.json alone (what the model's dims come from),
  // without reading any weights file's header.
  static nlohmann::json read_config(const std::filesystem::path& dir) {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec))
      throw hf_error(dir.string() + ": not a folder (model.path names a Hugging Face checkpoint folder)");
    nlohmann::json c = text::read_json_file<hf_error>(dir / "config.json");
    if (!c.is_object()) throw hf_error((dir / "config.json").string() + ": expected a JSON object");
    return c;
  }

  explicit hf_checkpoint(const std::filesystem::path& dir) : dir_(dir), config_(read_config(dir)) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
    std::vector<std::string> files;
    if (fs::exists(index, ec)) {
      const nlohmann::json j = text::read_json_file<hf_error>(index);
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        throw hf_error(index.string() + ": no \"weight_map\" object");
      std::map<std::string, std::string> where;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string()) throw hf_error(index.string() + ": weight_map['" + name + "'] is not a file name");
        const std::string f = file.get<std::string>();
        if (f.find('/') != std::string::npos || f == "..")
          throw hf_error(index.string() + ": weight_map['" + name + "'] = '" + f + "' is not a file of this folder");
        where[name] = f;
        if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
      }
      for (const std::string& f : files) {
        if (!fs::is_regular_file(dir / f, ec))
          throw hf_error(index.string() + " names " + f + ", which is not in " + dir.string());
        add_file((dir / f).string());
      }
      for (const auto& [name, f] : where) {
        const auto it = tensors_.find(name);
        if (it == tensors_.end()) throw hf_error(index.string() + ": '" + name + "' is in the weight_map but not in " + f);
        if (std::filesystem::path(it->second.file).filename() != f)
          throw hf_error(index.string() + ": '" + name + "' is in " + it->second.file + ", the weight_map says " + f);
      }
    } else if (fs::is_regular_file(single, ec)) {
      add_file(single.string());
    } else {
      throw hf_error(dir.string() + ": neither model.safetensors nor model.safetensors.index.json");
    }
  }

  const nlohmann::json& config() const { return config_; }
  const std::filesystem::path& dir() const { return dir_; }
  const std::map<std::string, tensor_info>& tensors() const { return tensors_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const tensor_info& tensor(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) throw hf_error(dir_.string() + ": the checkpoint has no tensor '" + name + "'");
    return it->second;
  }

  // Elements [begin, end) of `name` (row-major) as float32 into out[0 .. end - begin).
  void read(const std::string& name, int64_t begin, int64_t end, float* out) const {
    const tensor_info& t = tensor(name);
    if (begin < 0 || end > t.numel() || begin > end)
      throw hf_error(t.file + ": elements [" + std::to_string(begin) + ", " + std::to_string(end) + ") of '" + name +
                     "' (it has " + std::to_string(t.numel()) + ")");
    const uint64_t n = static_cast<uint64_t>(end - begin);
    if (n == 0) return;
    const detail::fd_file f(t.file);
    const uint64_t size = t.dtype == "F32" ? 4 : 2;
    const uint64_t at = t.offset + static_cast<uint64_t>(begin) * size;
    if (t.dtype == "F32") {
      if (!f.read_at(out, n * 4, at)) throw hf_error(t.file + ": '" + name + "' could not be read (truncated?)");
      return;
    }
    std::vector<uint16_t> half(n);
    if (!f.read_at(half.data(), n * 2, at)) throw hf_error(t.file + ": '" + name + "' could not be read (truncated?)");
    if (t.dtype == "BF16")
      for (uint64_t i = 0; i < n; ++i) out[i] = detail::bf16_to_float(half[i]);
    else
      for (uint64_t i = 0; i < n; ++i) out[i] = detail::f16_to_float(half[i]);
  }

  // The dtype most tensors have (what an export writes back by default).
  std::string main_dtype() const {
    std::map<std::string, int64_t> bytes;
    for (const auto& [n, t] : tensors_) bytes[t.dtype] += t.numel();
    std::string best;
    for (const auto& [d, b] : bytes)
      if (best.empty() || b > bytes[best]) best = d;
    return best;
  }

 private:
  void add_file(const std::string& path) {
    const detail::fd_file f(path);
    const uint64_t size = f.size();
    unsigned char le[8];
    if (size < 8 || !f.read_at(le, 8, 0)) throw hf_error(path + ": too short for safetensors");
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(le[i]) << (8 * i);
    if (len > (uint64_t{1} << 30) || 8 + len > size)
      throw hf_error(path + ": header length " + std::to_string(len) + " does not fit the file's " + std::to_string(size) + " bytes");
    std::string h(len, ' ');
    if (!f.read_at(h.data(), len, 8)) throw hf_error(path + ": truncated header");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(h);
    } catch (const nlohmann::json::exception& e) {
      throw hf_error(path + ": malformed safetensors header: " + e.what());
    }
    if (!j.is_object()) throw hf_error(path + ": the safetensors header is not an object");
    const uint64_t data = 8 + len;
    for (const auto& [name, v] : j.items()) {
      if (name == "__metadata__") continue;
      const std::string at = path + ": '" + name + "'";
      tensor_info t;
      t.file = path;
      try {
        t.dtype = v.at("dtype").get<std::string>();
        t.shape = v.at("shape").get<std::vector<int64_t>>();
        const uint64_t b = v.at("data_offsets").at(0).get<uint64_t>(), e = v.at("data_offsets").at(1).get<uint64_t>();
        if (t.dtype != "F32" && t.dtype != "BF16" && t.dtype != "F16")
          throw hf_error(at + " has dtype " + t.dtype + " (F32, BF16 and F16 are read)");
        for (int64_t s : t.shape)
          if (s < 0) throw hf_error(at + " has a negative dimension");
        const uint64_t want = static_cast<uint64_t>(t.numel()) * (t.dtype == "F32" ? 4 : 2);
        if (e < b || e - b != want)
          throw hf_error(at + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + ") do not hold its " +
                         std::to_string(t.numel()) + " " + t.dtype + " elements");
        if (data + e > size)
          throw hf_error(at + " ends at byte " + std::to_string(data + e) + ", past the end of the file (" + std::to_string(size) +
                         " bytes): the file is truncated");
        t.offset = data + b;
      } catch (const nlohmann::json::exception& e) {
        throw hf_error(at + ": malformed entry: " + e.what());
      }
      if (tensors_.count(name)) throw hf_error(at + " is also in " + tensors_[name].file);
      tensors_[name] = std::move(t);
    }
  }

  std::filesystem::path dir_;
  nlohmann::json config_;
  std::map<std::string, tensor_info> tensors_;
};

// ---- config.json -> the language model's dims --------------------------------------------------

// A decoder checkpoint: Llama (LlamaForCausalLM), Qwen2 / Qwen2.5
// (Qwen2ForCausalLM: q/k/v biases), Qwen3 (Qwen3ForCausalLM: per-head q/k
// RMSNorm, head_dim of its own), and Qwen3-MoE (Qwen3MoeForCausalLM: Qwen3's
// attention with a mixture of experts in every layer: a softmax router, top-k,
// norm_topk_prob). What config.json says that veomni does not implement
// (rope_scaling, sliding windows, an o_proj or MLP bias, another activation,
// dense layers among the MoE ones) is an error naming the field, so no
// checkpoint trains as a model it is not.
struct hf_model {
  std::string architecture;
  bool moe = false;                // Qwen3MoeForCausalLM: the dims are moe_dims (model.name moe_lm), else dims (dense_lm)
  text_decoder::dims dims;
  moe_text_decoder::dims moe_dims;
  long bos_token_id = -1, eos_token_id = -1;
};

// The model.name a checkpoint's config.json loads into: moe_lm for
// Qwen3MoeForCausalLM, else dense_lm (whose load checks the rest).
inline std::string hf_model_name(const nlohmann::json& c) {
  const auto it = c.find("architectures");
  const bool moe = it != c.end() && it->is_array() && !it->empty() && (*it)[0] == "Qwen3MoeForCausalLM";
  return moe ? "moe_lm" : "dense_lm";
}

// Any of the four; `file` names config.json in the errors.
inline hf_model read_hf_model(const nlohmann::json& c, const std::string& file = "config.json") {
  auto field = [&](const char* k) -> const nlohmann::json* {
    const auto it = c.find(k);
    return it == c.end() || it->is_null() ? nullptr : &*it;
  };
  auto integer = [&](const char* k, long fallback, bool required) -> long {
    const nlohmann::json* v = field(k);
    if (!v) {
      if (required) throw hf_error(file + ": " + k + " is missing");
      return fallback;
    }
    if (!v->is_number_integer() || v->get<long>() < 1) throw hf_error(file + ": " + k + " = " + v->dump() + " is not a positive integer");
    return v->get<long>();
  };
  auto number = [&](const char* k, double fallback) -> double {
    const nlohmann::json* v = field(k);
    if (!v) return fallback;
    if (!v->is_number() || v->get<double>() <= 0) throw hf_error(file + ": " + k + " = " + v->dump() + " is not a positive number");
    return v->get<double>();
  };
  auto flag = [&](const char* k, bool fallback) -> bool {
    const nlohmann::json* v = field(k);
    if (!v) return fallback;
    if (!v->is_boolean()) throw hf_error(file + ": " + k + " = " + v->dump() + " is not true or false");
    return v->get<bool>();
  };
  hf_model m;
  const nlohmann::json* arch = field("architectures");
  if (!arch || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    throw hf_error(file + ": architectures is missing (a list holding e.g. \"Qwen2ForCausalLM\")");
  m.architecture = (*arch)[0].get<std::string>();
  const bool llama = m.architecture == "LlamaForCausalLM", qwen2 = m.architecture == "Qwen2ForCausalLM",
             qwen3 = m.architecture == "Qwen3ForCausalLM";
  m.moe = m.architecture == "Qwen3MoeForCausalLM";
  if (!llama && !qwen2 && !qwen3 && !m.moe)
    throw hf_error(file + ": architectures[0] = " + m.architecture +
                   " is not supported (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM)");
  if (const nlohmann::json* v = field("rope_scaling"))
    throw hf_error(file + ": rope_scaling = " + v->dump() + " is not supported (plain rotary positions only)");
  if (const nlohmann::json* v = field("hidden_act"); v && *v != "silu")
    throw hf_error(file + ": hidden_act = " + v->dump() + " is not supported (silu)");
  if (flag("use_sliding_window", false)) throw hf_error(file + ": use_sliding_window = true is not supported");
  if (flag("mlp_bias", false)) throw hf_error(file + ": mlp_bias = true is not supported");
  if (!qwen2 && flag("attention_bias", false))
    throw hf_error(file + ": attention_bias = true is not supported (a bias on o_proj; Qwen2's q/k/v biases are)");
  text_decoder::dims& d = m.dims;
  d.vocab = integer("vocab_size", 0, true);
  d.hidden = integer("hidden_size", 0, true);
  d.ffn = m.moe ? integer("intermediate_size", 0, false) : integer("intermediate_size", 0, true);  // MoE: only dense layers'
  d.layers = integer("num_hidden_layers", 0, true);
  d.heads = integer("num_attention_heads", 0, true);
  d.kv_heads = integer("num_key_value_heads", d.heads, false);
  if (d.heads % d.kv_heads != 0)
    throw hf_error(file + ": num_key_value_heads = " + std::to_string(d.kv_heads) + " does not divide num_attention_heads = " +
                   std::to_string(d.heads));
  if (!field("head_dim") && d.hidden % d.heads != 0)
    throw hf_error(file + ": no head_dim, and num_attention_heads does not divide hidden_size");
  d.head_dim = integer("head_dim", d.hidden / d.heads, false);
  d.qkv_bias = qwen2;
  d.qk_norm = qwen3 || m.moe;
  d.rope_theta = number("rope_theta", 10000.0);
  d.rms_norm_eps = number("rms_norm_eps", 1e-6);
  d.tie_word_embeddings = flag("tie_word_embeddings", false);
  d.max_position_embeddings = integer("max_position_embeddings", 0, false);
  if (m.moe) {
    // every layer a MoE layer: Qwen3-MoE's decoder_sparse_step 1 and no mlp_only_layers
    if (const long step = integer("decoder_sparse_step", 1, false); step != 1)
      throw hf_error(file + ": decoder_sparse_step = " + std::to_string(step) +
                     " is not supported (dense MLP layers among the MoE ones; every layer must be sparse: 1)");
    if (const nlohmann::json* v = field("mlp_only_layers"); v && !(v->is_array() && v->empty()))
      throw hf_error(file + ": mlp_only_layers = " + v->dump() + " is not supported (dense MLP layers among the MoE ones; [] only)");
    for (const char* k : {"shared_expert_intermediate_size", "n_shared_experts"})
      if (const nlohmann::json* v = field(k); v && *v != 0)
        throw hf_error(file + ": " + k + " = " + v->dump() + " is not supported (no shared expert in Qwen3-MoE)");
    moe_text_decoder::dims& e = m.moe_dims;
    e.vocab = d.vocab, e.hidden = d.hidden, e.layers = d.layers, e.heads = d.heads, e.kv_heads = d.kv_heads, e.head_dim = d.head_dim;
    e.qkv_bias = d.qkv_bias, e.qk_norm = d.qk_norm, e.rope_theta = d.rope_theta, e.rms_norm_eps = d.rms_norm_eps;
    e.tie_word_embeddings = d.tie_word_embeddings, e.max_position_embeddings = d.max_position_embeddings;
    e.experts = integer("num_experts", 0, true);
    e.top_k = integer("num_experts_per_tok", 0, true);
    e.expert_ffn = integer("moe_intermediate_size", 0, true);
    if (e.top_k > e.experts)
      throw hf_error(file + ": num_experts_per_tok = " + std::to_string(e.top_k) + " is more than num_experts = " + std::to_string(e.experts));
    e.norm_topk_prob = flag("norm_topk_prob", false);  // Hugging Face's Qwen3MoeConfig default
  }
  auto token = [&](const char* k) -> long {
    const nlohmann::json* v = field(k);
    if (v && v->is_array() && !v->empty()) v = &(*v)[0];  // Llama 3.1: several eos ids
    return v && v->is_number_integer() ? v->get<long>() : -1;
  };
  m.bos_token_id = token("bos_token_id");
  m.eos_token_id = token("eos_token_id");
  return m;
}

// The dense families (dense_lm); a Qwen3-MoE config.json is refused, naming moe_lm.
inline hf_model hf_dense_model(const nlohmann::json& c, const std::string& file = "config.json") {
  hf_model m = read_hf_model(c, file);
  if (m.moe) throw hf_error(file + ": architectures[0] = " + m.architecture + " is a mixture of experts: it loads into model.name: moe_lm");
  return m;
}

// Where a parameter's elements lie in a checkpoint: one tensor, or, for
// experts stacked in one parameter ([E, F, H]), E tensors of equal size one
// after another (Qwen3-MoE's model.layers.L.mlp.experts.{e}.gate_proj.weight).
struct hf_source {
  std::vector<std::string> tensors;
  int64_t each = 0;      // elements of each tensor
  bool stacked = false;  // one tensor per expert (each has the parameter's shape less its first dimension)

  // elements [begin, end) of the parameter (row-major) as float32 into out[0 .. end - begin)
  void read(const hf_checkpoint& ck, int64_t begin, int64_t end, float* out) const {
    for (size_t i = 0; i < tensors.size() && begin < end; ++i) {
      const int64_t lo = static_cast<int64_t>(i) * each, hi = lo + each;
      if (begin >= hi) continue;
      const int64_t take = std::min(end, hi) - begin;
      ck.read(tensors[i], begin - lo, begin - lo + take, out);
      out += take, begin += take;
    }
    if (begin < end) throw hf_error(ck.dir().string() + ": elements past the end of '" + tensors.back() + "'");
  }
};

// ---- writing a checkpoint back in the layout it came in ---------------------------------------------

namespace detail {
// float32 -> bfloat16 / float16, round to nearest even (NaN stays NaN), as torch's .to() does
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline uint16_t float_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00;                   // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00;                  // rounds past 65504: inf
  if (a < 0x38800000u) {                                       // below 2^-14: a subnormal (or zero)
    if (a < 0x33000000u) return sign;                          // below half the smallest subnormal
    const uint32_t man = (a & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(a >> 23);         // 14 .. 24
    const uint32_t half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    return sign | static_cast<uint16_t>(half + (rest > mid || (rest == mid && (half & 1u))));
  }
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return sign | static_cast<uint16_t>(r >> 13);
}
}  // namespace detail

// One tensor to write: float32 values, written as `dtype` (F32, BF16, F16).
struct hf_tensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// A safetensors file of `tensors` in `dtype`, in the given order; returns its
// data bytes (for an index's total_size). Written to PATH.tmp, then renamed.
inline uint64_t write_hf_safetensors(const std::string& path, const std::vector<hf_tensor>& tensors, const std::string& dtype) {
  const uint64_t size = dtype == "F32" ? 4 : 2;
  if (dtype != "F32" && dtype != "BF16" && dtype != "F16") throw hf_error(path + ": cannot write dtype " + dtype + " (F32, BF16, F16)");
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t at = 0;
  for (const hf_tensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    h[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {at, at + static_cast<uint64_t>(n) * size}}};
    at += static_cast<uint64_t>(n) * size;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(le), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<uint16_t> half;
    for (const hf_tensor& t : tensors) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      if (dtype == "F32") {
        out.write(reinterpret_cast<const char*>(t.data), static_cast<std::streamsize>(n * 4));
        continue;
      }
      half.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) half[static_cast<size_t>(i)] = dtype == "BF16" ? detail::float_to_bf16(t.data[i]) : detail::float_to_f16(t.data[i]);
      out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(n * 2));
    }
    if (!out.flush()) throw hf_error(path + ": could not be written (disk full?)");
  }
  std::filesystem::rename(tmp, path);
  return at;
}

// Writes `tensors` into DIR as the checkpoint `like` was written: the same
// files (each tensor in the file it came from, the index when there was one),
// its config.json with torch_dtype set to what is written, in `dtype` (empty:
// the checkpoint's main dtype). Loading a checkpoint and writing it back
// without training gives the same bytes in every tensor.
inline void write_hf_like(const std::filesystem::path& dir, const hf_checkpoint& like, const std::vector<hf_tensor>& tensors,
                          std::string dtype = "") {
  namespace fs = std::filesystem;
  if (dtype.empty()) dtype = like.main_dtype();
  fs::create_directories(dir);
  std::map<std::string, std::vector<hf_tensor>> by_file;  // file name -> its tensors, in the original order
  std::vector<std::string> order;
  for (const hf_tensor& t : tensors) {
    const std::string file = like.has(t.name) ? fs::path(like.tensor(t.name).file).filename().string() : "model.safetensors";
    if (!by_file.count(file)) order.push_back(file);
    by_file[file].push_back(t);
  }
  for (auto& [file, ts] : by_file)
    std::sort(ts.begin(), ts.end(), [&](const hf_tensor& a, const hf_tensor& b) {
      const uint64_t oa = like.has(a.name) ? like.tensor(a.name).offset : UINT64_MAX, ob = like.has(b.name) ? like.tensor(b.name).offset : UINT64_MAX;
      return oa < ob;
    });
  const bool sharded = fs::exists(like.dir() / "model.safetensors.index.json");
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total = 0;
  for (const std::string& file : order) {
    total += write_hf_safetensors((dir / file).string(), by_file[file], dtype);
    for (const hf_tensor& t : by_file[file]) weight_map[t.name] = file;
  }
  if (sharded) {
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream(dir / "model.safetensors.index.json") << index.dump(2) << "\n";
  }
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(like.config().dump());
  config["torch_dtype"] = dtype == "F32" ? "float32" : dtype == "BF16" ? "bfloat16" : "float16";
  std::ofstream(dir / "config.json") << config.dump(2) << "\n";
}

}  // namespace veomni::train
