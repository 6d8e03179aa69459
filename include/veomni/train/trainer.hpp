#pragma once
// <veomni/train/trainer.hpp>: the training job, from a config to a trained,
// checkpointed, exported model.
//
// Each model has one recipe, compiled in; the config gives the mesh sizes,
// and a size of 1 turns a policy's collectives into no-ops:
//   dense_lm   lm: Shard<HSDP> + Split<Ulysses>
//   tiny_vl    vision, proj: Shard<HSDP>; lm: Shard<HSDP> + Split<Ulysses>
//   omni_moe   encoders, projectors, image_out: Shard<HSDP>;
//              lm: Shard<HSDP> + Split<Ulysses> + Experts<EP>
//   moe_lm     lm: Shard<HSDP> + Split<Ulysses> + Experts<EP>
// (HSDP with dp_replicate_size = 1 is FSDP.) With train.lora:
//   dense_lm   lm: Shard<HSDP> + Split<Ulysses> + Adapt<LoRA>                 (attention, mlp)
//   moe_lm     lm: Shard<HSDP> + Split<Ulysses> + Experts<EP> + Adapt<LoRA>   (attention, experts;
//              the experts' adapters split with the experts over ep)
//
// One step: the next train.global_batch_size samples of the stream; this
// rank's share cut into micro-batches; forward_backward on each with the
// whole step's target counts (exact accumulation); the global gradient norm;
// clipping; AdamW on the shards at the scheduled learning rate.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include "../comm.hpp"
#include "../core.hpp"
#include "../models/zoo.hpp"
#include "../parallel.hpp"
#include "checkpoint.hpp"
#include "config.hpp"
#include "data.hpp"
#include "metrics.hpp"
#include "optimizer.hpp"
#include "paths.hpp"
#include "peft.hpp"
#include "plot.hpp"
#include "schedule.hpp"
#include "threads.hpp"
#include "vocabulary.hpp"

#if defined(VEOMNI_WITH_NCCL) && defined(VEOMNI_TORCH_CUDA)
#include "../comm/nccl.hpp"
#define VEOMNI_TRAIN_NCCL 1
#else
#define VEOMNI_TRAIN_NCCL 0
#endif

