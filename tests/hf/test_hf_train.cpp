// veomni-train from Hugging Face checkpoints (model.path, issue 19), on the
// reference's fixtures (hf_reference.py): the loaded model's loss on fixed
// token sequences equals the reference's (<= 1e-5 relative, fp32) for Llama,
// Qwen2, Qwen3 and Qwen3-MoE in fp32, bf16 and fp16, one file or shards, tied
// or not; FSDP, HSDP, Ulysses and EP at world 2 and 4 train like world 1 from
// the loaded weights; an export without training is the input bit for bit; a rank of
// FSDP-4 holds about a quarter of what world 1 holds; and a checkpoint that
// does not fit its config is refused on every rank before any collective.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <map>
#include <regex>
#include <tuple>

#include "harness.hpp"

using namespace veomni::testing;

namespace {

const std::string fixtures = VEOMNI_TEST_HF;

// the reference's token sequences as a pre-tokenized manifest (input_ids, no labels)
std::string manifest(const std::string& dir) {
  const auto seqs = nlohmann::json::parse(slurp(VEOMNI_TEST_TOKENS));
  std::string lines;
  for (const auto& s : seqs) lines += nlohmann::json{{"input_ids", s}}.dump() + "\n";
  write_file(dir + "/tokens.jsonl", lines);
  return dir + "/tokens.jsonl";
}

// a config that starts from the checkpoint folder `path`
std::string config_at(const std::string& tag, const std::string& path, int steps, const std::string& extra = "") {
  const std::string dir = case_dir(tag);
  return "model:\n  path: " + path + "\ndata:\n  manifest: " + manifest(dir) +
         "\n  eval_manifest: ''\ntrain:\n  output_dir: " + dir + "/out\n  max_steps: " + std::to_string(steps) +
         "\n  global_batch_size: 8\n  lr: 0.001\n  log_steps: 100\n  save_checkpoints: false\n  export_safetensors: false\n" + extra;
}
std::string config(const std::string& tag, const std::string& fixture, int steps, const std::string& extra = "") {
  return config_at(tag, fixtures + "/" + fixture, steps, extra);
}

}  // namespace

TEST_CASE("model.path: the loaded model's loss equals the reference's, for each architecture and file layout" *
          doctest::timeout(240)) {
  double worst = 0;
  for (const char* f : {"llama_f32", "llama_bf16_tied", "qwen2_bf16_sharded", "qwen2_f16", "qwen3_f32_sharded_tied", "qwen3_bf16",
                        "qwen3_moe_bf16_sharded", "qwen3_moe_f32_tied"}) {
    const std::string tag = std::string("hf_loss_") + f;
    const job j = train(tag, 1, config(tag, f, 1));
    INFO(f, ": ", j.output);
    REQUIRE(j.rc == 0);
    CHECK(contains(j.output, "loaded its shard of " + fixtures + "/" + f));
    const auto m = metrics(tmp_root + "/" + tag + "/out");
    REQUIRE(m.size() == 1);
    const double want = nlohmann::json::parse(slurp(fixtures + "/" + f + ".loss.json"))["mean_loss"].get<double>();
    const double got = m[0]["loss"].get<double>();
    MESSAGE(std::string(f), ": veomni ", got, ", reference ", want, " (rel ", rel(got, want), ")");
    CHECK(rel(got, want) <= 1e-5);
    worst = std::max(worst, rel(got, want));
  }
  MESSAGE("worst relative difference: ", worst);
}

