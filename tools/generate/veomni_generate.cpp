// veomni-generate: text from a language model that veomni-train trained,
// decoded with a KV cache (nn/generate.hpp) and streamed as it comes.
//
//   veomni-generate outputs/dense_lm --prompt "capital of France?"
//   veomni-generate outputs/qwen --messages chat.json --temperature 0.7 --top-p 0.9 --seed 1
//   veomni-generate configs/dense_lm.yaml --hf outputs/dense_lm/hf --chat
//
// RUN_DIR_OR_CONFIG: a run's output folder (its config.yaml, checkpoints/,
// hf/) or a config (the run is its train.output_dir). Weights: --checkpoint
// PATH or `latest` (a training checkpoint of any world size, read whole as a
// world-1 load reads it), or --hf DIR (an export's model.safetensors); by
// default the run's latest checkpoint, else its hf/. Only the language model
// ("lm") runs: prompts are text (media placeholders are out of scope).
//
// Tokenizer: the run's. With no data.tokenizer, bytes: a prompt is bos +
// its bytes (as the trainer lays out a manifest prompt), and eos stops. With
// data.tokenizer (a tokenizer.json, or its folder): the trainer's vocabulary
// (train/vocabulary.hpp: bos when the tokenizer has one, eos), --messages
// rendered by tokenizer_config.json's chat template with
// add_generation_prompt = true, and eos or the template's end of turn stop.
// A tokenizer without a usable chat template serves --prompt; --messages and
// --chat are refused, naming why (train::text_vocabulary::chat_problem).
//
// Output: the new text on stdout, whole UTF-8 characters only (a character
// split over tokens waits for its last byte); what was loaded, and the
// speed, on stderr.
//
// Exit codes: 0 done; 2 bad input (arguments, config, a missing or damaged
// checkpoint, weights that do not fit the config, a tokenizer that cannot be
// loaded); 1 a failure while generating.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include <veomni/nn/generate.hpp>
#include <veomni/train/trainer.hpp>

namespace fs = std::filesystem;
using namespace veomni;