namespace veomni::train {

// What this build can run: train.device: cuda needs a CUDA LibTorch, train.comm_backend: nccl the NCCL mesh too.
#if defined(VEOMNI_TORCH_CUDA)
inline constexpr bool torch_has_cuda = true;
#else
inline constexpr bool torch_has_cuda = false;
#endif
inline constexpr bool trainer_has_nccl = VEOMNI_TRAIN_NCCL != 0;

// ---- the recipes ---------------------------------------------------------------------------

template <fixed_string N>
using sharded = apply<N, Shard<HSDP>>;

using dense_lm_recipe = recipe<apply<"lm", Shard<HSDP>, Split<Ulysses>>>;
// LoRA fine-tuning (train.lora): rank, alpha and dropout from the config
using dense_lm_lora_recipe = recipe<apply<"lm", Shard<HSDP>, Split<Ulysses>, Adapt<LoRA>>>;
using tiny_vl_recipe = recipe<sharded<"vision">, sharded<"proj">, apply<"lm", Shard<HSDP>, Split<Ulysses>>>;
using omni_moe_recipe = recipe<sharded<"vision">, sharded<"vision_proj">, sharded<"audio">, sharded<"audio_proj">,
                               apply<"lm", Shard<HSDP>, Split<Ulysses>, Experts<EP>>, sharded<"image_out">>;
using moe_lm_recipe = recipe<apply<"lm", Shard<HSDP>, Split<Ulysses>, Experts<EP>>>;
using moe_lm_lora = lora<lora_options{.targets = layer_kinds({layer_kind::attention, layer_kind::moe})}>;
using moe_lm_lora_recipe = recipe<apply<"lm", Shard<HSDP>, Split<Ulysses>, Experts<EP>, Adapt<moe_lm_lora>>>;

// ---- model dims from the config ---------------------------------------------------------------

namespace detail {
using dim_list = std::vector<std::pair<std::string, long*>>;
inline dim_list dim_fields(text_decoder::dims& d) {
  return {{"vocab", &d.vocab}, {"hidden", &d.hidden}, {"layers", &d.layers}, {"heads", &d.heads},
          {"kv_heads", &d.kv_heads}, {"head_dim", &d.head_dim}, {"ffn", &d.ffn}};
}
inline dim_list dim_fields(moe_text_decoder::dims& d) {
  return {{"vocab", &d.vocab},       {"hidden", &d.hidden},         {"layers", &d.layers},
          {"heads", &d.heads},       {"kv_heads", &d.kv_heads},     {"head_dim", &d.head_dim},
          {"experts", &d.experts},   {"top_k", &d.top_k},           {"expert_ffn", &d.expert_ffn}};
}
inline dim_list dim_fields(vision_encoder::dims& d) {
  return {{"patch", &d.patch}, {"hidden", &d.hidden}, {"layers", &d.layers}, {"heads", &d.heads}, {"ffn", &d.ffn}};
}
inline dim_list dim_fields(audio_encoder::dims& d) {
  return {{"mel_bins", &d.mel_bins}, {"hidden", &d.hidden}, {"layers", &d.layers}, {"heads", &d.heads}, {"ffn", &d.ffn}};
}
inline dim_list dim_fields(projector::dims&) { return {}; }
inline dim_list dim_fields(image_token_decoder::dims& d) { return {{"codebook", &d.codebook}, {"code_dim", &d.code_dim}}; }
}  // namespace detail

template <Model G>
typename G::dims tiny_dims();
template <>
inline models::dense_lm::dims tiny_dims<models::dense_lm>() { return models::dense_lm_tiny(); }
template <>
inline models::tiny_vl::dims tiny_dims<models::tiny_vl>() { return models::tiny_vl_tiny(); }
template <>
inline models::omni_moe::dims tiny_dims<models::omni_moe>() { return models::omni_moe_tiny(); }
template <>
inline models::moe_lm::dims tiny_dims<models::moe_lm>() { return models::moe_lm_tiny(); }

// The models a Hugging Face checkpoint loads into (model.path) and exports as (hf/).
template <Model G>
inline constexpr bool hf_family = std::is_same_v<G, models::dense_lm> || std::is_same_v<G, models::moe_lm>;

// The tiny dims with the config's model.<node>.<dim> overrides; projectors and
// the image head follow the widths they connect. Throws config_error naming
// the key for a dim the model lacks and for sizes the mesh cannot split.
template <Model G>
typename G::dims model_dims(const config& c) {
  typename G::dims d = tiny_dims<G>();
  std::map<std::string, long> left = c.model.dims;
  if (!c.model.path.empty()) {  // a Hugging Face checkpoint: its config.json is the model
    if constexpr (hf_family<G>) {
      constexpr bool moe = std::is_same_v<G, models::moe_lm>;
      try {
        const hf_model m = read_hf_model(hf_checkpoint::read_config(c.model.path), c.model.path + "/config.json");
        if (m.moe != moe)
          throw hf_error(c.model.path + "/config.json: architectures[0] = " + m.architecture + " loads into model.name: " +
                         (m.moe ? "moe_lm" : "dense_lm") + ", not " + c.model.name);
        if constexpr (moe)
          veomni::get<0>(d) = m.moe_dims;
        else
          veomni::get<0>(d) = m.dims;
      } catch (const hf_error& e) {
        throw config_error(std::string("model.path: ") + e.what());
      }
      if (!left.empty())
        throw config_error("model." + left.begin()->first + ": given by model.path's config.json (" + c.model.path +
                           "); leave it out");
    } else {
      throw config_error("model.path: a Hugging Face checkpoint loads into model.name: dense_lm (Llama, Qwen2, Qwen3) or moe_lm "
                         "(Qwen3-MoE), not " + c.model.name);
    }
  }
  for_each_node<G>([&](auto I) {
    for (auto& [field, ptr] : detail::dim_fields(veomni::get<I.value>(d))) {
      const std::string key = std::string(G::names[I.value]) + "." + field;
      if (auto it = left.find(key); it != left.end()) {
        if (it->second < 1) throw config_error("model." + key + ": must be >= 1, got " + std::to_string(it->second));
        *ptr = it->second;
        left.erase(it);
      }
    }
  });
  if (!left.empty())
    throw config_error("model." + left.begin()->first + ": model " + c.model.name + " has no such dimension");
  long lm_hidden = 0, lm_heads = 0, lm_kv = 0, experts = 0;
  for_each_node<G>([&](auto I) {
    auto& nd = veomni::get<I.value>(d);
    using D = std::decay_t<decltype(nd)>;
    if constexpr (std::is_same_v<D, text_decoder::dims> || std::is_same_v<D, moe_text_decoder::dims>) {
      lm_hidden = nd.hidden, lm_heads = nd.heads, lm_kv = nd.kv_heads;
      if constexpr (std::is_same_v<D, moe_text_decoder::dims>) {
        experts = nd.experts;
        if (nd.top_k > nd.experts)
          throw config_error("model.lm.top_k: " + std::to_string(nd.top_k) + " exceeds model.lm.experts = " + std::to_string(nd.experts));
      }
      if (nd.heads % nd.kv_heads != 0)
        throw config_error("model.lm.kv_heads: " + std::to_string(nd.kv_heads) + " does not divide model.lm.heads = " + std::to_string(nd.heads));
    }
    if constexpr (std::is_same_v<D, vision_encoder::dims> || std::is_same_v<D, audio_encoder::dims>)
      if (nd.hidden % nd.heads != 0)
        throw config_error(std::string("model.") + std::string(G::names[I.value]) + ".heads: " + std::to_string(nd.heads) +
                           " does not divide model." + std::string(G::names[I.value]) + ".hidden = " + std::to_string(nd.hidden));
  });
  // connect the widths: a projector maps its encoder's width to the lm's; image_out reads the lm's
  for_each_node<G>([&](auto I) {
    auto& nd = veomni::get<I.value>(d);
    using D = std::decay_t<decltype(nd)>;
    if constexpr (std::is_same_v<D, projector::dims>) {
      const std::string_view name = G::names[I.value];
      for_each_node<G>([&](auto J) {
        using E = std::decay_t<decltype(veomni::get<J.value>(d))>;
        if constexpr (std::is_same_v<E, vision_encoder::dims> || std::is_same_v<E, audio_encoder::dims>) {
          const bool vision = std::is_same_v<E, vision_encoder::dims>;
          if ((vision && name.find("audio") == std::string_view::npos) || (!vision && name.find("audio") != std::string_view::npos))
            nd.in = veomni::get<J.value>(d).hidden;
        }
      });
      nd.out = lm_hidden;
    }
    if constexpr (std::is_same_v<D, image_token_decoder::dims>) nd.hidden = lm_hidden;
  });
  const long sp = c.train.accelerator.ulysses_size, ep = c.train.accelerator.ep_size;
  if (lm_heads % sp != 0 || lm_kv % sp != 0)
    throw config_error("train.accelerator.ulysses_size: " + std::to_string(sp) + " does not divide model.lm.heads = " +
                       std::to_string(lm_heads) + " and model.lm.kv_heads = " + std::to_string(lm_kv) +
                       " (Ulysses splits attention heads over the sp ranks)");
  if (ep > 1 && experts == 0)
    throw config_error("train.accelerator.ep_size: " + std::to_string(ep) + " but model " + c.model.name + " has no experts");
  if (experts > 0 && experts % ep != 0)
    throw config_error("train.accelerator.ep_size: " + std::to_string(ep) + " does not divide model.lm.experts = " +
                       std::to_string(experts));
  return d;
}

template <Model G>
media_spec media_of(const typename G::dims& d, const config& c) {
  media_spec m;
  m.sample_rate = c.data.sample_rate;
  for_each_node<G>([&](auto I) {
    const auto& nd = veomni::get<I.value>(d);
    using D = std::decay_t<decltype(nd)>;
    if constexpr (std::is_same_v<D, vision_encoder::dims>) m.images = true, m.vision_patch = nd.patch, m.channels = nd.channels;
    if constexpr (std::is_same_v<D, audio_encoder::dims>) m.audio = true, m.mel_bins = nd.mel_bins, m.audio_kernel = nd.kernel;
    if constexpr (std::is_same_v<D, image_token_decoder::dims>) m.generation = true, m.code_patch = nd.patch, m.codebook = nd.codebook;
  });
  return m;
}

template <Model G>
long vocab_of(const typename G::dims& d) {
  long v = 0;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    if constexpr (std::is_same_v<C, text_decoder> || std::is_same_v<C, moe_text_decoder>) v = veomni::get<I.value>(d).vocab;
  });
  return v;
}

// The model has MoE layers (and so a load-balancing loss).
template <Model G>
constexpr bool has_experts() {
  bool any = false;
  for_each_node<G>([&](auto I) { any = any || has_layer_kind<typename G::template component_at<I.value>>(layer_kind::moe); });
  return any;
}

// Model FLOPs of one step (forward + backward = 3 x forward, core/flops.hpp),
// from the step's samples: each node's tokens at each sample's context.
template <Model G>
double step_flops(const typename G::dims& d, const std::vector<const parallel::sample*>& batch, const media_spec& m,
                  const vocabulary& v = byte_vocabulary()) {
  double f = 0;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    const auto& nd = veomni::get<I.value>(d);
    const bool causal = causal_attention<C>();
    auto add = [&](long tokens, long context) {
      if (tokens > 0) f += 3.0 * forward_flops<C>(nd, context, causal).total() * static_cast<double>(tokens);
    };
    const std::string_view name = G::names[I.value];
    for (const auto* s : batch) {
      const long len = static_cast<long>(s->tokens.size());
      if constexpr (C::mod == modality::text || std::is_same_v<C, image_token_decoder>) {
        add(len, len);
      } else if constexpr (std::is_same_v<C, vision_encoder>) {
        for (const auto& img : s->images) {
          const long n = (img.size(1) / m.vision_patch) * (img.size(2) / m.vision_patch);
          add(n, n);
        }
      } else if constexpr (std::is_same_v<C, audio_encoder>) {
        for (const auto& a : s->audio) add(audio_tokens(m, a.size(0)), audio_tokens(m, a.size(0)));
      } else {  // projectors: one row per placeholder of their modality
        const int64_t ph = name.find("audio") != std::string_view::npos ? v.audio : v.image;
        add(static_cast<long>(std::count(s->tokens.begin(), s->tokens.end(), ph)), 1);
      }
    }
  });
  return f;
}