TEST_CASE("model.path: each recipe (FSDP, HSDP, Ulysses, EP, and together) trains like world 1 from the loaded weights" *
          doctest::timeout(300)) {
  struct recipe_case {
    const char* fixture;
    int world;
    const char* overrides;
  };
  const recipe_case cases[] = {
      {"qwen3_f32_sharded_tied", 2, "--train.accelerator.dp_shard_size=2"},
      {"qwen3_f32_sharded_tied", 2, "--train.accelerator.dp_replicate_size=2 --train.accelerator.dp_shard_size=1"},
      {"qwen3_f32_sharded_tied", 2, "--train.accelerator.ulysses_size=2 --train.accelerator.dp_shard_size=1"},
      {"qwen3_f32_sharded_tied", 4, "--train.accelerator.ulysses_size=2 --train.accelerator.dp_shard_size=2"},
      {"qwen2_bf16_sharded", 2, "--train.accelerator.dp_shard_size=2"},
      {"qwen3_moe_bf16_sharded", 2, "--train.accelerator.dp_shard_size=2 --train.accelerator.ep_size=2"},
      {"qwen3_moe_f32_tied", 4,
       "--train.accelerator.ulysses_size=2 --train.accelerator.dp_shard_size=2 --train.accelerator.ep_size=4"}};
  std::map<std::string, std::vector<nlohmann::json>> reference;
  int n = 0;
  for (const auto& rc : cases) {
    const std::string f = rc.fixture;
    if (!reference.count(f)) {
      const std::string t1 = "hf_w1_" + f;
      reference[f] = ok_metrics(train(t1, 1, config(t1, f, 10)), t1, 10);
      CHECK(reference[f].back()["loss"].get<double>() < reference[f].front()["loss"].get<double>());
    }
    const auto& ref = reference[f];
    const std::string t2 = "hf_recipe_" + std::to_string(n++);
    const auto got = ok_metrics(train(t2, rc.world, config(t2, f, 10), rc.overrides), t2, 10);
    double worst_loss = 0, worst_norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst_loss = std::max(worst_loss, rel(got[i]["loss"].get<double>(), ref[i]["loss"].get<double>()));
      worst_norm = std::max(worst_norm, rel(got[i]["grad_norm"].get<double>(), ref[i]["grad_norm"].get<double>()));
    }
    MESSAGE(f, " world ", rc.world, " ", std::string(rc.overrides), ": max rel diff over 10 steps: loss ", worst_loss, ", grad norm ", worst_norm);
    CHECK(worst_loss <= 1e-5);
    CHECK(worst_norm <= 1e-5);
  }
}

TEST_CASE("model.path: a rank of FSDP-4 holds a quarter of the model, read from its byte ranges" * doctest::timeout(240)) {
  // "rank 0 loaded its shard of ... (resident A MiB before the model, B MiB now, ...)": B - A is the
  // rank's parameters and AdamW moments, all that loading added
  auto growth = [](const job& j) {
    std::smatch m;
    const std::regex line("rank 0 loaded its shard of [^ ]+ in [0-9.]+ s \\(resident ([0-9.]+) MiB before the model, ([0-9.]+) MiB now");
    REQUIRE(std::regex_search(j.output, m, line));
    return std::stod(m[2].str()) - std::stod(m[1].str());
  };
  const job one = train("hf_rss1", 1, config("hf_rss1", "big_qwen2", 1));
  INFO(one.output);
  REQUIRE(one.rc == 0);
  const job four = train("hf_rss4", 4, config("hf_rss4", "big_qwen2", 1), "--train.accelerator.dp_shard_size=4");
  INFO(four.output);
  REQUIRE(four.rc == 0);
  const double g1 = growth(one), g4 = growth(four);
  // about 20.5 M parameters: 78 MiB each for the values and the two AdamW moments at world 1
  MESSAGE("resident growth while building and loading: world 1 ", g1, " MiB, a rank of FSDP-4 ", g4, " MiB (", g4 / g1, ")");
  CHECK(g1 > 150);
  CHECK(g4 < 0.4 * g1);
}