namespace {

// Bad input: exit 2.
struct input_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct options {
  std::string run, checkpoint, hf, prompt, messages;
  bool has_prompt = false, chat = false, no_stream = false;
  long max_new_tokens = 256;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
};

void note(const std::string& s) { std::fprintf(stderr, "veomni-generate: %s\n", s.c_str()); }

// ---- the run ------------------------------------------------------------------------------

struct run_files {
  train::config c;
  fs::path out;  // the run's output folder
};

run_files locate(const std::string& arg) {
  run_files r;
  std::error_code ec;
  if (fs::is_directory(arg, ec)) {
    const fs::path cfg = fs::path(arg) / "config.yaml";
    if (!fs::is_regular_file(cfg, ec))
      throw input_error(arg + ": no config.yaml in this folder (give a run's train.output_dir, or its config)");
    r.c = train::load_config(cfg.string());
    r.out = arg;  // the folder given, wherever the run first wrote it
  } else {
    r.c = train::load_config(arg);
    r.out = r.c.train.output_dir;
  }
  return r;
}

// ---- weights ----------------------------------------------------------------------------------

using named = std::map<std::string, at::Tensor>;

// "lm.model.layers.7.mlp.up_proj.weight" -> 7; -1 for a name outside the lm's layers.
long lm_layer_of(const std::string& name) {
  static const std::regex layer(R"(lm\.model\.layers\.([0-9]+)\..*)");
  std::smatch m;
  return std::regex_match(name, m, layer) ? std::stol(m[1].str()) : -1;
}

// The parameters `specs` of a training checkpoint, whole. Each rank file
// holds pieces "param:<name>:<begin>" of what its rank held; any mesh's
// pieces cover every parameter, and these are copied together (the AdamW
// moments are not read). The checkpoint is verified first (sizes, CRC-32).
named checkpoint_weights(const std::string& dir, const std::vector<nn::param_spec>& specs, const std::string& model,
                         long layers) {
  train::verify_checkpoint(dir);
  const train::folder_lock reading(dir, false);
  std::vector<train::safetensors_file> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") files.emplace_back(e.path().string());
  struct stored {
    std::size_t file;
    int64_t begin, end;
    std::string key;
  };
  std::map<std::string, std::vector<stored>> index;
  for (std::size_t f = 0; f < files.size(); ++f) {
    const auto& meta = files[f].metadata();
    if (const auto it = meta.find("model"); it != meta.end() && it->second != model)
      throw input_error("config mismatch: " + files[f].path() + " holds model '" + it->second + "', the config's model.name is '" +
                        model + "'");
    for (const auto& k : files[f].names()) {
      if (k.rfind("param:", 0) != 0) continue;
      const auto colon = k.rfind(':');
      const std::string name = k.substr(6, colon - 6);
      if (const long l = lm_layer_of(name); l >= layers)
        throw input_error("config mismatch: " + dir + " holds '" + name + "', but the config's model has " + std::to_string(layers) +
                          " layers (model.lm.layers)");
      const int64_t b = std::stoll(k.substr(colon + 1));
      index[name].push_back({f, b, b + files[f].entries().at(k).shape.at(0), k});
    }
  }
  named out;
  for (const auto& s : specs) {
    const auto it = index.find(s.name);
    if (it == index.end()) throw input_error("config mismatch: " + dir + " holds no parameter '" + s.name + "'");
    at::Tensor whole = at::empty({s.numel()}), seen = at::zeros({s.numel()}, at::kBool);
    for (const stored& p : it->second) {
      if (p.end > s.numel())
        throw input_error("config mismatch: " + dir + " holds elements [" + std::to_string(p.begin) + ", " + std::to_string(p.end) +
                          ") of '" + s.name + "', which has " + std::to_string(s.numel()) + " in the config's model " +
                          at::str(at::IntArrayRef(s.shape)) + " (the model.* dims differ)");
      whole.narrow(0, p.begin, p.end - p.begin).copy_(files[p.file].read(p.key));
      seen.narrow(0, p.begin, p.end - p.begin).fill_(true);
    }
    if (!seen.all().item<bool>())
      throw input_error("config mismatch: " + dir + " does not hold every element of '" + s.name + "' " +
                        at::str(at::IntArrayRef(s.shape)) + " (the model.* dims differ)");
    out[s.name] = whole.view(s.shape);
  }
  return out;
}

// The language model's tensors of an export, by their training names, after
// config.json is checked against the config's dims. dense_lm's and moe_lm's
// export is a Hugging Face checkpoint (one file or shards, F32/BF16/F16, one
// tensor per expert: train/hf.hpp and checkpoint.hpp's hf_layout read it);
// the others' is veomni's own (model.safetensors, config.json with each
// node's dims).
template <Model G, class D>
named hf_weights(const fs::path& dir, const std::string& model, D lm) {
  named out;
  if constexpr (train::hf_family<G>) {
    try {
      const train::hf_checkpoint ck(dir);
      const std::string cfg = (dir / "config.json").string();
      const train::hf_model m = train::read_hf_model(ck.config(), cfg);
      constexpr bool moe = std::is_same_v<G, models::moe_lm>;
      if (m.moe != moe)
        throw input_error("config mismatch: " + cfg + " is a " + m.architecture + ", the config's model.name is " + model);
      D h;
      if constexpr (moe)
        h = m.moe_dims;
      else
        h = m.dims;
      std::vector<std::pair<std::string, std::pair<long, long>>> want{
          {"vocab_size", {h.vocab, lm.vocab}},          {"hidden_size", {h.hidden, lm.hidden}},
          {"num_hidden_layers", {h.layers, lm.layers}}, {"num_attention_heads", {h.heads, lm.heads}},
          {"num_key_value_heads", {h.kv_heads, lm.kv_heads}}, {"head_dim", {h.head_dim, lm.head_dim}},
          {"tie_word_embeddings", {h.tie_word_embeddings, lm.tie_word_embeddings}},
          {"q/k/v biases (Qwen2)", {h.qkv_bias, lm.qkv_bias}}, {"q/k norms (Qwen3)", {h.qk_norm, lm.qk_norm}}};
      if constexpr (moe)
        want.insert(want.end(), {{"num_experts", {h.experts, lm.experts}}, {"num_experts_per_tok", {h.top_k, lm.top_k}},
                                 {"moe_intermediate_size", {h.expert_ffn, lm.expert_ffn}},
                                 {"norm_topk_prob", {h.norm_topk_prob, lm.norm_topk_prob}}});
      else
        want.push_back({"intermediate_size", {h.ffn, lm.ffn}});
      for (const auto& [k, v] : want)
        if (v.first != v.second)
          throw input_error("config mismatch: " + cfg + " says " + k + " = " + std::to_string(v.first) +
                            ", the config's model gives " + std::to_string(v.second));
      typename G::dims d;
      veomni::get<0>(d) = lm;
      (void)train::hf_names<G>(ck, d, lm.tie_word_embeddings);  // each tensor there, with its shape, and no other
      for (const auto& [spec, src] : train::hf_layout<G>(d)) {
        at::Tensor x = at::empty(spec.shape, at::kFloat);
        src.read(ck, 0, spec.numel(), x.data_ptr<float>());
        out[spec.name] = x;
      }
    } catch (const train::hf_error& e) {
      throw input_error(e.what());
    }
    return out;
  } else {
    const fs::path file = dir / "model.safetensors", cfg = dir / "config.json";
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) throw input_error(dir.string() + ": no model.safetensors (an export of veomni-train, train.export_safetensors)");
    if (fs::is_regular_file(cfg, ec)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(std::ifstream(cfg));
      } catch (const std::exception& e) {
        throw input_error(cfg.string() + ": malformed JSON: " + e.what());
      }
      const std::string type = j.value("model_type", "");
      if (type != "veomni_" + model)
        throw input_error("config mismatch: " + cfg.string() + " is a '" + type + "' model, the config's model.name is '" + model + "'");
      if (!j.contains("lm") || !j["lm"].is_object()) throw input_error(cfg.string() + ": no \"lm\" dims");
      for (auto& [k, p] : train::detail::dim_fields(lm)) {
        const nlohmann::json& x = j["lm"].contains(k) ? j["lm"][k] : nlohmann::json();
        if (x.is_number_integer() && x.get<long>() != *p)
          throw input_error("config mismatch: " + cfg.string() + " says " + k + " = " + std::to_string(x.get<long>()) +
                            ", the config's model gives " + std::to_string(*p));
      }
    }
    train::safetensors_file f(file.string());
    for (const auto& name : f.names()) {
      if (name.rfind("lm.", 0) != 0) continue;
      if (const long l = lm_layer_of(name); l >= lm.layers)
        throw input_error("config mismatch: " + file.string() + " holds '" + name + "', but the config's model has " +
                          std::to_string(lm.layers) + " layers (model.lm.layers)");
      out[name] = f.read(name);
    }
    return out;
  }
}