// ---- evaluation ---------------------------------------------------------------------------------

struct eval_result {
  double loss = 0;          // mean over answer (target) tokens
  double token_accuracy = 0;  // argmax == target over answer tokens
  double exact_match = 0;   // samples whose answer tokens are all right
  double code_accuracy = -1;  // image generation codes (-1: none)
  long samples = 0;
  std::map<std::string, std::pair<long, long>> by_kind;  // kind -> (exact, samples)
};

// Teacher-forced evaluation of whole parameters (rank 0 after consolidate).
template <Model G>
eval_result evaluate(const typename G::dims& d, named_params<G>& params, const dataset& data, const vocabulary& v = byte_vocabulary()) {
  torch::NoGradGuard no_grad;
  eval_result r;
  double loss = 0, right = 0, count = 0, code_right = 0, code_count = 0, exact = 0;
  const std::string head = [] {
    std::string h;
    for_each_node<G>([&](auto I) {
      using C = typename G::template component_at<I.value>;
      if constexpr (C::mod == modality::text) h = std::string(G::names[I.value]);
    });
    return h;
  }();
  // the text node's output head: lm_head.weight, or embed_tokens when tied
  at::Tensor lm_head;
  for_each_node<G>([&](auto I) {
    using C = typename G::template component_at<I.value>;
    if constexpr (C::mod == modality::text)
      lm_head = nn::impl<C>::head_weight(veomni::get<I.value>(d), params.unit({I.value, -1}));
  });
  constexpr size_t chunk = 16;
  for (size_t a = 0; a < data.samples.size(); a += chunk) {
    std::vector<const parallel::sample*> part;
    for (size_t i = a; i < std::min(data.samples.size(), a + chunk); ++i) part.push_back(&data.samples[i]);
    const nn::batch hb = parallel::pack(part, 1, v.image, v.audio);
    const nn::batch b = lm_head.device().is_cpu() ? hb : nn::to_device(hb, lm_head.device());  // where the weights are
    nn::context ctx;
    ctx.data = &b;
    const nn::port_map outs = nn::forward<G>(d, params, ctx);
    const at::Tensor pred = at::matmul(outs.at(head + ".hidden"), lm_head.t()).argmax(-1);
    const at::Tensor mask = b.targets.ne(-100);
    const at::Tensor ok = pred.eq(b.targets) & mask;
    right += ok.sum().item<double>();
    count += mask.sum().item<double>();
    for (const auto& t : ctx.losses)
      if (t.name == "lm") loss += t.sum.item<double>();
    if (b.code_targets.defined() && outs.count("image_out.codes")) {
      const at::Tensor cm = b.code_targets.ne(-100);
      code_right += (outs.at("image_out.codes").eq(b.code_targets) & cm).sum().item<double>();
      code_count += cm.sum().item<double>();
    }
    // per sample exact match over its answer tokens (and codes)
    const int64_t* cu = hb.cu_seqlens.data_ptr<int64_t>();
    for (size_t s = 0; s < part.size(); ++s) {
      const int64_t lo = cu[s], n = cu[s + 1] - cu[s];
      const long wrong = (mask.narrow(0, lo, n) & ~ok.narrow(0, lo, n)).sum().item<long>();
      long wrong_codes = 0;
      if (b.code_targets.defined() && outs.count("image_out.codes")) {
        const at::Tensor ct = b.code_targets.narrow(0, lo, n);
        wrong_codes = (ct.ne(-100) & outs.at("image_out.codes").narrow(0, lo, n).ne(ct)).sum().item<long>();
      }
      const bool all = wrong == 0 && wrong_codes == 0;
      exact += all;
      const std::string kind = a + s < data.kinds.size() ? data.kinds[a + s] : "all";
      r.by_kind[kind].first += all;
      r.by_kind[kind].second += 1;
    }
  }
  r.samples = static_cast<long>(data.samples.size());
  r.loss = count > 0 ? loss / count : 0;
  r.token_accuracy = count > 0 ? right / count : 0;
  r.exact_match = r.samples > 0 ? exact / static_cast<double>(r.samples) : 0;
  if (code_count > 0) r.code_accuracy = code_right / code_count;
  return r;
}

// ---- LoRA adapters in PEFT's files ------------------------------------------------------------------

// An adapter's names in PEFT's files (less the base_model.model. prefix): its
// weight's Hugging Face name with the adapter's suffix; a stacked expert
// weight's adapters one per expert, as Hugging Face names the experts,
//   lm.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj.lora_A.weight
//   lm.model.layers.0.mlp.experts.up_proj.lora_B.weight [E, F, r]
//     -> model.layers.0.mlp.experts.{0..E-1}.up_proj.lora_B.weight [F, r]
template <Model G>
peft_names peft_naming(const typename G::dims& d) {
  std::map<std::string, std::vector<std::string>> stems;  // our weight's stem -> its Hugging Face tensors' stems
  if constexpr (hf_family<G>)
    for (const auto& [spec, src] : hf_layout<G>(d)) {
      std::vector<std::string> hf;
      for (const auto& t : src.tensors) hf.push_back(nn::weight_stem(t));
      stems[nn::weight_stem(spec.name)] = hf;
    }
  return [stems](const std::string& n) {
    const auto at = n.rfind(".lora_");
    const auto it = at == std::string::npos ? stems.end() : stems.find(n.substr(0, at));
    if (it == stems.end() || it->second.empty())
      throw checkpoint_error("LoRA: the adapter '" + n + "' adapts no weight with a Hugging Face name");
    std::vector<std::string> out;
    for (const auto& s : it->second) out.push_back(s + n.substr(at));
    return out;
  };
}

// ---- export --------------------------------------------------------------------------------------