TEST_CASE("model.path: a checkpoint that does not fit its config is refused on every rank, naming the tensor") {
  const std::string dir = case_dir("hf_bad");
  std::filesystem::copy(fixtures + "/qwen2_bf16_sharded", dir + "/ck", std::filesystem::copy_options::recursive);
  auto cfg = nlohmann::json::parse(slurp(dir + "/ck/config.json"));
  cfg["num_hidden_layers"] = 3;
  write_file(dir + "/ck/config.json", cfg.dump());
  const std::string yaml = "model:\n  path: " + dir + "/ck\ndata:\n  manifest: " + manifest(dir) + "\n  eval_manifest: ''\n";
  write_file(dir + "/config.in.yaml", yaml);
  expect_error_on_each_rank("hf_bad", "", "model.path: " + dir + "/ck: the checkpoint has no tensor 'model.layers.2.", dir + "/config.in.yaml");
  // a truncated shard
  cfg["num_hidden_layers"] = 2;
  write_file(dir + "/ck/config.json", cfg.dump());
  const std::string shard = dir + "/ck/model-00001-of-00003.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 1);
  expect_error_on_each_rank("hf_bad", "", "model.path: ", dir + "/config.in.yaml");
  expect_error(train("hf_bad2", 1, yaml), "past the end of the file (");
  // model.path loads into dense_lm and moe_lm only, each the architectures it takes
  expect_error(train("hf_bad3", 1, yaml, "--model.name=omni_moe"), "model.path: a Hugging Face checkpoint loads into model.name: dense_lm");
  expect_error(train("hf_bad4", 1, config("hf_bad4", "qwen2_bf16_sharded", 1), "--model.name=moe_lm"),
               "architectures[0] = Qwen2ForCausalLM loads into model.name: dense_lm, not moe_lm");
  // Qwen3-MoE: a router for more experts than there are, experts of another shape; a MoE checkpoint is not dense_lm's
  std::filesystem::copy(fixtures + "/qwen3_moe_bf16_sharded", dir + "/moe", std::filesystem::copy_options::recursive);
  const std::string moe_yaml = "model:\n  path: " + dir + "/moe\ndata:\n  manifest: " + manifest(dir) + "\n  eval_manifest: ''\n";
  auto moe_cfg = nlohmann::json::parse(slurp(dir + "/moe/config.json"));
  moe_cfg["num_experts"] = 5;
  write_file(dir + "/moe/config.json", moe_cfg.dump());
  expect_error(train("hf_bad5", 1, moe_yaml),
               "model-00001-of-00002.safetensors: 'model.layers.0.mlp.gate.weight' is [4, 64], the model's "
               "lm.model.layers.0.mlp.gate.weight is [5, 64] (config.json and the weights disagree)");
  moe_cfg["num_experts"] = 4;
  moe_cfg["moe_intermediate_size"] = 16;
  write_file(dir + "/moe/config.json", moe_cfg.dump());
  expect_error(train("hf_bad6", 1, moe_yaml), "'model.layers.0.mlp.experts.0.gate_proj.weight' is [32, 64], one expert of the model's "
                                             "lm.model.layers.0.mlp.experts.gate_proj, [4, 16, 64] is [16, 64]");
  expect_error(train("hf_bad7", 1, moe_yaml, "--model.name=dense_lm"),
               "architectures[0] = Qwen3MoeForCausalLM loads into model.name: moe_lm, not dense_lm");
}

namespace {
// each tensor's name in a safetensors file
std::vector<std::pair<std::string, int>> tensor_bytes_of_file(const std::string& path) {
  const std::string bytes = slurp(path);
  uint64_t len = 0;
  for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[static_cast<size_t>(i)])) << (8 * i);
  std::vector<std::pair<std::string, int>> out;
  const auto header = nlohmann::json::parse(bytes.substr(8, len));
  for (const auto& [k, v] : header.items())
    if (k != "__metadata__") out.emplace_back(k, 0);
  return out;
}
// each tensor's raw bytes in a Hugging Face folder: name -> (file name, dtype, bytes)
std::map<std::string, std::tuple<std::string, std::string, std::string>> tensor_bytes(const std::string& dir) {
  std::map<std::string, std::tuple<std::string, std::string, std::string>> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const std::string bytes = slurp(e.path().string());
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[static_cast<size_t>(i)])) << (8 * i);
    const auto h = nlohmann::json::parse(bytes.substr(8, len));
    for (const auto& [k, v] : h.items()) {
      if (k == "__metadata__") continue;
      const uint64_t b = v["data_offsets"][0], en = v["data_offsets"][1];
      out[k] = {e.path().filename().string(), v["dtype"].get<std::string>(), bytes.substr(8 + len + b, en - b)};
    }
  }
  return out;
}
}  // namespace

