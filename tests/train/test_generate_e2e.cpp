// veomni-generate end to end: veomni-train learns a handful of prompt/answer
// pairs by heart (dense_lm, byte tokenizer), then veomni-generate, greedy,
// must print each trained answer for its prompt and stop at eos — from the
// run's latest checkpoint, a named checkpoint and the hf/ export alike — and
// refuse a missing checkpoint, a config that does not fit the weights, and
// a tokenizer it cannot load (exit 2, naming what is wrong).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "chat_fixture.hpp"
#include "harness.hpp"

using namespace veomni::testing;

namespace {

const std::string generate_bin = VEOMNI_TEST_GENERATE;

// prompt -> answer; one answer of multi-byte UTF-8 characters (streamed whole)
const std::vector<std::pair<std::string, std::string>> pairs{
    {"capital of France?", " Paris"},  {"capital of Japan?", " Tokyo"},   {"2+2=", " 4"},
    {"colour of the sky?", " blue"},   {"opposite of hot?", " cold"},     {"coffee in French?", " café ☕"},
    {"first letter?", " A"},           {"largest planet?", " Jupiter"}};

struct result {
  int rc = -1;
  std::string out, err;
};

// veomni-generate ARGS: stdout and stderr apart
result generate(const std::string& args, const std::string& tag) {
  const std::string base = tmp_root + "/gen_e2e/" + tag;
  const int rc = std::system(("timeout 60 " + generate_bin + " " + args + " > " + base + ".out 2> " + base + ".err").c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : 128, slurp(base + ".out"), slurp(base + ".err")};
}

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Trains once (about 10 s on two cores): the run's output folder.
const std::string& trained_run() {
  static const std::string out = [] {
    const std::string dir = case_dir("gen_e2e");
    std::string manifest;
    for (const auto& [p, a] : pairs) manifest += nlohmann::json{{"prompt", p}, {"answer", a}}.dump() + "\n";
    write_file(dir + "/train.jsonl", manifest);
    const job j = train("gen_e2e", 1,
                        "model:\n  name: dense_lm\n"
                        "data:\n  manifest: " + dir + "/train.jsonl\n  eval_manifest: ''\n  max_seq_len: 64\n"
                        "train:\n  output_dir: " + dir + "/out\n  max_steps: 300\n  global_batch_size: 8\n  lr: 0.01\n"
                        "  lr_warmup_steps: 10\n  weight_decay: 0.0\n  log_steps: 100\n  save_steps: 150\n");
    INFO(j.output);
    REQUIRE(j.rc == 0);
    return dir + "/out";
  }();
  return out;
}

}  // namespace

