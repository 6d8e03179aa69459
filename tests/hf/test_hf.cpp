// Hugging Face checkpoint folders (train/hf.hpp), on the reference's fixtures
// (hf_reference.py, written by the hf.reference_fixtures test): config.json
// read into the language model's dims, tensors found across shards, element
// ranges read alone and converted from BF16 / F16 exactly, and every damaged
// checkpoint refused by name before anything is read.
#include <doctest/doctest.h>

#include <veomni/train/hf.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

using namespace veomni::train;
namespace fs = std::filesystem;

namespace {

const std::string fixtures = VEOMNI_TEST_HF;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hf_error& e) {
    return e.what();
  }
  return "no error";
}

// float32 -> bfloat16 (round to nearest even) -> float32, as the reference wrote its BF16 files
float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fff + ((u >> 16) & 1);
  u &= 0xffff0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}

// a copy of a fixture to damage
std::string copy_of(const std::string& name, const std::string& tag) {
  const std::string dst = std::string(VEOMNI_TEST_TMP) + "/damaged_" + tag;
  fs::remove_all(dst);
  fs::copy(fixtures + "/" + name, dst, fs::copy_options::recursive);
  return dst;
}

nlohmann::json read_json(const std::string& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

}  // namespace

TEST_CASE("config.json gives the dims of Llama, Qwen2, Qwen3 and Qwen3-MoE") {
  const hf_model llama = hf_dense_model(hf_checkpoint(fixtures + "/llama_f32").config());
  CHECK(llama.architecture == "LlamaForCausalLM");
  CHECK(llama.dims.vocab == 320);
  CHECK(llama.dims.hidden == 64);
  CHECK(llama.dims.head_dim == 16);
  CHECK_FALSE(llama.dims.qkv_bias);
  CHECK_FALSE(llama.dims.qk_norm);
  CHECK(llama.dims.rope_theta == 10000.0);
  CHECK(llama.dims.rms_norm_eps == doctest::Approx(1e-5));
  const hf_model qwen2 = hf_dense_model(hf_checkpoint(fixtures + "/qwen2_bf16_sharded").config());
  CHECK(qwen2.dims.qkv_bias);
  CHECK(qwen2.dims.head_dim == 16);  // Qwen2's config has no head_dim: hidden / heads
  CHECK(qwen2.dims.rope_theta == 1e6);
  const hf_model qwen3 = hf_dense_model(hf_checkpoint(fixtures + "/qwen3_f32_sharded_tied").config());
  CHECK(qwen3.dims.qk_norm);
  CHECK(qwen3.dims.head_dim == 32);  // its own: 4 heads of 32 over a hidden of 64
  CHECK(qwen3.dims.tie_word_embeddings);
  CHECK(qwen3.dims.kv_heads == 2);
  CHECK_FALSE(qwen3.moe);
  const nlohmann::json moe_cfg = hf_checkpoint(fixtures + "/qwen3_moe_bf16_sharded").config();
  const hf_model moe = read_hf_model(moe_cfg);
  CHECK(moe.moe);
  CHECK(hf_model_name(moe_cfg) == "moe_lm");
  CHECK(hf_model_name(hf_checkpoint(fixtures + "/qwen3_bf16").config()) == "dense_lm");
  CHECK(moe.moe_dims.experts == 4);
  CHECK(moe.moe_dims.top_k == 2);
  CHECK(moe.moe_dims.expert_ffn == 32);  // moe_intermediate_size, not intermediate_size (96)
  CHECK(moe.moe_dims.norm_topk_prob);
  CHECK(moe.moe_dims.qk_norm);
  CHECK_FALSE(moe.moe_dims.qkv_bias);
  CHECK(moe.moe_dims.head_dim == 32);
  CHECK(moe.moe_dims.rope_theta == 1e6);
  CHECK_FALSE(read_hf_model(hf_checkpoint(fixtures + "/qwen3_moe_f32_tied").config()).moe_dims.norm_topk_prob);
  // dense_lm does not take it, and says where it goes
  CHECK_THROWS_WITH_AS((void)hf_dense_model(moe_cfg), "config.json: architectures[0] = Qwen3MoeForCausalLM is a mixture of experts: it loads into model.name: moe_lm",
                       hf_error);
}