TEST_CASE("model.path: exported without training, every tensor comes back bit for bit, in the same files" * doctest::timeout(180)) {
  for (const char* f : {"qwen2_bf16_sharded", "qwen3_f32_sharded_tied", "qwen2_f16", "qwen3_moe_bf16_sharded"}) {
    const std::string tag = std::string("hf_export_") + f;
    const bool moe = std::string(f).find("moe") != std::string::npos;  // its experts split over 2 ranks, one tensor each in the files
    const job j = train(tag, 2, config(tag, f, 1),
                        std::string("--train.accelerator.dp_shard_size=2 --train.lr=0 --train.weight_decay=0 --train.export_safetensors=true") +
                            (moe ? " --train.accelerator.ep_size=2" : ""));
    INFO(f, ": ", j.output);
    REQUIRE(j.rc == 0);
    const std::string hf = tmp_root + "/" + tag + "/out/hf";
    const auto in = tensor_bytes(fixtures + "/" + f), out = tensor_bytes(hf);
    CHECK(in.size() == out.size());
    size_t same = 0;
    for (const auto& [name, t] : in) same += out.count(name) && out.at(name) == t;
    MESSAGE(std::string(f), ": ", same, " of ", in.size(), " tensors identical (file, dtype and bytes)");
    CHECK(same == in.size());
    CHECK(std::filesystem::exists(hf + "/model.safetensors.index.json") ==
          std::filesystem::exists(fixtures + "/" + f + "/model.safetensors.index.json"));
    auto cfg_in = nlohmann::json::parse(slurp(fixtures + "/" + f + "/config.json")), cfg_out = nlohmann::json::parse(slurp(hf + "/config.json"));
    CHECK(cfg_in == cfg_out);  // only what changed would differ: nothing did
    // the export loads back as model.path, with the loss the checkpoint had
    const std::string back = std::string("hf_back_") + f;
    const auto m = ok_metrics(train(back, 1, config_at(back, hf, 1)), back, 1);
    const double want = nlohmann::json::parse(slurp(fixtures + "/" + f + ".loss.json"))["mean_loss"].get<double>();
    CHECK(rel(m[0]["loss"].get<double>(), want) <= 1e-5);
  }
}

TEST_CASE("model.path: veomni-generate reads the run's checkpoint and its Hugging Face export alike" * doctest::timeout(180)) {
  for (const std::string f : {"qwen3_bf16", "qwen3_moe_bf16_sharded"}) {
    const bool moe = f.find("moe") != std::string::npos;
    const std::string tag = "hf_generate_" + f;
    const job j = train(tag, 2, config(tag, f, 1),
                        std::string("--train.accelerator.dp_shard_size=2 --train.lr=0 --train.weight_decay=0 --train.export_safetensors=true "
                                    "--train.save_checkpoints=true") +
                            (moe ? " --train.accelerator.ep_size=2" : ""));
    INFO(f, ": ", j.output);
    REQUIRE(j.rc == 0);
    const std::string run_dir = tmp_root + "/" + tag + "/out";
    auto generate = [&](const std::string& args, const std::string& name) {
      // stdout alone (stderr says what was loaded, and how fast)
      return run(std::string("(timeout 60 ") + VEOMNI_TEST_GENERATE + " " + run_dir + " " + args +
                     " --prompt 'hello' --max-new-tokens 6 --no-stream 2>/dev/null)",
                 tag + "_" + name);
    };
    const job from_checkpoint = generate("--checkpoint latest", "ckpt");
    const job from_export = generate("--hf " + run_dir + "/hf", "export");
    const job from_original = generate("--hf " + fixtures + "/" + f, "original");
    CHECK(from_checkpoint.rc == 0);
    CHECK(from_export.rc == 0);
    CHECK(from_original.rc == 0);
    CHECK(!from_checkpoint.output.empty());
    CHECK(from_export.output == from_checkpoint.output);
    CHECK(from_original.output == from_checkpoint.output);
    // another architecture's folder does not fit the run's model
    const job other = generate("--hf " + fixtures + "/qwen2_f16", "other");
    CHECK(other.rc == 2);
  }
}

TEST_CASE("dense_lm and moe_lm export Hugging Face checkpoints that load back as model.path with the same loss" *
          doctest::timeout(120)) {
  for (const std::string model : {"dense_lm", "moe_lm"}) {
    // one step at lr 0 from the random initialisation, exported; then one step from the export
    const std::string tag = "hf_fresh_" + model, dir = case_dir(tag);
    const std::string yaml = "model:\n  name: " + model + "\ndata:\n  manifest: " + manifest(dir) +
                             "\n  eval_manifest: ''\ntrain:\n  output_dir: " + dir + "/out\n  max_steps: 1\n  global_batch_size: 8\n"
                             "  lr: 0\n  weight_decay: 0\n  log_steps: 100\n  save_checkpoints: false\n  export_safetensors: true\n";
    const auto first = ok_metrics(train(tag, 2, yaml, model == "moe_lm" ? "--train.accelerator.dp_shard_size=2 --train.accelerator.ep_size=2"
                                                                         : "--train.accelerator.dp_shard_size=2"),
                                  tag, 1);
    const std::string hf = dir + "/out/hf";
    const auto cfg = nlohmann::json::parse(slurp(hf + "/config.json"));
    CHECK(cfg["architectures"][0] == (model == "moe_lm" ? "Qwen3MoeForCausalLM" : "LlamaForCausalLM"));
    const std::string back = "hf_fresh_back_" + model;
    const job j = train(back, 1, config_at(back, hf, 1));  // model.name from config.json
    INFO(j.output);
    CHECK(contains(j.output, "veomni-train: " + model + " on 1 rank"));
    const auto again = ok_metrics(j, back, 1);
    MESSAGE(model, ": loss before the export ", first[0]["loss"].get<double>(), ", from it ", again[0]["loss"].get<double>());
    CHECK(rel(again[0]["loss"].get<double>(), first[0]["loss"].get<double>()) <= 1e-6);
  }
}

