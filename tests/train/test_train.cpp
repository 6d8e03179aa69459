// Bad manifests: veomni-train exits 2 before any collective, with a message
// naming the file and line (bad configs: tests/reliability/test_config.cpp);
// the threads each rank chooses, and the loss curve.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <veomni/train/plot.hpp>
#include <veomni/train/threads.hpp>

#include <cmath>
#include <cstdlib>

#include "chat_fixture.hpp"
#include "harness.hpp"

using namespace veomni::testing;

TEST_CASE("manifest: a malformed JSON line is named by file and line") {
  const std::string dir = case_dir("man_json");
  write_file(dir + "/m.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"broken\"\n");
  expect_error(train("man_json", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"), dir + "/m.jsonl:2: malformed JSON");
}

TEST_CASE("manifest: a missing image is named with its line") {
  const std::string dir = case_dir("man_missing");
  write_file(dir + "/m.jsonl", "{\"prompt\": \"<image>colour?\", \"answer\": \" red\", \"images\": [\"nope.png\"]}\n");
  expect_error(train("man_missing", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"),
               dir + "/m.jsonl:1: image '" + dir + "/nope.png': not found");
}

TEST_CASE("manifest: a missing manifest and an unknown field") {
  expect_error(train("man_none", 1, "data:\n  manifest: /nonexistent/m.jsonl\n"), "/nonexistent/m.jsonl: cannot open the manifest");
  const std::string dir = case_dir("man_field");
  write_file(dir + "/m.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n");
  expect_error(train("man_field", 1, "data:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"),
               dir + "/m.jsonl:2: unknown field 'txt'");
}

// ---- chat data (data.tokenizer; train/vocabulary.hpp) ------------------------------------------

namespace {
// a dense_lm config over tmp/<tag>/m.jsonl with the test's ChatML tokenizer (chat_fixture.hpp)
std::string chat_config(const std::string& dir, const std::string& lines, const std::string& extra = "") {
  write_chat_tokenizer(dir);
  write_file(dir + "/m.jsonl", lines);
  return "model:\n  name: dense_lm\ndata:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n  tokenizer: " + dir + "\n" + extra +
         "train:\n  output_dir: " + dir + "/out\n  max_steps: 2\n  global_batch_size: 2\n  save_checkpoints: false\n"
         "  export_safetensors: false\n";
}
const std::string good_chat =
    R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})" "\n";
}  // namespace

TEST_CASE("chat data: a conversation needs a tokenizer with a chat template") {
  const std::string dir = case_dir("chat_bytes");
  write_file(dir + "/m.jsonl", good_chat);
  expect_error(train("chat_bytes", 1, "model:\n  name: dense_lm\ndata:\n  manifest: " + dir + "/m.jsonl\n  eval_manifest: ''\n"),
               dir + "/m.jsonl:1: 'messages' needs a tokenizer with a chat template (data.tokenizer");
}

TEST_CASE("chat data: an unknown role, a missing assistant turn and a bad field are named with their line") {
  const std::string dir = case_dir("chat_bad");
  const std::string lines = good_chat + R"({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]})" "\n" +
                            R"({"messages": [{"role": "user", "content": "hi"}]})" "\n" +
                            R"({"messages": [{"role": "assistant", "content": 3}]})" "\n" +
                            R"({"messages": [{"role": "user", "content": "hi"}], "prompt": "x"})" "\n";
  expect_error(train("chat_bad", 1, chat_config(dir, lines)), dir + "/m.jsonl:2: messages[1]: unknown role 'bot' (system, user, assistant or tool)");
  // skipped and counted by reason under data.bad_samples: skip
  const job j = train("chat_bad", 1, chat_config(dir, lines, "  bad_samples: skip\n"));
  INFO(j.output);
  REQUIRE(j.rc == 0);
  const auto summary = nlohmann::json::parse(slurp(dir + "/out/summary.json"));
  CHECK(summary["skipped_samples"]["invalid"] == 3);
  CHECK(summary["skipped_samples"]["empty"] == 1);
  write_file(dir + "/m2.jsonl", R"({"messages": [{"role": "user", "content": "hi"}]})" "\n");
  expect_error(train("chat_bad", 1, chat_config(dir, good_chat), "--data.manifest=" + dir + "/m2.jsonl"),
               dir + "/m2.jsonl:1: no assistant turn: nothing to learn");
}

TEST_CASE("chat data: a malformed tokenizer, a missing one and a vocabulary too small for it") {
  const std::string dir = case_dir("chat_tok");
  const std::string cfg = chat_config(dir, good_chat);
  std::filesystem::create_directories(dir + "/broken");
  write_file(dir + "/broken/tokenizer.json", "{\"model\": ");
  expect_error(train("chat_tok", 1, cfg, "--data.tokenizer=" + dir + "/broken"), "data.tokenizer: " + dir + "/broken/tokenizer.json");
  expect_error(train("chat_tok", 1, cfg, "--data.tokenizer=" + dir + "/nowhere"), "data.tokenizer: " + dir + "/nowhere: not found");
  // 256 bytes + 11 merges + 3 specials = 270 ids (dense_lm takes no media: no placeholders)
  expect_error(train("chat_tok", 1, cfg, "--model.lm.vocab=260"), "model.lm.vocab: 260 is smaller than the 270 ids the data needs");
  expect_error(train("chat_tok", 1, cfg, "--model.name=omni_moe --model.lm.vocab=270"),
               "model.lm.vocab: 270 is smaller than the 274 ids the data needs (those of the tokenizer " + dir +
                   "/tokenizer.json, and its placeholders for media)");
}

TEST_CASE("pre-tokenized data: input_ids without labels train exactly as the text they spell") {
  const std::string dir = case_dir("pretok");
  std::string text, ids;
  for (const char* line : {"the sky is blue", "grass is green", "snow is white", "coal is black"}) {
    text += nlohmann::json{{"text", line}}.dump() + "\n";
    std::vector<int> v{256};  // the byte tokenizer's bos, the bytes, eos
    for (const char* c = line; *c; ++c) v.push_back(static_cast<unsigned char>(*c));
    v.push_back(257);
    ids += nlohmann::json{{"input_ids", v}}.dump() + "\n";
  }
  write_file(dir + "/text.jsonl", text);
  write_file(dir + "/ids.jsonl", ids);
  auto config = [&](const std::string& manifest, const std::string& out) {
    return "model:\n  name: dense_lm\ndata:\n  manifest: " + dir + "/" + manifest + "\n  eval_manifest: ''\n"
           "train:\n  output_dir: " + dir + "/" + out + "\n  max_steps: 5\n  global_batch_size: 4\n  save_checkpoints: false\n"
           "  export_safetensors: false\n";
  };
  const job a = train("pretok", 1, config("text.jsonl", "out_text"));
  const job b = train("pretok", 1, config("ids.jsonl", "out_ids"));
  INFO(a.output, b.output);
  REQUIRE(a.rc == 0);
  REQUIRE(b.rc == 0);
  const auto ma = metrics(dir + "/out_text"), mb = metrics(dir + "/out_ids");
  REQUIRE(ma.size() == 5);
  REQUIRE(mb.size() == 5);
  for (size_t i = 0; i < 5; ++i) {
    CHECK(ma[i]["loss"] == mb[i]["loss"]);
    CHECK(ma[i]["grad_norm"] == mb[i]["grad_norm"]);
  }
  // an id past the tokenizer is named with its line
  write_file(dir + "/bad.jsonl", ids + R"({"input_ids": [1, 2, 999]})" "\n");
  expect_error(train("pretok", 1, config("bad.jsonl", "out_bad")),
               dir + "/bad.jsonl:5: input_ids[2] = 999 is not a token of bytes");
}

// ---- threads (train/threads.hpp) --------------------------------------------------------------

namespace {
// choose_threads of: train.threads, OMP_NUM_THREADS (nullptr: unset), set by a launcher, CPUs, sharing ranks
veomni::train::thread_choice choose(long configured, const char* omp, bool launcher, long cpus, long sharing = 1) {
  veomni::train::thread_inputs in;
  in.configured = configured;
  if (omp) in.omp = omp;
  in.launcher_omp = launcher;
  in.cpus = cpus;
  in.sharing = sharing;
  return veomni::train::choose_threads(in);
}
}  // namespace

TEST_CASE("threads: train.threads wins, then the user's OMP_NUM_THREADS, then the CPUs over the ranks sharing them") {
  CHECK(choose(3, "8", false, 16, 2).threads == 3);
  CHECK(choose(3, nullptr, false, 16).why == "train.threads");
  const auto user = choose(0, "4", false, 16, 2);
  CHECK(user.threads == 4);
  CHECK(user.why == "OMP_NUM_THREADS=4");
  CHECK(choose(0, "6,2", false, 16).threads == 6);  // OpenMP's nested list: the first level is ours
  const auto mine = choose(0, nullptr, false, 16, 2);
  CHECK(mine.threads == 8);
  CHECK(mine.why == "16 CPUs in its affinity mask, shared by 2 local ranks");
  const auto launched = choose(0, "1", true, 16, 2);
  CHECK(launched.threads == 8);
  CHECK(contains(launched.why, "OMP_NUM_THREADS=1 is the launcher's default, train.threads overrides"));
  CHECK(choose(0, nullptr, false, 1, 4).threads == 1);  // never 0
  CHECK(choose(0, nullptr, false, 4).why == "4 CPUs in its affinity mask, not shared with another local rank");
  for (const char* bad : {"", "zero", "0", "-2", "3x"}) {
    INFO("OMP_NUM_THREADS=", bad);
    CHECK_THROWS_WITH_AS(choose(0, bad, false, 4),
                         ("OMP_NUM_THREADS: '" + std::string(bad) + "' is not a positive number of threads (unset it, or set train.threads)").c_str(),
                         std::invalid_argument);
  }
  // the launcher's default is "1" for several local ranks, from veomni-launch or torchrun
  using veomni::train::launcher_set_omp;
  CHECK(launcher_set_omp("1", "1", nullptr, 2));
  CHECK(launcher_set_omp("1", nullptr, "run-id", 4));
  CHECK_FALSE(launcher_set_omp("1", nullptr, nullptr, 2));  // set by the user
  CHECK_FALSE(launcher_set_omp("2", "1", nullptr, 2));
  CHECK_FALSE(launcher_set_omp("1", "1", nullptr, 1));
}

namespace {
std::string threads_config(const std::string& tag) {
  const std::string dir = case_dir(tag);
  return "model:\n  name: dense_lm\ndata:\n  type: synthetic\n  synthetic_seq_len: 16\n"
         "train:\n  output_dir: " + dir + "/out\n  max_steps: 1\n  global_batch_size: 4\n  save_checkpoints: false\n"
         "  export_safetensors: false\n";
}
std::string uses(int rank, long n, const std::string& why) {
  return "rank " + std::to_string(rank) + " uses " + std::to_string(n) + (n == 1 ? " thread (" : " threads (") + why + ")";
}
std::string cpus(long n) { return std::to_string(n) + (n == 1 ? " CPU" : " CPUs") + " in its affinity mask"; }
}  // namespace

TEST_CASE("threads: veomni-train at world 1, at 2 local ranks, bound to cores, and with train.threads" * doctest::timeout(120)) {
  const long n = veomni::train::count_cpus(veomni::train::affinity_words());  // ours, and so the ranks'
  MESSAGE("this process may run on ", n, " CPUs");
  ::unsetenv("OMP_NUM_THREADS");
  {
    const job j = train("thr_w1", 1, threads_config("thr_w1"));
    INFO(j.output);
    CHECK(j.rc == 0);
    CHECK(contains(j.output, uses(0, n, cpus(n) + ", not shared with another local rank")));
    CHECK(nlohmann::json::parse(slurp(tmp_root + "/thr_w1/out/summary.json"))["threads_per_rank_0"] == n);
  }
  {  // veomni-launch sets OMP_NUM_THREADS=1 for 2 ranks (as torchrun does): the CPUs are shared instead
    const job j = train("thr_w2", 2, threads_config("thr_w2"));
    INFO(j.output);
    CHECK(j.rc == 0);
    for (int r = 0; r < 2; ++r)
      CHECK(contains(j.output, uses(r, std::max(1L, n / 2),
                                    cpus(n) + ", shared by 2 local ranks; OMP_NUM_THREADS=1 is the launcher's default, train.threads overrides")));
  }
  if (n >= 2) {  // each rank on its own block of n / 2 CPUs: nothing shared
    const std::string dir = tmp_root + "/thr_bind";
    const job j = run("VEOMNI_COMM_TIMEOUT=60 " + launch_bin + " --nproc 2 --bind-cores --timeout 100 -- " + train_bin + " " +
                          (write_file(case_dir("thr_bind") + "/c.yaml", threads_config("thr_bind")), dir + "/c.yaml"),
                      "thr_bind_run");
    INFO(j.output);
    CHECK(j.rc == 0);
    for (int r = 0; r < 2; ++r)
      CHECK(contains(j.output, uses(r, n / 2, cpus(n / 2) + ", not shared with another local rank; OMP_NUM_THREADS=1 is the launcher's "
                                                             "default, train.threads overrides")));
  }
  {  // an explicit setting wins, over the launcher's default and the user's OMP_NUM_THREADS alike
    const job j = train("thr_set", 2, threads_config("thr_set"), "--train.threads=3");
    INFO(j.output);
    CHECK(j.rc == 0);
    for (int r = 0; r < 2; ++r) CHECK(contains(j.output, uses(r, 3, "train.threads")));
    ::setenv("OMP_NUM_THREADS", "2", 1);
    const job k = train("thr_set1", 1, threads_config("thr_set1"), "--train.threads=1");
    CHECK(contains(k.output, uses(0, 1, "train.threads")));
    const job u = train("thr_omp", 1, threads_config("thr_omp"));  // the user's own OMP_NUM_THREADS
    CHECK(contains(u.output, uses(0, 2, "OMP_NUM_THREADS=2")));
    ::setenv("OMP_NUM_THREADS", "lots", 1);
    expect_error(train("thr_bad", 1, threads_config("thr_bad")),
                 "OMP_NUM_THREADS: 'lots' is not a positive number of threads (unset it, or set train.threads)");
    ::unsetenv("OMP_NUM_THREADS");
  }
}

// ---- the loss curve (train/plot.hpp) ----------------------------------------------------------

namespace {
// The texts of an SVG's <tspan>s, character references decoded (ASCII).
std::string svg_texts(const std::string& svg) {
  std::string out;
  for (size_t a = svg.find("<tspan"); a != std::string::npos; a = svg.find("<tspan", a + 1)) {
    const size_t b = svg.find('>', a) + 1, e = svg.find("</tspan>", b);
    const std::string t = svg.substr(b, e - b);
    for (size_t i = 0; i < t.size(); ++i) {
      if (t.compare(i, 3, "&#x") == 0) {
        const size_t semi = t.find(';', i);
        const long c = std::stol(t.substr(i + 3, semi - i - 3), nullptr, 16);
        out += c < 128 ? static_cast<char>(c) : '?';
        i = semi;
      } else {
        out += t[i];
      }
    }
    out += '|';
  }
  return out;
}
// width and height from a PNG's IHDR
std::pair<long, long> png_size(const std::string& png) {
  auto be32 = [&](size_t at) {
    return (static_cast<long>(static_cast<unsigned char>(png[at])) << 24) | (static_cast<unsigned char>(png[at + 1]) << 16) |
           (static_cast<unsigned char>(png[at + 2]) << 8) | static_cast<unsigned char>(png[at + 3]);
  };
  return png.size() > 24 && png.compare(1, 3, "PNG") == 0 ? std::pair{be32(16), be32(20)} : std::pair{0L, 0L};
}
}  // namespace

TEST_CASE("plot: the layout follows the data: a log scale when the loss spans more than a decade") {
  using veomni::train::layout_of;
  veomni::train::loss_plot p;
  p.train = {{1, 8.0}, {2, 4.0}, {3, 2.5}};
  p.lr = {{1, 2e-4}, {2, 3e-4}, {3, 1e-4}};
  auto l = layout_of(p);
  CHECK_FALSE(l.log_y);
  CHECK(l.x0 == 1);
  CHECK(l.x1 == 3);
  CHECK(l.y0 <= 2.5);
  CHECK(l.y1 >= 8.0);
  CHECK(l.lr_unit == doctest::Approx(1e-4));
  p.eval = {{4, 0.5}};  // 8 / 0.5 > 10
  l = layout_of(p);
  CHECK(l.log_y);
  CHECK(l.x1 == 4);
  CHECK(l.y0 <= std::log10(0.5));
  CHECK(l.y1 >= std::log10(8.0));
  p.train.push_back({5, 0.0});  // a loss of 0 has no logarithm: linear
  CHECK_FALSE(layout_of(p).log_y);
  CHECK_FALSE(layout_of({}).log_y);  // nothing to draw: still a valid frame
  CHECK(layout_of({}).x1 > layout_of({}).x0);
}

TEST_CASE("plot: PNG and SVG with the run's name, axis titles and labelled series") {
  const std::string dir = case_dir("plot");
  veomni::train::loss_plot p;
  p.title = "dense_lm  (outputs/run)";
  for (int s = 1; s <= 200; ++s) {
    p.train.emplace_back(s, 6.0 * std::exp(-s / 30.0) + 0.05);
    p.lr.emplace_back(s, s < 20 ? 1e-3 * s / 20 : 1e-3);
  }
  p.eval = {{50, 0.5}, {100, 0.1}, {200, 0.06}};
  veomni::train::write_loss_plot(p, dir + "/c.png", dir + "/c.svg");
  CHECK(png_size(slurp(dir + "/c.png")) == std::pair{1000L, 700L});
  const std::string texts = svg_texts(slurp(dir + "/c.svg"));
  INFO(texts);
  for (const char* t : {"|dense_lm  (outputs/run)|", "|loss (log scale)|", "|training loss|", "|evaluation loss|", "|step|",
                        "|lr (x 1e-3)|"})
    CHECK(contains("|" + texts, t));
  // a short run: linear, and without held-out points the legend names the training loss alone
  p.train.resize(3), p.lr.resize(3), p.eval.clear();
  veomni::train::write_loss_plot(p, dir + "/d.png", dir + "/d.svg");
  const std::string lin = svg_texts(slurp(dir + "/d.svg"));
  CHECK(contains(lin, "|loss|"));
  CHECK_FALSE(contains(lin, "log scale"));
  CHECK_FALSE(contains(lin, "evaluation loss"));
  // an unwritable path is an error naming it, not an abort
  CHECK_THROWS_AS(veomni::train::write_loss_plot(p, dir + "/no/such/dir/c.png"), veomni::train::plot_error);
}