// ---- the tokenizer ------------------------------------------------------------------------------

struct codec {
  std::string name;
  std::vector<int64_t> stop_ids;
  std::function<std::vector<int64_t>(const std::string&)> prompt;           // --prompt
  std::function<std::vector<int64_t>(const nlohmann::ordered_json&)> conversation;  // --messages, --chat: add_generation_prompt
  std::function<std::string(int64_t)> token_bytes;                           // a new id -> its bytes
  bool remembers = false;  // --chat keeps the conversation (a chat template); else each line stands alone
  std::string no_chat;     // non-empty: why --messages and --chat cannot run (a tokenizer without a usable chat template)
  int64_t ids = 0;         // the ids the model's vocabulary must hold
};

// The content of a conversation of one user turn (what a byte-tokenizer model was trained on).
std::string single_user_turn(const nlohmann::ordered_json& messages) {
  if (!messages.is_array() || messages.size() != 1 || !messages[0].is_object() || messages[0].value("role", "") != "user" ||
      !messages[0].contains("content") || !messages[0]["content"].is_string())
    throw input_error("the byte tokenizer has no chat template: --messages must hold exactly one {\"role\": \"user\", \"content\": ...} "
                      "(or give data.tokenizer a tokenizer with one)");
  return messages[0]["content"].get<std::string>();
}