namespace {
// lr 0, one step on the first batch a run `out` trained on (fixture f): the
// base with its PEFT adapters loaded back (train.lora.path, 2 ranks on
// `mesh`), its merged export (out/hf as model.path, one rank), the base alone.
// Base + adapters has the merged model's loss, the base another; the run's
// first step (first_loss) saw the base (lora_B starts at zero).
void check_merged_is_base_plus_adapters(const std::string& tag, const std::string& f, const std::string& out,
                                        const std::string& mesh, double first_loss) {
  const std::string zero = " --train.lr=0 --train.weight_decay=0";
  const std::string back = tag + "_back", merged = tag + "_merged", base = tag + "_base";
  const auto with_adapters =
      ok_metrics(train(back, 2, config(back, f, 1), mesh + " --train.lora.path=" + out + "/adapter" + zero), back, 1);
  const auto from_merged = ok_metrics(train(merged, 1, config_at(merged, out + "/hf", 1), zero), merged, 1);
  const auto from_base = ok_metrics(train(base, 1, config(base, f, 1), zero), base, 1);
  const double a = with_adapters[0]["loss"].get<double>(), b = from_merged[0]["loss"].get<double>(),
               c = from_base[0]["loss"].get<double>();
  MESSAGE(f, ": base + PEFT adapters ", a, ", merged export ", b, " (rel ", rel(a, b), "), base alone ", c);
  CHECK(rel(a, b) <= 1e-5);
  CHECK(rel(a, c) > 1e-3);
  CHECK(rel(first_loss, c) <= 1e-5);
}
}  // namespace