TEST_CASE("stacked experts read across their per-expert tensors") {
  const hf_checkpoint ck(fixtures + "/qwen3_moe_bf16_sharded");
  hf_source src;
  src.stacked = true;
  for (int e = 0; e < 4; ++e) src.tensors.push_back("model.layers.1.mlp.experts." + std::to_string(e) + ".up_proj.weight");
  src.each = ck.tensor(src.tensors[0]).numel();
  CHECK(src.each == 32 * 64);
  std::vector<float> whole(static_cast<size_t>(4 * src.each)), one(static_cast<size_t>(src.each));
  src.read(ck, 0, 4 * src.each, whole.data());
  for (int e = 0; e < 4; ++e) {
    ck.read(src.tensors[static_cast<size_t>(e)], 0, src.each, one.data());
    CHECK(std::equal(one.begin(), one.end(), whole.begin() + e * src.each));
  }
  // a range over the end of expert 1 and the start of expert 2 (as an EP or FSDP shard asks)
  std::vector<float> part(100);
  src.read(ck, 2 * src.each - 30, 2 * src.each + 70, part.data());
  CHECK(std::equal(part.begin(), part.end(), whole.begin() + 2 * src.each - 30));
  CHECK_THROWS_WITH_AS(src.read(ck, 0, 4 * src.each + 1, whole.data()), doctest::Contains("elements past the end of"), hf_error);
}

TEST_CASE("shards and their index, one file, and element ranges read alone") {
  const hf_checkpoint sharded(fixtures + "/qwen2_bf16_sharded");
  const hf_checkpoint single(fixtures + "/qwen2_f16");
  CHECK(sharded.tensors().size() == single.tensors().size());
  std::set<std::string> files;
  for (const auto& [name, t] : sharded.tensors()) files.insert(fs::path(t.file).filename());
  CHECK(files.size() == 3);
  CHECK(sharded.tensor("model.layers.0.self_attn.q_proj.bias").shape == std::vector<int64_t>{64});
  CHECK(sharded.main_dtype() == "BF16");
  CHECK(single.main_dtype() == "F16");
  // a range is the same as the whole read's slice
  const auto& t = sharded.tensor("model.embed_tokens.weight");
  std::vector<float> whole(static_cast<size_t>(t.numel())), part(100);
  sharded.read("model.embed_tokens.weight", 0, t.numel(), whole.data());
  sharded.read("model.embed_tokens.weight", 1000, 1100, part.data());
  CHECK(std::equal(part.begin(), part.end(), whole.begin() + 1000));
  // F16 and BF16 of the same float32 weights (same seed) agree to BF16's precision
  std::vector<float> half(static_cast<size_t>(t.numel()));
  single.read("model.embed_tokens.weight", 0, t.numel(), half.data());
  double worst = 0;
  for (size_t i = 0; i < whole.size(); ++i) worst = std::max(worst, std::abs(double(whole[i]) - half[i]) / (std::abs(half[i]) + 1e-3));
  CHECK(worst < 1.0 / 128);
  CHECK_THROWS_WITH_AS(sharded.read("model.embed_tokens.weight", 0, t.numel() + 1, whole.data()),
                       doctest::Contains("elements [0, 20481) of 'model.embed_tokens.weight' (it has 20480)"), hf_error);
}

TEST_CASE("BF16 reads back as the float32 it was rounded from, bit for bit") {
  const hf_checkpoint f32(fixtures + "/llama_f32"), bf16(fixtures + "/llama_bf16_tied");
  for (const std::string name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}) {
    const int64_t n = f32.tensor(name).numel();
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    f32.read(name, 0, n, a.data());
    bf16.read(name, 0, n, b.data());
    size_t same = 0;
    for (int64_t i = 0; i < n; ++i) same += round_bf16(a[static_cast<size_t>(i)]) == b[static_cast<size_t>(i)];
    INFO(name);
    CHECK(same == static_cast<size_t>(n));
  }
  CHECK_FALSE(bf16.has("lm_head.weight"));  // tied
}