codec byte_codec() {
  using tok = train::byte_tokenizer;
  codec c;
  c.name = "bytes";
  c.stop_ids = {tok::eos};
  c.prompt = [](const std::string& s) {
    std::vector<int64_t> ids{tok::bos};
    for (int64_t t : tok::encode(s)) ids.push_back(t);
    return ids;
  };
  c.conversation = [p = c.prompt](const nlohmann::ordered_json& m) { return p(single_user_turn(m)); };
  c.token_bytes = [](int64_t t) { return tok::decode({t}); };
  c.ids = tok::vocab_size;
  return c;
}

// data.tokenizer, as given, or beside the export (hf/ holds a copy of the tokenizer's files).
std::string tokenizer_path(const run_files& r) {
  const std::string& given = r.c.data.tokenizer;
  std::error_code ec;
  if (fs::exists(given, ec)) return given;
  if (fs::is_regular_file(r.out / "hf" / "tokenizer.json", ec)) {
    note("data.tokenizer " + given + " is not there; using the copy in " + (r.out / "hf").string());
    return (r.out / "hf").string();
  }
  return given;  // load_vocabulary says what is missing
}

codec text_codec(const run_files& r) {
  const std::string path = tokenizer_path(r);
  train::text_vocabulary tv;
  try {  // one load: the vocabulary, the tokenizer, the chat template (or why there is none)
    tv = train::load_text(path);
  } catch (const std::exception& e) {  // text::chat_error, tokenizer errors, jinja::error, JSON and file errors
    throw input_error(std::string("data.tokenizer: ") + e.what());
  }
  const train::vocabulary& v = tv.vocab;
  const std::shared_ptr<const text::tokenizer> tok = tv.tokenizer;
  const std::shared_ptr<const text::chat_template> chat = tv.chat;
  codec c;
  c.name = v.name;
  c.ids = v.image;  // the tokenizer's own ids: generation reads no media, so no placeholders
  c.stop_ids = {v.eos};
  if (chat)
    if (const auto id = tok->token_to_id(chat->format().end_of_turn); id && *id != v.eos) c.stop_ids.push_back(*id);
  const int64_t bos = v.bos;
  auto encode = v.encode;
  c.prompt = [bos, encode](const std::string& s) {  // as the trainer lays out a manifest prompt
    std::vector<int64_t> ids;
    if (bos >= 0) ids.push_back(bos);
    for (int64_t t : encode(s)) ids.push_back(t);
    return ids;
  };
  if (chat) {
    c.remembers = true;
    c.conversation = [chat, tok](const nlohmann::ordered_json& messages) {
      std::string rendered;
      try {
        rendered = chat->render(messages, /*add_generation_prompt=*/true);
      } catch (const std::runtime_error& e) {
        throw input_error(std::string("chat template: ") + e.what());
      }
      return tok->encode(rendered);
    };
  } else {
    c.no_chat = tv.chat_problem.empty() ? v.name + " has no usable chat template" : tv.chat_problem;
    c.conversation = [why = c.no_chat](const nlohmann::ordered_json&) -> std::vector<int64_t> {
      throw input_error("--messages and --chat need a chat template: " + why + " (use --prompt)");
    };
  }
  const int64_t own = tok->vocab_size();  // the placeholders past it decode to nothing
  c.token_bytes = [tok, own](int64_t t) { return t >= 0 && t < own ? tok->decode_bytes({t}) : std::string(); };
  return c;
}

// ---- streaming ----------------------------------------------------------------------------------

// The longest prefix of s that ends on a whole UTF-8 character (bytes that
// cannot start or continue one are let through). Reads only the last 4 bytes.
std::size_t whole_characters(std::string_view s) {
  const std::size_t n = s.size();
  for (std::size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    return back >= len ? n : n - back;
  }
  return n;
}

// The new text, one token's bytes at a time: each add() appends them and,
// live, prints what has become whole characters (all_[printed_, ready): the
// pending bytes of a character split over tokens wait for the rest). O(bytes
// of the token) a step, not a decode of everything so far.
class text_out {
 public:
  explicit text_out(bool live) : live_(live) {}
  void add(const std::string& bytes) {
    all_ += bytes;
    if (!live_) return;
    const std::size_t ready = whole_characters(all_);
    if (ready > printed_) {
      std::fwrite(all_.data() + printed_, 1, ready - printed_, stdout);
      std::fflush(stdout);
      printed_ = ready;
    }
  }
  // Prints what is left (a character cut off by the end, as it is) and a newline; the whole text.
  const std::string& finish() {
    if (all_.size() > printed_) std::fwrite(all_.data() + printed_, 1, all_.size() - printed_, stdout);
    printed_ = all_.size();
    std::fputc('\n', stdout);
    std::fflush(stdout);
    return all_;
  }