// LoRA fine-tuning of a Hugging Face checkpoint (train.lora): FSDP-2 trains
// the adapters alone and writes them in PEFT's format (adapter/) and the
// merged model in the checkpoint's layout (hf/). Then, on the same tokens at
// lr 0: the base with the PEFT adapters loaded back (train.lora.path) has the
// loss of the merged model loaded as model.path (<= 1e-5 relative), and both
// differ from the base's own loss (the adapters trained).
TEST_CASE("train.lora: PEFT adapters out and back in, and the merged export has the loss of base + adapters" *
          doctest::timeout(240)) {
  const std::string f = "qwen3_f32_sharded_tied", tag = "hf_lora_train";
  const job j = train(tag, 2, config(tag, f, 6),
                      "--train.accelerator.dp_shard_size=2 --train.lora.rank=4 --train.lora.alpha=8 --train.lr=0.02 "
                      "--train.lora.merge_on_export=true --train.export_safetensors=true");
  INFO(j.output);
  REQUIRE(j.rc == 0);
  CHECK(contains(j.output, "LoRA rank 4, alpha 8"));
  const std::string out = tmp_root + "/" + tag + "/out";
  const auto m = metrics(out);
  REQUIRE(m.size() == 6);
  CHECK(m.back()["loss"].get<double>() < m.front()["loss"].get<double>());
  // PEFT's files: config and tensor names, shapes [r, in] and [out, r]
  const auto cfg = nlohmann::json::parse(slurp(out + "/adapter/adapter_config.json"));
  CHECK(cfg["peft_type"] == "LORA");
  CHECK(cfg["r"] == 4);
  CHECK(cfg["lora_alpha"].get<double>() == 8.0);
  CHECK(cfg["target_modules"] ==
        nlohmann::json{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"});
  CHECK(cfg["base_model_name_or_path"] == fixtures + "/" + f);
  const auto hdr = tensor_bytes(out + "/adapter");
  CHECK(hdr.count("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == 1);
  CHECK(hdr.count("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") == 1);
  CHECK(std::filesystem::exists(out + "/hf/config.json"));

  check_merged_is_base_plus_adapters("hf_lora", f, out, "--train.accelerator.dp_shard_size=2",
                                     m.front()["loss"].get<double>());
  // train.lora.targets narrows the adapted layers at run time
  const std::string att = "hf_lora_attention";
  const job ja = train(att, 1, config(att, f, 1), "--train.lora.rank=2 --train.lora.targets=attention");
  INFO(ja.output);
  REQUIRE(ja.rc == 0);
  const auto acfg = nlohmann::json::parse(slurp(tmp_root + "/" + att + "/out/adapter/adapter_config.json"));
  CHECK(acfg["target_modules"] == nlohmann::json{"k_proj", "o_proj", "q_proj", "v_proj"});
}

// LoRA on a Qwen3-MoE checkpoint (moe_lm): the attention's and every
// expert's projections adapted, FSDP-2 x EP-2 (each rank holds its two
// experts' adapters and sums their gradients over ep_dp). PEFT's files name
// each expert's adapters as Hugging Face names the experts; loaded back on
// the same mesh (each rank its experts' rows), base + adapters has the loss
// of the merged export loaded as model.path on one rank.
TEST_CASE("train.lora: moe_lm adapts attention and experts under EP, PEFT's per-expert names out and back in" *
          doctest::timeout(240)) {
  const std::string f = "qwen3_moe_f32_tied", tag = "hf_lora_moe";
  const std::string mesh = "--train.accelerator.dp_shard_size=2 --train.accelerator.ep_size=2";
  const job j = train(tag, 2, config(tag, f, 4),
                      mesh + " --train.lora.rank=4 --train.lora.alpha=8 --train.lr=0.02 "
                             "--train.lora.merge_on_export=true --train.export_safetensors=true");
  INFO(j.output);
  REQUIRE(j.rc == 0);
  const std::string out = tmp_root + "/" + tag + "/out";
  const auto m = metrics(out);
  REQUIRE(m.size() == 4);
  CHECK(m.back()["loss"].get<double>() < m.front()["loss"].get<double>());
  const auto cfg = nlohmann::json::parse(slurp(out + "/adapter/adapter_config.json"));
  CHECK(cfg["target_modules"] ==
        nlohmann::json{"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"});
  const auto hf_cfg = nlohmann::json::parse(slurp(fixtures + "/" + f + "/config.json"));
  const int experts = hf_cfg["num_experts"].get<int>();
  const auto hdr = tensor_bytes(out + "/adapter");
  for (int e = 0; e < experts; ++e)
    for (const char* p : {"gate_proj", "up_proj", "down_proj"})
      for (const char* ab : {"lora_A", "lora_B"})
        CHECK_MESSAGE(hdr.count("base_model.model.model.layers.1.mlp.experts." + std::to_string(e) + "." + p + "." + ab +
                                ".weight") == 1,
                      e, " ", p, " ", ab);
  CHECK(hdr.count("base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight") == 1);
  CHECK(hdr.count("base_model.model.model.layers.0.mlp.gate.lora_A.weight") == 0);  // the router is not adapted

  check_merged_is_base_plus_adapters("hf_lora_moe", f, out, mesh, m.front()["loss"].get<double>());
  // moe_lm's targets are attention and experts together
  expect_error_on_each_rank(tag, "--train.lora.rank=4 --train.lora.targets=attention",
                            "train.lora.targets: moe_lm adapts attention and experts together");
}

TEST_CASE("train.lora: what cannot run is refused before any collective, naming the key or the tensor") {
  const std::string f = "qwen3_f32_sharded_tied", tag = "hf_lora_bad", dir = case_dir(tag);
  (void)train(tag, 1, config(tag, f, 1), "--train.max_steps=0");  // writes config.in.yaml; the job itself fails
  // LoRA on a model it is not built for
  expect_error_on_each_rank(tag, "--model.name=omni_moe --model.path='' --train.lora.rank=4",
                            "train.lora: LoRA fine-tuning is built for model.name dense_lm");
  expect_error_on_each_rank(tag, "--train.lora.alpha=8", "train.lora: set train.lora.rank (> 0) or train.lora.path");
  expect_error_on_each_rank(tag, "--train.lora.rank=4 --train.lora.dropout=1", "train.lora.dropout: must be in [0, 1)");
  expect_error_on_each_rank(tag, "--train.lora.rank=4 --train.lora.targets=attention,embeddings",
                            "train.lora.targets: 'embeddings' is not a layer kind LoRA adapts (attention, mlp, experts; "
                            "comma-separated)");
  expect_error_on_each_rank(tag, "--train.lora.rank=4 --train.lora.targets=attention,experts",
                            "train.lora.targets: dense_lm has no experts");
  // an adapter folder that does not fit
  expect_error_on_each_rank(tag, "--train.lora.path=" + dir + "/nothing", "train.lora.path: " + dir +
                                                                            "/nothing/adapter_config.json: no such file");
  std::filesystem::create_directories(dir + "/adapter");
  write_file(dir + "/adapter/adapter_config.json", R"({"peft_type": "PREFIX_TUNING", "r": 4, "lora_alpha": 8})");
  write_file(dir + "/adapter/adapter_model.safetensors", "");
  expect_error_on_each_rank(tag, "--train.lora.path=" + dir + "/adapter",
                            "train.lora.path: " + dir + "/adapter/adapter_config.json: peft_type \"PREFIX_TUNING\" (LORA is read)");
  write_file(dir + "/adapter/adapter_config.json", R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8})");
  expect_error_on_each_rank(tag, "--train.lora.rank=8 --train.lora.path=" + dir + "/adapter",
                            "train.lora.path: " + dir + "/adapter/adapter_model.safetensors: too short for safetensors");
}

// LoRA on a zoo model (no model.path: the base is the seed's): a run stopped
// after 2 steps and resumed from its checkpoint (which holds the adapters and
// their moments alone) trains as the run that did not stop: exactly on the
// same mesh (dense_lm, FSDP-2), and within float rounding on another (moe_lm:
// written by FSDP-2 x EP-2, each rank holding its experts' adapters, read
// back by FSDP-2 with every expert's adapters on each rank).
TEST_CASE("train.lora: zoo models from their seed resume from a checkpoint of the adapters" * doctest::timeout(240)) {
  for (const std::string model : {"dense_lm", "moe_lm"}) {
    auto yaml = [&](const std::string& tag, int steps, bool fresh = true) {  // fresh: a new folder (else the run's, to resume)
      const std::string dir = fresh ? case_dir(tag) : tmp_root + "/" + tag;
      return "model:\n  name: " + model + "\ndata:\n  manifest: " + manifest(dir) +
             "\n  eval_manifest: ''\ntrain:\n  output_dir: " + dir + "/out\n  max_steps: " + std::to_string(steps) +
             "\n  global_batch_size: 8\n  lr: 0.01\n  lr_decay_style: constant\n  log_steps: 100\n  save_checkpoints: true\n"
             "  export_safetensors: true\n  lora:\n    rank: 4\n    merge_on_export: true\n";
    };
    const bool moe = model == "moe_lm";
    const std::string mesh = "--train.accelerator.dp_shard_size=2", first = moe ? mesh + " --train.accelerator.ep_size=2" : mesh;
    const std::string whole_tag = "lora_zoo_whole_" + model, part_tag = "lora_zoo_part_" + model;
    const auto whole = ok_metrics(train(whole_tag, 2, yaml(whole_tag, 4), first), whole_tag, 4);
    (void)ok_metrics(train(part_tag, 2, yaml(part_tag, 2), first), part_tag, 2);
    const job resumed = train(part_tag, 2, yaml(part_tag, 4, false), mesh + " --train.load_checkpoint_path=auto");
    INFO(resumed.output);
    REQUIRE(resumed.rc == 0);
    CHECK(contains(resumed.output, "resumed from"));
    const auto part = metrics(tmp_root + "/" + part_tag + "/out");
    REQUIRE(part.size() == 4);
    double worst = 0;
    for (size_t i = 0; i < 4; ++i) worst = std::max(worst, rel(part[i]["loss"].get<double>(), whole[i]["loss"].get<double>()));
    const std::string what = model + " LoRA resumed at step 2" + (moe ? " on another mesh" : "");
    MESSAGE(what, ": max rel loss difference over 4 steps ", worst);
    CHECK(worst <= (moe ? 1e-5 : 1e-6));
    // a checkpoint holds the adapters, not the frozen model
    const std::string ck = tmp_root + "/" + whole_tag + "/out/checkpoints/step_000004";
    for (const auto& e : std::filesystem::directory_iterator(ck))
      if (e.path().extension() == ".safetensors")
        for (const auto& [name, t] : tensor_bytes_of_file(e.path().string()))
          CHECK_MESSAGE(name.find("lora_") != std::string::npos, name);
  }
}