// output_dir/hf/model.safetensors (+ config.json). dense_lm and moe_lm are
// Hugging Face checkpoints (Llama / Qwen2 / Qwen3 / Qwen3-MoE names and
// config.json: "model.layers.0.self_attn.q_proj.weight", one tensor per
// expert); other models keep their node prefix ("vision.layers.0...").
template <Model G>
void export_model(const std::string& dir, const typename G::dims& d, const std::string& model_name,
                  const std::vector<std::pair<nn::param_spec, at::Tensor>>& all, const vocabulary& v = byte_vocabulary()) {
  std::filesystem::create_directories(dir);
  constexpr bool hf = hf_family<G>;
  (void)model_name;
  if constexpr (hf) {
    write_hf_safetensors(dir + "/model.safetensors", hf_tensors<G>(d, all).tensors, "F32");
  } else {
    std::vector<std::pair<std::string, at::Tensor>> ts;
    for (const auto& [s, t] : all) ts.emplace_back(s.name, t);
    write_safetensors(dir + "/model.safetensors", ts, {{"format", "pt"}});
  }
  for (const std::string& f : v.files)  // the tokenizer goes with the model: hf/ loads as a whole
    std::filesystem::copy_file(f, std::filesystem::path(dir) / std::filesystem::path(f).filename(),
                               std::filesystem::copy_options::overwrite_existing);
  nlohmann::ordered_json j;
  if constexpr (hf) {
    const auto& lm = veomni::get<0>(d);
    constexpr bool moe = std::is_same_v<G, models::moe_lm>;
    // the Hugging Face family whose math the dims are: Qwen3-MoE (q/k norms, experts), Qwen3's q/k norms, Qwen2's q/k/v biases, else Llama's
    const char* arch = moe ? "Qwen3MoeForCausalLM" : lm.qk_norm ? "Qwen3ForCausalLM" : lm.qkv_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
    const char* type = moe ? "qwen3_moe" : lm.qk_norm ? "qwen3" : lm.qkv_bias ? "qwen2" : "llama";
    if (lm.qk_norm && lm.qkv_bias)
      throw config_error("export: q/k norms and q/k/v biases together are no Hugging Face architecture (set train.export_safetensors: false)");
    if (moe && !lm.qk_norm)
      throw config_error("export: a moe_lm without q/k norms is no Hugging Face architecture (set train.export_safetensors: false)");
    j = {{"architectures", {arch}},
         {"model_type", type},
         {"vocab_size", lm.vocab},
         {"hidden_size", lm.hidden}};
    if constexpr (moe) {
      j["intermediate_size"] = lm.expert_ffn;  // only dense layers' (there are none)
      j["moe_intermediate_size"] = lm.expert_ffn;
      j["num_experts"] = lm.experts;
      j["num_experts_per_tok"] = lm.top_k;
      j["norm_topk_prob"] = lm.norm_topk_prob;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = nlohmann::ordered_json::array();
    } else {
      j["intermediate_size"] = lm.ffn;
    }
    j.update(nlohmann::ordered_json{
         {"num_hidden_layers", lm.layers},
         {"num_attention_heads", lm.heads},
         {"num_key_value_heads", lm.kv_heads},
         {"head_dim", lm.head_dim},
         {"hidden_act", "silu"},
         {"rms_norm_eps", lm.rms_norm_eps},
         {"rope_theta", lm.rope_theta},
         {"max_position_embeddings", lm.max_position_embeddings > 0 ? lm.max_position_embeddings : 4096},
         {"tie_word_embeddings", lm.tie_word_embeddings},
         {"bos_token_id", v.bos >= 0 ? nlohmann::ordered_json(v.bos) : nlohmann::ordered_json()},
         {"eos_token_id", v.eos},
         {"torch_dtype", "float32"}});
  } else {
    j["architectures"] = {"veomni_" + model_name};
    j["model_type"] = "veomni_" + model_name;
    for_each_node<G>([&](auto I) {
      auto nd = veomni::get<I.value>(d);
      nlohmann::ordered_json node;
      for (auto& [k, p] : detail::dim_fields(nd)) node[k] = *p;
      j[std::string(G::names[I.value])] = node;
    });
  }
  std::ofstream(dir + "/config.json") << j.dump(2) << "\n";
}

// ---- threads ---------------------------------------------------------------------------------------

// The choice's inputs from the config and the environment; `cpus` and
// `sharing` are the caller's (rank_threads).
inline thread_inputs thread_settings(const config& c, long local_world) {
  thread_inputs in;
  in.configured = c.train.threads;
  const char* omp = std::getenv("OMP_NUM_THREADS");
  if (omp) in.omp = omp;
  in.launcher_omp = launcher_set_omp(omp, std::getenv("VEOMNI_LAUNCH_SET_OMP"), std::getenv("TORCHELASTIC_RUN_ID"), local_world);
  return in;
}

// choose_threads, a bad OMP_NUM_THREADS reported as a config_error (exit 2).
inline thread_choice choose_threads_or_config_error(const thread_inputs& in) {
  try {
    return choose_threads(in);
  } catch (const std::invalid_argument& e) {
    throw config_error(e.what());
  }
}

// All-reduces a host tensor through a communicator whose tensors live on
// `device` (NCCL: the GPU), leaving the result in `t`.
template <class Comm>
void all_reduce_host(Comm& world, at::Tensor& t, const at::Device& device) {
  if (device.is_cpu()) {
    world.all_reduce(t).wait();
    return;
  }
  at::Tensor on = t.to(device);
  world.all_reduce(on).wait();
  t.copy_(on.cpu());
}

// This rank's intra-op threads (threads.hpp): every rank tells the world its
// host and affinity mask (one all_reduce at start-up), and counts the ranks
// on its host whose masks overlap its own.
template <class Comm>
thread_choice rank_threads(const config& c, const comm::launch_env& env, Comm& world,
                           const at::Device& device = at::kCPU) {
  constexpr int64_t words = 64;  // masks of up to 4,096 CPUs
  const std::vector<std::uint64_t> mine = affinity_words();
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const int64_t host_id = static_cast<int64_t>(std::hash<std::string>{}(host) >> 1);
  at::Tensor all = at::zeros({static_cast<int64_t>(env.world_size), 1 + words}, at::kLong);
  all[env.rank][0] = host_id;
  for (size_t w = 0; w < mine.size() && w < static_cast<size_t>(words); ++w)
    all[env.rank][static_cast<int64_t>(1 + w)] = static_cast<int64_t>(mine[w]);
  if (env.world_size > 1) all_reduce_host(world, all, device);
  long sharing = 0;
  const auto* a = all.data_ptr<int64_t>();
  for (int64_t r = 0; r < env.world_size; ++r) {
    if (a[r * (1 + words)] != host_id) continue;
    bool overlap = false;
    for (int64_t w = 0; w < words && !overlap; ++w) overlap = (a[r * (1 + words) + 1 + w] & a[env.rank * (1 + words) + 1 + w]) != 0;
    sharing += overlap;
  }
  thread_inputs in = thread_settings(c, env.local_world_size);
  in.cpus = count_cpus(mine);
  in.sharing = std::max(1L, sharing);
  return choose_threads_or_config_error(in);
}

// ---- the job -------------------------------------------------------------------------------------