 private:
  bool live_;
  std::string all_;  // the bytes of every new token so far
  std::size_t printed_ = 0;
};

// ---- the job -------------------------------------------------------------------------------------

template <Model G, nn::language_model C>
int generate_text(const run_files& r, const options& o) {
  const auto dims = train::model_dims<G>(r.c);
  const auto& lm = veomni::get<G::index_of("lm")>(dims);
  std::vector<nn::param_spec> specs = nn::impl<C>::root_specs(lm, "lm.");
  for (int64_t b = 0; b < lm.layers; ++b)
    for (auto& s : nn::impl<C>::block_specs(lm, b, "lm.")) specs.push_back(std::move(s));

  // the weights
  named w;
  std::string from;
  const fs::path ckpt_dir = r.out / "checkpoints";
  std::error_code ec;
  std::string checkpoint = o.checkpoint;
  if (o.hf.empty() && checkpoint.empty())  // the run's newest checkpoint, else its export
    checkpoint = fs::exists(ckpt_dir / "latest", ec) || !fs::is_regular_file(r.out / "hf" / "config.json", ec) ? "latest" : "";
  if (!o.hf.empty()) {
    w = hf_weights<G>(o.hf, r.c.model.name, lm);
    from = o.hf;
  } else if (!checkpoint.empty()) {
    std::string dir = checkpoint;
    if (checkpoint == "latest") {
      dir = train::choose_checkpoint("auto", ckpt_dir.string(), note);
      if (dir.empty())
        throw input_error("no checkpoint in " + ckpt_dir.string() + " (and no export in " + (r.out / "hf").string() +
                          "): give --checkpoint PATH or --hf DIR");
    }
    w = checkpoint_weights(dir, specs, r.c.model.name, lm.layers);
    from = dir;
  } else {
    w = hf_weights<G>(r.out / "hf", r.c.model.name, lm);
    from = (r.out / "hf").string();
  }
  nn::lm_weights weights;
  try {
    weights = nn::weights_by_name<C>(lm, w, "lm.");
  } catch (const c10::Error& e) {
    throw input_error("config mismatch: " + from + ": " + e.what_without_backtrace());
  }
  nn::decoder<C> dec(lm, std::move(weights));

  // the tokenizer
  const codec cd = r.c.data.tokenizer.empty() ? byte_codec() : text_codec(r);
  if (lm.vocab < cd.ids)
    throw input_error("config mismatch: model.lm.vocab = " + std::to_string(lm.vocab) + " cannot hold the " + std::to_string(cd.ids) +
                      " ids of the tokenizer (" + cd.name + ")");
  note(r.c.model.name + " from " + from + "; tokenizer " + cd.name);
  if (!o.has_prompt && !cd.no_chat.empty())
    throw input_error(std::string(o.chat ? "--chat" : "--messages") + " needs a chat template: " + cd.no_chat + " (use --prompt)");

  nn::generate_options go;
  go.max_new_tokens = o.max_new_tokens;
  go.stop_ids = cd.stop_ids;
  go.sample = {.temperature = o.temperature, .top_p = o.top_p, .seed = o.seed};
  auto answer = [&](const std::vector<int64_t>& prompt, bool reuse) {
    for (int64_t t : prompt)
      if (t < 0 || t >= lm.vocab)
        throw input_error("config mismatch: the tokenizer gives id " + std::to_string(t) + ", past model.lm.vocab = " + std::to_string(lm.vocab));
    text_out out(!o.no_stream);
    go.reuse_cache = reuse;
    go.on_token = [&](int64_t t) {  // every new token comes here: out holds the whole text
      out.add(cd.token_bytes(t));
      return true;
    };
    const auto t0 = std::chrono::steady_clock::now();
    const nn::generation g = nn::generate(dec, prompt, go);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string text = out.finish();
    char b[200];
    std::snprintf(b, sizeof b, "%zu prompt tokens, %zu new (%s) in %.3f s, %.1f tokens/s", prompt.size(), g.tokens.size(),
                  g.reason == nn::generation::stop_reason::stop_id ? "stop id" : "max new tokens", secs,
                  static_cast<double>(g.tokens.size()) / std::max(secs, 1e-9));
    note(b);
    return text;
  };

  if (o.has_prompt) {
    answer(cd.prompt(o.prompt), false);
  } else if (!o.messages.empty()) {
    nlohmann::ordered_json m;  // key order kept: the template may print a message's fields
    try {
      m = nlohmann::ordered_json::parse(std::ifstream(o.messages));
    } catch (const std::exception& e) {
      throw input_error(o.messages + ": not a JSON list of {\"role\", \"content\"}: " + e.what());
    }
    bool ok = m.is_array() && !m.empty();
    for (const auto& x : m)
      ok = ok && x.is_object() && x.contains("role") && x["role"].is_string() && x.contains("content") && x["content"].is_string();
    if (!ok) throw input_error(o.messages + ": expected a non-empty JSON list of {\"role\": string, \"content\": string}");
    answer(cd.conversation(m), false);
  } else {  // --chat: one user turn a line
    nlohmann::ordered_json m = nlohmann::ordered_json::array();
    for (std::string line;;) {
      std::fputs("> ", stderr);
      if (!std::getline(std::cin, line)) break;
      if (line.empty()) continue;
      if (!cd.remembers) {
        answer(cd.prompt(line), false);
        continue;
      }
      m.push_back({{"role", "user"}, {"content", line}});
      const std::string said = answer(cd.conversation(m), true);
      m.push_back({{"role", "assistant"}, {"content", said}});
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"veomni-generate: text from a model veomni-train trained, with a KV cache"};
  app.add_option("run", o.run, "the run's output folder (train.output_dir), or its config")->required();
  app.add_option("--checkpoint", o.checkpoint, "a checkpoint folder (checkpoints/step_N), or 'latest'");
  app.add_option("--hf", o.hf, "an export folder (hf/: model.safetensors + config.json)");
  auto* prompt = app.add_option("--prompt", o.prompt, "the prompt text");
  auto* messages = app.add_option("--messages", o.messages, "a JSON file: a list of {\"role\", \"content\"}");
  auto* chat = app.add_flag("--chat", o.chat, "one user turn a line from stdin");
  prompt->excludes(messages, chat);
  messages->excludes(chat);
  app.add_option("--max-new-tokens", o.max_new_tokens, "at most this many new tokens")->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", o.temperature, "0: greedy")->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", o.top_p, "nucleus sampling: the fewest tokens whose probability reaches it")->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", o.seed, "the sampler's seed");
  app.add_flag("--no-stream", o.no_stream, "print the text once it is complete");
  app.get_formatter()->column_width(32);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  o.has_prompt = prompt->count() > 0;
  if (!o.has_prompt && o.messages.empty() && !o.chat) {
    std::fprintf(stderr, "veomni-generate: error: give --prompt TEXT, --messages FILE.json or --chat\n");
    return 2;
  }
  if (!o.checkpoint.empty() && !o.hf.empty()) {
    std::fprintf(stderr, "veomni-generate: error: --checkpoint and --hf: give one\n");
    return 2;
  }
  try {
    const run_files r = locate(o.run);
    if (r.c.model.name == "dense_lm") return generate_text<models::dense_lm, text_decoder>(r, o);
    if (r.c.model.name == "tiny_vl") return generate_text<models::tiny_vl, text_decoder>(r, o);
    if (r.c.model.name == "moe_lm") return generate_text<models::moe_lm, moe_text_decoder>(r, o);
    return generate_text<models::omni_moe, moe_text_decoder>(r, o);
  } catch (const input_error& e) {
    std::fprintf(stderr, "veomni-generate: error: %s\n", e.what());
    return 2;
  } catch (const train::config_error& e) {
    std::fprintf(stderr, "veomni-generate: error: %s\n", e.what());
    return 2;
  } catch (const train::checkpoint_error& e) {
    std::fprintf(stderr, "veomni-generate: error: %s\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "veomni-generate: failed: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "veomni-generate: failed: %s\n", e.what());
    return 1;
  }
}