// One test case (one training run in its process): each SUBCASE checks one promise of the same run.
TEST_CASE("veomni-generate on a trained run: its answers, from each source of weights, and what it refuses" * doctest::timeout(240)) {
  SUBCASE("the trained answers (greedy, streamed, stops at eos)") {
    const std::string& run = trained_run();
    int right = 0;
    for (size_t i = 0; i < pairs.size(); ++i) {
      const auto& [prompt, answer] = pairs[i];
      const result r = generate(run + " --prompt " + quoted(prompt) + " --max-new-tokens 24", "p" + std::to_string(i));
      INFO("prompt '", prompt, "': ", r.err);
      CHECK(r.rc == 0);
      CHECK(r.out == answer + "\n");
      CHECK(contains(r.err, "(stop id)"));
      right += r.out == answer + "\n";
    }
    MESSAGE(right, " of ", pairs.size(), " answers exact");
  }

  SUBCASE("a named checkpoint, the export and --messages give the same text") {
    const std::string& run = trained_run();
    const std::string want = " Tokyo\n";
    const result latest = generate(run + " --checkpoint latest --prompt 'capital of Japan?'", "latest");
    CHECK(latest.out == want);
    const result step = generate(run + " --checkpoint " + run + "/checkpoints/step_000300 --prompt 'capital of Japan?' --no-stream", "step");
    INFO(step.err);
    CHECK(step.out == want);
    const result hf = generate(run + " --hf " + run + "/hf --prompt 'capital of Japan?'", "hf");
    INFO(hf.err);
    CHECK(hf.out == want);
    write_file(tmp_root + "/gen_e2e/m.json", R"([{"role": "user", "content": "capital of Japan?"}])");
    const result m = generate(run + " --messages " + tmp_root + "/gen_e2e/m.json", "messages");
    INFO(m.err);
    CHECK(m.out == want);
    // the config file instead of the folder (its train.output_dir is the run)
    const result cfg = generate(run + "/config.yaml --prompt 'capital of Japan?'", "config");
    CHECK(cfg.out == want);
    // sampling: seeded, so repeatable; max-new-tokens caps it
    const result s1 = generate(run + " --prompt 'capital of Japan?' --temperature 1.5 --seed 4 --max-new-tokens 3", "s1");
    const result s2 = generate(run + " --prompt 'capital of Japan?' --temperature 1.5 --seed 4 --max-new-tokens 3", "s2");
    CHECK(s1.rc == 0);
    CHECK(s1.out == s2.out);
  }

  SUBCASE("what it cannot load: exit 2, naming it") {
    const std::string& run = trained_run();
    const result missing = generate(run + " --checkpoint " + run + "/checkpoints/step_999999 --prompt x", "missing");
    CHECK(missing.rc == 2);
    CHECK(contains(missing.err, "step_999999: no such checkpoint folder"));
    const result no_run = generate(tmp_root + "/gen_e2e --prompt x", "no_run");
    CHECK(no_run.rc == 2);
    CHECK(contains(no_run.err, "no config.yaml in this folder"));

    // the run's config with a third layer: the weights do not fit
    write_file(tmp_root + "/gen_e2e/layers3.yaml", "model:\n  name: dense_lm\n  lm.layers: 3\ntrain:\n  output_dir: " + run + "\n");
    const result mismatch = generate(tmp_root + "/gen_e2e/layers3.yaml --prompt x", "layers3");
    CHECK(mismatch.rc == 2);
    CHECK(contains(mismatch.err, "config mismatch"));
    CHECK(contains(mismatch.err, "lm.model.layers.2."));
    const result hf_mismatch = generate(tmp_root + "/gen_e2e/layers3.yaml --hf " + run + "/hf --prompt x", "layers3_hf");
    CHECK(hf_mismatch.rc == 2);
    CHECK(contains(hf_mismatch.err, "num_hidden_layers = 2, the config's model gives 3"));

    write_file(tmp_root + "/gen_e2e/tok.yaml", "model:\n  name: dense_lm\ndata:\n  tokenizer: " + tmp_root +
                                                   "/gen_e2e/no_such_tokenizer\ntrain:\n  output_dir: " + run + "\n");
    const result tok = generate(tmp_root + "/gen_e2e/tok.yaml --prompt x", "tokenizer");
    CHECK(tok.rc == 2);
    CHECK(contains(tok.err, "data.tokenizer: "));
    CHECK(contains(tok.err, "no_such_tokenizer"));
  }
}

// Issue 20: a model fine-tuned on a small generated chat set (the test's ChatML tokenizer,
// chat_fixture.hpp; the loss on the assistant turns) answers its training questions when the
// conversation is rendered with the same template and a generation prompt, and stops at <|im_end|>.
TEST_CASE("veomni-generate: a model fine-tuned on conversations answers its training questions" * doctest::timeout(180)) {
  const std::string dir = case_dir("gen_chat");
  write_chat_tokenizer(dir);
  write_chat_manifest(dir + "/train.jsonl", 48);
  const job j = train("gen_chat", 1,
                      "model:\n  name: dense_lm\n"
                      "data:\n  manifest: " + dir + "/train.jsonl\n  eval_manifest: ''\n  tokenizer: " + dir + "\n"
                      "train:\n  output_dir: " + dir + "/out\n  max_steps: 200\n  global_batch_size: 8\n  lr: 0.01\n"
                      "  lr_warmup_steps: 10\n  weight_decay: 0.0\n  log_steps: 100\n  save_checkpoints: false\n");
  INFO(j.output);
  REQUIRE(j.rc == 0);
  const char* things[] = {"sky", "grass", "sun", "snow"};
  const char* colours[] = {"blue", "green", "yellow", "white"};
  int right = 0;
  for (int k = 0; k < 4; ++k) {
    const std::string q = std::string("what is the colour of the ") + things[k] + "?";
    write_file(dir + "/q.json", nlohmann::json::array({{{"role", "user"}, {"content", q}}}).dump());
    const result r = generate(dir + "/out --hf " + dir + "/out/hf --messages " + dir + "/q.json --max-new-tokens 20", "chat" + std::to_string(k));
    INFO(q, ": ", r.err);
    CHECK(r.rc == 0);
    CHECK(r.out == std::string("the colour is ") + colours[k] + ".\n");
    right += r.out == std::string("the colour is ") + colours[k] + ".\n";
  }
  MESSAGE(right, " of 4 answers exact");
  // a second turn, with the first answer in the history
  write_file(dir + "/q2.json", R"([{"role": "user", "content": "what is the colour of the grass?"},
                                   {"role": "assistant", "content": "the colour is green."},
                                   {"role": "user", "content": "and again?"}])");
  const result two = generate(dir + "/out --hf " + dir + "/out/hf --messages " + dir + "/q2.json --max-new-tokens 20", "chat_two");
  INFO(two.err);
  CHECK(two.out == "it is green.\n");
}