struct run_options {
  std::function<void(const std::string&)> log = [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
};

// Everything that can be checked without the network: the config against
// the model and the launch, and the data. Throws config_error / data_error.
template <Model G>
struct prepared {
  typename G::dims dims;
  media_spec media;
  vocabulary vocab;  // bytes, or data.tokenizer's (vocabulary.hpp)
  std::shared_ptr<const hf_checkpoint> hf;      // model.path, its headers read once (hf.hpp)
  std::map<std::string, hf_source> hf_names;    // model.path: each parameter's tensor(s) in the checkpoint (checkpoint.hpp)
  std::optional<peft_adapter> peft;             // train.lora.path, read (peft.hpp)
  dataset train, eval;
  double load_seconds = 0;  // reading, tokenizing and laying out both manifests (media included)
  bool synthetic = false;
  std::string resume;  // the verified checkpoint folder to start from ("": a fresh start), see resume_point
};

// What the trainer writes, all inside train.output_dir (paths.hpp).
inline const std::vector<std::string>& output_names() {
  static const std::vector<std::string> names{"config.yaml", "metrics.jsonl", "loss_curve.png", "loss_curve.svg", "summary.json", "checkpoints",
                                              "checkpoints/latest", "hf", "hf/model.safetensors", "hf/config.json", "adapter",
                                              "adapter/adapter_model.safetensors", "adapter/adapter_config.json"};
  return names;
}

// On every rank, before any collective: the output folder's names stay inside
// it, and train.load_checkpoint_path resolves to a checkpoint that verifies
// (checkpoint.hpp choose_checkpoint; refusals are reported on rank 0).
// Throws config_error or checkpoint_error.
inline std::string resume_point(const config& c, int rank, const std::function<void(const std::string&)>& log) {
  const output_root out(c.train.output_dir);
  for (const auto& name : output_names()) (void)out.file(name);
  try {
    return choose_checkpoint(c.train.load_checkpoint_path, out.file("checkpoints").string(), [&](const std::string& m) {
      if (rank == 0) log("veomni-train: " + m);
    });
  } catch (const checkpoint_error& e) {
    throw checkpoint_error(std::string("train.load_checkpoint_path: ") + e.what());
  }
}

inline std::string seconds_text(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f s", s);
  return b;
}

template <Model G>
prepared<G> prepare(config& c, long world) {
  resolve(c, world);
  // a bad OMP_NUM_THREADS is named now, before any rank connects (the choice itself: rank_threads)
  (void)choose_threads_or_config_error(thread_settings(c, 1));
  prepared<G> p;
  p.dims = model_dims<G>(c);
  if (!c.model.path.empty()) {  // each parameter in the checkpoint with its shape, on every rank before any collective
    if constexpr (hf_family<G>) {
      try {
        p.hf = std::make_shared<const hf_checkpoint>(c.model.path);
        p.hf_names = hf_names<G>(*p.hf, p.dims, veomni::get<0>(p.dims).tie_word_embeddings);
      } catch (const hf_error& e) {
        throw config_error(std::string("model.path: ") + e.what());
      }
    }
  }
  if (!c.train.lora.path.empty()) {  // read on every rank before any collective; r and alpha unless the config sets them
    try {
      p.peft = read_peft_adapter(c.train.lora.path);
    } catch (const std::exception& e) {
      throw config_error(std::string("train.lora.path: ") + e.what());
    }
    if (c.train.lora.rank == 0) c.train.lora.rank = p.peft->config.r;
    if (c.train.lora.alpha == 0) c.train.lora.alpha = p.peft->config.lora_alpha;
    if (c.train.lora.rank != p.peft->config.r)
      throw config_error("train.lora.rank: " + std::to_string(c.train.lora.rank) + ", but the adapter at " + c.train.lora.path +
                         " has r = " + std::to_string(p.peft->config.r));
  }
  if (c.train.lora.rank > 0 && c.train.lora.alpha == 0) c.train.lora.alpha = 16;
  p.media = media_of<G>(p.dims, c);
  const long vocab = vocab_of<G>(p.dims);
  if (!c.data.tokenizer.empty()) {
    try {
      p.vocab = load_vocabulary(c.data.tokenizer);
    } catch (const std::exception& e) {  // text::chat_error, text::tokenizer_error, a JSON type error
      throw config_error(std::string("data.tokenizer: ") + e.what());
    }
  }
  // a model without media never sees the placeholders: a checkpoint's vocabulary (Llama 3: 128,256 ids, its
  // tokenizer's) needs no room for them; padding then reuses an id of the tokenizer (it is masked out)
  if (!c.data.tokenizer.empty() && !p.media.images && !p.media.audio && !p.media.generation) {
    if (p.vocab.pad >= p.vocab.image) p.vocab.pad = p.vocab.eos;
    p.vocab.size = p.vocab.image;
  }
  // synthetic data with the byte tokenizer uses ids below the vocabulary only; with a tokenizer.json its placeholders
  if (vocab < p.vocab.size && (c.data.type != "synthetic" || !c.data.tokenizer.empty()))
    throw config_error("model.lm.vocab: " + std::to_string(vocab) + " is smaller than the " +
                       std::to_string(p.vocab.size) + " ids the data needs (those of the tokenizer " + p.vocab.name +
                       (p.vocab.size > p.vocab.image ? ", and its placeholders for media" : "") + ")");
  if (c.data.type == "synthetic") {
    p.synthetic = true;
    if (c.data.synthetic_seq_len < 8) throw config_error("data.synthetic_seq_len: must be >= 8");
    return p;
  }
  if (c.data.manifest.empty()) throw config_error("data.manifest: empty (give a JSONL manifest, or data.type: synthetic)");
  const bool skip_bad = c.data.bad_samples == "skip";
  const auto t0 = std::chrono::steady_clock::now();
  p.train = load_manifest(c.data.manifest, p.media, c.data.max_seq_len, skip_bad, p.vocab);
  if (!c.data.eval_manifest.empty()) p.eval = load_manifest(c.data.eval_manifest, p.media, c.data.max_seq_len, skip_bad, p.vocab);
  p.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return p;
}

// ---- device, communication backend, precision ------------------------------------------------

// What train.device, train.comm_backend and train.mixed_precision choose.
struct run_device {
  at::Device device = at::kCPU;
  bool nccl = false;
  precision prec = precisions::fp32;
  std::string describe() const {
    return std::string(device.is_cpu() ? "cpu" : "cuda:" + std::to_string(device.index())) + ", " +
           (nccl ? "nccl" : "gloo") + ", " + (prec.param_bytes == 2 ? "bf16" : "fp32");
  }
};

// Checked on each rank before its mesh exists: a choice this build or
// machine cannot run is a config_error, and no rank connects.
inline run_device resolve_device(const config& c, const comm::launch_env& env) {
  run_device r;
  const bool cuda = c.train.device == "cuda";
  const std::string backend = c.train.comm_backend.empty() ? (cuda ? "nccl" : "gloo") : c.train.comm_backend;
  if (cuda) {
    if (!torch::cuda::is_available())
      throw config_error(std::string("train.device: cuda, but ") +
                         (torch_has_cuda ? "no CUDA device is visible to this process (the driver, CUDA_VISIBLE_DEVICES)"
                                         : "this build's LibTorch has no CUDA (a CPU build; build veomni against a CUDA "
                                           "LibTorch: docs/gpu.md)"));
    const auto n = static_cast<int>(torch::cuda::device_count());
    r.device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % n));
  }
  if (backend == "gloo" && cuda)
    throw config_error("train.comm_backend: gloo exchanges CPU tensors; train.device: cuda needs nccl (or leave it unset)");
  if (backend == "nccl" && !cuda) throw config_error("train.comm_backend: nccl needs train.device: cuda");
  if (backend == "nccl" && !trainer_has_nccl)
    throw config_error("train.comm_backend: nccl, but this veomni-train was built without it (it needs a CUDA LibTorch "
                       "and NCCL found by CMake: docs/gpu.md)");
  r.nccl = backend == "nccl";
  r.prec = c.train.mixed_precision == "bf16" ? precisions::bf16 : precisions::fp32;
  return r;
}

template <Model G, Recipe R, class Mesh>
int train_on(config c, const comm::launch_env& env, prepared<G> prep, const run_options& ro, const run_device& dev);

// Trains model G with recipe R on this rank's device and backend (resolve_device).
template <Model G, Recipe R>
int train_model(config c, const comm::launch_env& env, prepared<G> prep, const run_options& ro = {}) {
  const run_device dev = resolve_device(c, env);
#if VEOMNI_TRAIN_NCCL
  if (dev.nccl) return train_on<G, R, comm::nccl_mesh>(std::move(c), env, std::move(prep), ro, dev);
#endif
  return train_on<G, R, comm::gloo_mesh>(std::move(c), env, std::move(prep), ro, dev);
}