TEST_CASE("a damaged checkpoint is refused, naming the file and the tensor or field") {
  // a truncated shard
  const std::string t = copy_of("qwen2_bf16_sharded", "truncated");
  const std::string shard = t + "/model-00002-of-00003.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 10);
  CHECK(error_of([&] { hf_checkpoint c(t); }).find(shard) != std::string::npos);
  CHECK(error_of([&] { hf_checkpoint c(t); }).find("past the end of the file") != std::string::npos);
  // a shard the index names, missing
  const std::string m = copy_of("qwen2_bf16_sharded", "missing");
  fs::remove(m + "/model-00003-of-00003.safetensors");
  CHECK(error_of([&] { hf_checkpoint c(m); }) ==
        m + "/model.safetensors.index.json names model-00003-of-00003.safetensors, which is not in " + m);
  // neither weights file
  const std::string none = copy_of("llama_f32", "none");
  fs::remove(none + "/model.safetensors");
  CHECK(error_of([&] { hf_checkpoint c(none); }) == none + ": neither model.safetensors nor model.safetensors.index.json");
  // an index entry for a tensor the shard does not hold
  const std::string idx = copy_of("qwen2_bf16_sharded", "index");
  nlohmann::json j = read_json(idx + "/model.safetensors.index.json");
  j["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors";
  std::ofstream(idx + "/model.safetensors.index.json") << j.dump();
  CHECK(error_of([&] { hf_checkpoint c(idx); }).find("'model.layers.9.mlp.up_proj.weight' is in the weight_map but not in") !=
        std::string::npos);
  // config.json: a missing field, a non-numeric one, what veomni does not implement
  // the error of reading `base` with field k set to v (null: removed)
  auto error_with = [](const nlohmann::json& base, const char* k, const nlohmann::json& v) {
    nlohmann::json c = base;
    if (v.is_null()) c.erase(k);
    else c[k] = v;
    return error_of([&] { (void)read_hf_model(c); });
  };
  const nlohmann::json cfg = hf_checkpoint(fixtures + "/qwen3_bf16").config();
  auto with = [&](const char* k, const nlohmann::json& v) { return error_with(cfg, k, v); };
  CHECK(with("num_hidden_layers", nullptr) == "config.json: num_hidden_layers is missing");
  CHECK(with("hidden_size", "64") == "config.json: hidden_size = \"64\" is not a positive integer");
  CHECK(with("rope_theta", "big") == "config.json: rope_theta = \"big\" is not a positive number");
  CHECK(with("rope_scaling", {{"type", "yarn"}, {"factor", 4}}) ==
        "config.json: rope_scaling = {\"factor\":4,\"type\":\"yarn\"} is not supported (plain rotary positions only)");
  CHECK(with("hidden_act", "gelu") == "config.json: hidden_act = \"gelu\" is not supported (silu)");
  CHECK(with("architectures", nlohmann::json::array({"MistralForCausalLM"})).find("architectures[0] = MistralForCausalLM is not supported") !=
        std::string::npos);
  CHECK(with("num_key_value_heads", 3) == "config.json: num_key_value_heads = 3 does not divide num_attention_heads = 4");
  CHECK(with("attention_bias", true).find("attention_bias = true is not supported") != std::string::npos);
  // Qwen3-MoE: dense layers among the sparse ones, a shared expert, missing expert sizes
  const nlohmann::json moe = hf_checkpoint(fixtures + "/qwen3_moe_bf16_sharded").config();
  auto moe_with = [&](const char* k, const nlohmann::json& v) { return error_with(moe, k, v); };
  CHECK(moe_with("mlp_only_layers", nlohmann::json::array({1})) ==
        "config.json: mlp_only_layers = [1] is not supported (dense MLP layers among the MoE ones; [] only)");
  CHECK(moe_with("decoder_sparse_step", 2) ==
        "config.json: decoder_sparse_step = 2 is not supported (dense MLP layers among the MoE ones; every layer must be sparse: 1)");
  CHECK(moe_with("shared_expert_intermediate_size", 64).find("shared_expert_intermediate_size = 64 is not supported") != std::string::npos);
  CHECK(moe_with("num_experts", nullptr) == "config.json: num_experts is missing");
  CHECK(moe_with("moe_intermediate_size", 0) == "config.json: moe_intermediate_size = 0 is not a positive integer");
  CHECK(moe_with("num_experts_per_tok", 5) == "config.json: num_experts_per_tok = 5 is more than num_experts = 4");
  CHECK(error_of([&] { (void)read_hf_model(moe); }) == "no error");
}