template <Model G, Recipe R, class Mesh>
int train_on(config c, const comm::launch_env& env, prepared<G> prep, const run_options& ro, const run_device& dev) {
  using clock = std::chrono::steady_clock;
  const auto& acc = c.train.accelerator;
  const mesh_shape shape{.dp_replicate = acc.dp_replicate_size, .dp_shard = acc.dp_shard_size, .sp = acc.ulysses_size,
                         .ep = acc.ep_size};
  const bool lead = env.rank == 0;
  const output_root out(c.train.output_dir);
  const std::string ckpt_dir = out.file("checkpoints").string();
  const std::string& resume = prep.resume;  // chosen and verified before any rank could write (resume_point)

  Mesh mesh(shape, env);
  const thread_choice threads = rank_threads(c, env, mesh.world(), dev.device);
  at::set_num_threads(threads.threads);
  ro.log("veomni-train: rank " + std::to_string(env.rank) + " uses " + std::to_string(threads.threads) +
         (threads.threads == 1 ? " thread (" : " threads (") + threads.why + ")");
  parallel::options popt;
  popt.checkpoint = c.train.activation_checkpointing;
  popt.aux_weight = c.train.aux_weight;
  popt.seed = static_cast<uint64_t>(c.train.seed);
  popt.prec = dev.prec;
  popt.device = dev.device;
  // LoRA (a recipe with Adapt<LoRA>): the base frozen, only the adapters train
  constexpr bool lora = plan<G, R>::count_if([](const plan_op& o) { return is_adapter_grad_role(o.tensor); }) > 0;
  if (lora != (c.train.lora.rank > 0))
    throw config_error(lora ? "train.lora.rank: this recipe adapts the model (Adapt<LoRA>): set train.lora.rank > 0"
                            : "train.lora: this model's recipe has no Adapt<LoRA>");
  unsigned targets = 0;  // train.lora.targets (resolve checked the names); 0: the recipe's
  for (const auto& t : lora_target_names(c.train.lora.targets))
    targets |= layer_kinds({t == "mlp" ? layer_kind::mlp : t == "experts" ? layer_kind::moe : layer_kind::attention});
  popt.adapters = {.rank = c.train.lora.rank, .targets = targets, .alpha = c.train.lora.alpha, .dropout = c.train.lora.dropout};
  const double lora_scale = lora ? c.train.lora.alpha / static_cast<double>(c.train.lora.rank) : 0.0;
  const double rss_before_model = resident_mib();
  parallel::parallel_model<G, R, Mesh> model(prep.dims, mesh, popt);
  adamw optim(model.parameters(), model.decay_masks(), {.lr = c.train.lr, .weight_decay = c.train.weight_decay});
  const lr_schedule sched{c.train.lr, c.train.lr_min, c.train.lr_warmup_steps, c.train.max_steps, c.train.lr_decay_style};

  train_state st;
  // a fresh start from a Hugging Face checkpoint; with LoRA also a resume (a checkpoint holds the adapters alone)
  if ((resume.empty() || lora) && !c.model.path.empty()) {
    const auto t0 = clock::now();
    load_hf_weights(*prep.hf, model, prep.hf_names);
    char b[512];
    // resident memory before the model was built and once its shard is loaded: what the shard cost this rank
    std::snprintf(b, sizeof b, "veomni-train: rank %d loaded its shard of %s in %.2f s (resident %.1f MiB before the model, %.1f MiB now, peak %.1f MiB)",
                  env.rank, c.model.path.c_str(), std::chrono::duration<double>(clock::now() - t0).count(), rss_before_model,
                  resident_mib(), peak_resident_mib());
    ro.log(b);
  }
  if (resume.empty() && prep.peft) {  // train.lora.path: the adapters to start from
    load_peft_adapter(*prep.peft, model, c.train.lora.path, peft_naming<G>(prep.dims));
    ro.log("veomni-train: rank " + std::to_string(env.rank) + " loaded the LoRA adapters of " + c.train.lora.path);
  }
  if (lora && lead) {
    char b[200];
    std::snprintf(b, sizeof b, "veomni-train: LoRA rank %ld, alpha %g, dropout %g: %lld trainable elements, the model frozen",
                  c.train.lora.rank, c.train.lora.alpha, c.train.lora.dropout, static_cast<long long>(model.local_numel()));
    ro.log(b);
  }
  if (!resume.empty()) {
    st = load_checkpoint(resume, model, optim);
    if (lead) ro.log("veomni-train: resumed from " + resume + " at step " + std::to_string(st.step));
    // resumed from this run's newest checkpoint (verified): the retention rule applies now, so a
    // run stopped by a full disk can go on with a smaller train.keep_checkpoints
    const std::filesystem::path from(resume);
    std::string latest;
    std::ifstream(std::filesystem::path(ckpt_dir) / "latest") >> latest;
    if (lead && c.train.save_checkpoints && from.filename() == latest &&
        std::filesystem::equivalent(from.parent_path(), ckpt_dir))
      for (const auto& line : prune_checkpoints(ckpt_dir, c.train.keep_checkpoints, latest, true)) ro.log("veomni-train: " + line);
  }
  if (lead) {
    std::ofstream(out.file("config.yaml")) << to_yaml(c);
  }
  // metrics.jsonl: keep the lines of steps before the resumed one
  loss_plot plot;
  plot.title = c.model.name + "  (" + out.dir().string() + ")";
  if (lead) {
    std::vector<std::string> keep;
    std::ifstream old(out.file("metrics.jsonl"));
    for (std::string line; std::getline(old, line);) {
      try {
        const auto j = nlohmann::json::parse(line);
        if (j.at("step").get<long>() <= st.step) {
          keep.push_back(line);
          const double x = j["step"].get<double>();
          if (j.contains("loss")) plot.train.emplace_back(x, j["loss"].get<double>());
          if (j.contains("eval_loss")) plot.eval.emplace_back(x, j["eval_loss"].get<double>());
          if (j.contains("lr")) plot.lr.emplace_back(x, j["lr"].get<double>());
        }
      } catch (const std::exception&) {
      }
    }
    std::string kept;
    for (const auto& l : keep) kept += l + "\n";
    write_text_atomically(out.file("metrics.jsonl").string(), kept);  // a kill now leaves the old file or this one
  }
  std::ofstream metrics;
  if (lead) metrics.open(out.file("metrics.jsonl"), std::ios::app);

  // MFU's yardstick: the sum over ranks of each rank's fp32 GEMM rate on the threads it uses
  double peak_sum = c.train.peak_flops_per_rank * static_cast<double>(env.world_size);
  if (c.train.peak_flops_per_rank <= 0) {
    at::Tensor p = at::full({1}, measure_peak_flops(dev.device, dev.prec.param_bytes == 2 ? at::kBFloat16 : at::kFloat), at::kDouble);
    if (env.world_size > 1) all_reduce_host(mesh.world(), p, dev.device);
    peak_sum = p.item<double>();
  }
  const double peak = peak_sum / static_cast<double>(env.world_size);
  const parallel::data_coords dc = parallel::data_coords_of(shape, env.rank);
  if (lead) {
    std::string plan_line = "veomni-train: " + c.model.name + " on " + std::to_string(env.world_size) + " rank(s), mesh dp_replicate " +
                            std::to_string(shape.dp_replicate) + " x dp_shard " + std::to_string(shape.dp_shard) + " x ulysses " +
                            std::to_string(shape.sp) + ", ep " + std::to_string(shape.ep) + "; " + std::to_string(model.local_numel()) +
                            " parameter elements on rank 0; " + dev.describe();
    ro.log(plan_line);
    // the plan in the run's precision (dtypes and bytes per op), for a micro-batch of max_seq_len tokens
    workload w;
    w.default_tokens = std::max(1L, (prep.synthetic ? c.data.synthetic_seq_len : c.data.max_seq_len) / shape.sp);
    w.adapters = popt.adapters.sizes();
    std::ofstream(out.file("plan.txt")) << describe<plan<G, R>>(prep.dims, shape, w, dev.prec);
    if (!prep.synthetic)
      ro.log("veomni-train: " + std::to_string(prep.train.samples.size()) + " training samples" +
             (prep.train.skipped.empty() ? "" : " (bad lines skipped: " + describe_skipped(prep.train.skipped) + ")") + ", " +
             std::to_string(prep.eval.samples.size()) + " held out" +
             (prep.eval.skipped.empty() ? "" : " (bad lines skipped: " + describe_skipped(prep.eval.skipped) + ")"));
    if (!prep.synthetic)
      ro.log("veomni-train: manifests read, tokenized (" + prep.vocab.name + ") and laid out in " + seconds_text(prep.load_seconds));
    ro.log("veomni-train: MFU against " + with_commas(peak / 1e6) + " MFLOP/s per rank (" +
           (c.train.peak_flops_per_rank > 0 ? std::string("train.peak_flops_per_rank")
                                            : "fp32 GEMM measured by each rank on its own threads" +
                                                  std::string(env.world_size > 1 ? ", mean over ranks" : "")) +
           ")");
  }

  sample_order order(prep.synthetic ? 1 : static_cast<int64_t>(prep.train.samples.size()), static_cast<uint64_t>(c.train.seed));
  std::vector<parallel::sample> synth;

  auto save = [&] {
    const std::map<std::string, std::string> info{{"model", c.model.name}, {"world", std::to_string(env.world_size)}};
    st.adam_steps = optim.steps();
    if (lead) begin_checkpoint(ckpt_dir, st.step);
    mesh.world().barrier().wait();
    const file_sum mine = save_shard(ckpt_dir, env.rank, model, optim, st, info);
    // every rank file's size and CRC-32, for rank 0's meta.json
    at::Tensor sums = at::zeros({2 * static_cast<int64_t>(env.world_size)}, at::kLong);
    sums[2 * env.rank] = static_cast<int64_t>(mine.bytes);
    sums[2 * env.rank + 1] = static_cast<int64_t>(mine.crc32);
    all_reduce_host(mesh.world(), sums, dev.device);
    if (lead) {
      std::vector<file_sum> files(static_cast<size_t>(env.world_size));
      for (size_t r = 0; r < files.size(); ++r)
        files[r] = {static_cast<uint64_t>(sums[static_cast<int64_t>(2 * r)].item<int64_t>()),
                    static_cast<uint32_t>(sums[static_cast<int64_t>(2 * r + 1)].item<int64_t>())};
      const nlohmann::json meta = {{"step", st.step},
                                   {"data_cursor", st.data_cursor},
                                   {"model", c.model.name},
                                   {"world_size", env.world_size},
                                   {"mesh", {{"dp_replicate", shape.dp_replicate}, {"dp_shard", shape.dp_shard},
                                             {"ulysses", shape.sp}, {"ep", shape.ep}}}};
      ro.log("veomni-train: saved " + finish_checkpoint(ckpt_dir, st, meta, files));
      for (const auto& line : prune_checkpoints(ckpt_dir, c.train.keep_checkpoints, step_dir_name(st.step)))
        ro.log("veomni-train: " + line);
    }
    mesh.world().barrier().wait();
  };
  // whole parameters on every rank, LoRA's adapters merged in
  auto whole_model = [&] {
    auto all = consolidate<G>(prep.dims, model, mesh);
    if (lora) merge_adapters(all, whole_adapters(model, mesh), lora_scale);
    return all;
  };
  auto run_eval = [&]() -> std::optional<eval_result> {
    if (prep.eval.samples.empty()) return std::nullopt;
    const auto all = whole_model();
    if (!lead) return std::nullopt;
    named_params<G> whole(prep.dims, all);
    return evaluate<G>(prep.dims, whole, prep.eval, prep.vocab);
  };

  const auto t_start = clock::now();
  const long first = st.step;
  step_record last;
  while (st.step < c.train.max_steps) {
    const auto t0 = clock::now();
    // the step's global batch
    std::vector<const parallel::sample*> batch;
    if (prep.synthetic) {
      synth.clear();
      for (long i = 0; i < c.train.global_batch_size; ++i)
        synth.push_back(synthetic_sample(st.data_cursor + i, static_cast<uint64_t>(c.train.seed), c.data.synthetic_seq_len,
                                         vocab_of<G>(prep.dims), prep.media, prep.vocab));
      for (const auto& s : synth) batch.push_back(&s);
    } else {
      for (long i = 0; i < c.train.global_batch_size; ++i)
        batch.push_back(&prep.train.samples[static_cast<size_t>(order.at(st.data_cursor + i))]);
    }
    st.data_cursor += c.train.global_batch_size;
    typename parallel::parallel_model<G, R, Mesh>::accumulation accum;
    accum.global_counts = target_counts(batch);
    const auto micro = micro_batches(batch, dc.data_index, dc.data_size, c.train.micro_batch_size, c.data.token_budget);
    double data_secs = std::chrono::duration<double>(clock::now() - t0).count();
    accum.aux_scale = 1.0 / static_cast<double>(micro.size());
    model.zero_grad();
    double total = 0, aux = 0;
    std::map<std::string, double> terms;
    for (const auto& idx : micro) {
      const auto tp = clock::now();
      nn::batch b;
      if (idx.empty()) {
        b = parallel::slice_sequence(empty_micro_batch(shape.sp, prep.vocab), dc.sp_index, dc.sp_size);
      } else {
        std::vector<const parallel::sample*> mine;
        for (size_t i : idx) mine.push_back(batch[i]);
        b = parallel::slice_sequence(parallel::pack(mine, shape.sp, prep.vocab.image, prep.vocab.audio), dc.sp_index,
                                     dc.sp_size);
      }
      data_secs += std::chrono::duration<double>(clock::now() - tp).count();
      const auto fb = model.forward_backward(b, accum);
      total += fb.total;
      aux += fb.aux;
      for (const auto& [name, v] : fb.terms) terms[name] += v;
    }
    const double lr = sched.at(st.step);
    const double norm = model.optimizer_step([&](double n) { optim.step(lr, clip_scale(n, c.train.max_grad_norm)); });
    ++st.step;
    const double secs = std::chrono::duration<double>(clock::now() - t0).count();

    step_record r;
    r.step = st.step;
    r.total = c.train.max_steps;
    r.loss = terms["lm"];
    for (const auto& [name, v] : terms)
      if (name != "lm") r.other_losses[name] = v;
    r.aux_loss = aux;
    r.has_aux = has_experts<G>();
    r.total_loss = total;
    r.grad_norm = norm;
    r.lr = lr;
    for (const auto* s : batch) r.tokens += static_cast<double>(s->tokens.size());
    r.seconds = secs;
    r.data_seconds = data_secs;
    r.micro_batches = static_cast<long>(micro.size());
    r.mfu = step_flops<G>(prep.dims, batch, prep.media, prep.vocab) / (secs * peak_sum);
    const double elapsed = std::chrono::duration<double>(clock::now() - t_start).count();
    r.eta_s = elapsed / static_cast<double>(st.step - first) * static_cast<double>(c.train.max_steps - st.step);
    auto j = to_json(r);
    const bool eval_now = c.train.eval_steps > 0 && st.step % c.train.eval_steps == 0 && st.step < c.train.max_steps;
    if (eval_now) {
      if (auto e = run_eval()) {
        j["eval_loss"] = e->loss;
        j["eval_token_accuracy"] = e->token_accuracy;
        j["eval_exact_match"] = e->exact_match;
        plot.eval.emplace_back(static_cast<double>(st.step), e->loss);
        char b[160];
        std::snprintf(b, sizeof b, "eval at step %ld: loss %.4f | answer-token accuracy %.1f%% | exact match %.1f%%", st.step,
                      e->loss, 100 * e->token_accuracy, 100 * e->exact_match);
        ro.log(b);
      }
    }
    if (lead) {
      metrics << j.dump() << "\n" << std::flush;
      plot.train.emplace_back(static_cast<double>(st.step), r.loss);
      plot.lr.emplace_back(static_cast<double>(st.step), lr);
      if (st.step % c.train.log_steps == 0 || st.step == c.train.max_steps || st.step == first + 1) ro.log(progress_line(r));
    }
    if (c.train.save_checkpoints && c.train.save_steps > 0 && st.step % c.train.save_steps == 0 && st.step < c.train.max_steps)
      save();
    last = r;
  }
  if (c.train.save_checkpoints) save();
  // held-out evaluation and export of the final model
  nlohmann::ordered_json summary = {{"steps", st.step}, {"final_loss", last.loss}};
  for (const auto& [name, v] : last.other_losses) summary["final_" + name + "_loss"] = v;
  summary["final_aux_loss"] = last.aux_loss;
  summary["final_total_loss"] = last.total_loss;
  summary["losses"] = "loss: the language-model loss alone (mean cross-entropy over the text target tokens)" +
                      std::string(last.other_losses.empty() ? "" : "; <term>_loss: the model's other token losses") +
                      "; aux_loss: the MoE load-balancing loss, unweighted; total_loss: what is minimised, the token losses + "
                      "train.aux_weight * aux_loss";
  summary["threads_per_rank_0"] = threads.threads;
  summary["threads_why"] = threads.why;
  summary["peak_flops_per_rank"] = peak;
  if (!prep.synthetic) {  // data.bad_samples: skip — what was left out, by reason
    summary["data_load_s"] = prep.load_seconds;
    summary["skipped_samples"] = prep.train.skipped;
    summary["eval_skipped_samples"] = prep.eval.skipped;
  }
  if (auto e = run_eval()) {
    char b[200];
    std::snprintf(b, sizeof b, "held-out (%ld samples): loss %.4f | answer-token accuracy %.1f%% | exact match %.1f%%", e->samples,
                  e->loss, 100 * e->token_accuracy, 100 * e->exact_match);
    std::string line = b;
    if (e->code_accuracy >= 0) {
      std::snprintf(b, sizeof b, " | image-code accuracy %.1f%%", 100 * e->code_accuracy);
      line += b;
    }
    ro.log(line);
    std::string kinds = "held-out exact match by kind:";
    nlohmann::ordered_json by_kind;
    for (const auto& [k, v] : e->by_kind) {
      char kb[96];
      std::snprintf(kb, sizeof kb, " %s %ld/%ld", k.c_str(), v.first, v.second);
      kinds += kb;
      by_kind[k] = {{"exact", v.first}, {"samples", v.second}};
    }
    ro.log(kinds);
    plot.eval.emplace_back(static_cast<double>(st.step), e->loss);
    summary["eval"] = {{"loss", e->loss},           {"token_accuracy", e->token_accuracy}, {"exact_match", e->exact_match},
                       {"code_accuracy", e->code_accuracy}, {"samples", e->samples},     {"by_kind", by_kind}};
  }
  if (lora) {  // the adapters in PEFT's format (gathered on every rank: experts' may be split)
    const auto named = peft_tensors(whole_adapters(model, mesh), peft_naming<G>(prep.dims));
    if (lead) {
      write_peft_adapter(out.file("adapter"), named,
                         {.r = c.train.lora.rank, .lora_alpha = c.train.lora.alpha, .lora_dropout = c.train.lora.dropout,
                          .target_modules = {}, .base_model = c.model.path});
      ro.log("veomni-train: exported the LoRA adapters to " + out.file("adapter").string() + " (PEFT's format)");
    }
  }
  // the model: with LoRA only when train.lora.merge_on_export asks (the base did not change)
  if (c.train.export_safetensors && (!lora || c.train.lora.merge_on_export)) {
    const auto all = whole_model();
    if (lead) {
      if (c.model.path.empty()) {
        export_model<G>(out.file("hf").string(), prep.dims, c.model.name, all, prep.vocab);
        ro.log("veomni-train: exported " + out.file("hf/model.safetensors").string());
      } else {  // as the checkpoint came: its files, names, index and config.json; train.export_dtype or its dtype
        const hf_checkpoint& like = *prep.hf;
        const hf_export ex = hf_tensors<G>(prep.dims, all);
        const std::string dtype = c.train.export_dtype.empty() ? ""
                                  : c.train.export_dtype == "float32" ? "F32" : c.train.export_dtype == "bfloat16" ? "BF16" : "F16";
        write_hf_like(out.file("hf"), like, ex.tensors, dtype);
        for (const std::string& f : prep.vocab.files)
          std::filesystem::copy_file(f, out.file("hf") / std::filesystem::path(f).filename(), std::filesystem::copy_options::overwrite_existing);
        ro.log("veomni-train: exported " + out.file("hf").string() + " in the layout of " + c.model.path);
      }
    }
  }
  if (lead) {
    std::ofstream(out.file("summary.json")) << summary.dump(2) << "\n";
    std::string drawn = "loss_curve.png, loss_curve.svg, ";
    try {  // last: PLplot may end the process on an error it cannot recover from (plot.hpp)
      write_loss_plot(plot, out.file("loss_curve.png").string(), out.file("loss_curve.svg").string());
    } catch (const plot_error& e) {  // the model is the product: a missing plot is reported, not fatal
      ro.log(std::string("veomni-train: warning: loss curve not drawn: ") + e.what());
      drawn.clear();
    }
    ro.log("veomni-train: outputs in " + out.dir().string() + " (metrics.jsonl, " + drawn + "config.yaml, summary.json" +
           (c.train.save_checkpoints ? ", checkpoints/" : "") + (lora ? ", adapter/" : "") +
           (c.train.export_safetensors && (!lora || c.train.lora.merge_on_export) ? ", hf/" : "") + ")");
  }
  {  // each rank's high-water mark of resident memory over the whole run (loading, steps, export)
    char b[160];
    std::snprintf(b, sizeof b, "veomni-train: rank %d peak resident %.1f MiB", env.rank, peak_resident_mib());
    ro.log(b);
  }
  mesh.world().barrier().wait();
  return 0;
}

}  // namespace veomni::train
