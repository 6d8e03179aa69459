// Bad data: every bad manifest line — malformed JSON, missing, corrupt or
// non-WAV media, an empty sample, an over-long one — stops veomni-train with
// exit 2 and a message naming the file and line, on every rank, before any
// collective. Under data.bad_samples: skip such lines are skipped, counted by
// reason, and reported (the start-up line, summary.json); a manifest left
// without samples is still an error. The bundled dataset has no bad line
// under the shipped config.
#include <doctest/doctest.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "harness.hpp"

using namespace veomni::testing;

namespace {

// A config over `manifest` that trains one step if the data passes.
std::string data_config(const std::string& tag, const std::string& manifest, const std::string& data_extra = "",
                        const std::string& eval_manifest = "''") {
  return "model:\n  name: omni_moe\n"
         "data:\n  manifest: " + manifest + "\n  eval_manifest: " + eval_manifest + "\n" + data_extra +
         "train:\n  output_dir: " + tmp_root + "/" + tag + "/out\n  max_steps: 1\n  global_batch_size: 4\n"
         "  peak_flops_per_rank: 1e9\n  save_checkpoints: false\n  export_safetensors: false\n";
}

const std::string good = R"({"text": "fine"})";

// A manifest of a good line then `bad` (line 2): veomni-train exits 2 naming m.jsonl:2 and `message`.
void expect_bad_line(const std::string& tag, const std::string& bad, const std::string& message) {
  const std::string dir = tmp_root + "/" + tag;
  write_file(dir + "/m.jsonl", good + "\n" + bad + "\n");
  expect_error(train(tag, 1, data_config(tag, dir + "/m.jsonl")), "veomni-train: error: " + dir + "/m.jsonl:2: " + message);
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(g() & 0xff);
  return s;
}

// A mono 8 kHz IEEE-float WAV (format 3) of `samples`: a 44-byte header, then the floats.
std::string float_wav(const std::vector<float>& samples) {
  auto u32 = [](uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; };
  auto u16 = [](uint16_t v) { return std::string{char(v), char(v >> 8)}; };
  const uint32_t bytes = static_cast<uint32_t>(samples.size() * 4);
  std::string w = "RIFF" + u32(36 + bytes) + "WAVE" + "fmt " + u32(16) + u16(3) + u16(1) + u32(8000) + u32(32000) + u16(4) + u16(32) +
                  "data" + u32(bytes);
  w.append(reinterpret_cast<const char*>(samples.data()), bytes);
  return w;
}

}  // namespace

TEST_SUITE("data") {
TEST_CASE("a malformed JSON line and a line that is not an object" * doctest::timeout(60)) {
  case_dir("bad_json");
  expect_bad_line("bad_json", R"({"text": "broken")", "malformed JSON: ");
  case_dir("bad_array");
  expect_bad_line("bad_array", R"(["text", "fine"])", "expected a JSON object");
  case_dir("bad_type");
  expect_bad_line("bad_type", R"({"prompt": "q", "answer": 7})", "field 'answer' must be a string");
}

TEST_CASE("a missing image, and a folder given as an image" * doctest::timeout(60)) {
  const std::string dir = case_dir("bad_missing");
  expect_bad_line("bad_missing", R"({"prompt": "<image>colour?", "answer": " red", "images": ["nope.png"]})",
                  "image '" + dir + "/nope.png': not found");
  std::filesystem::create_directories(dir + "/folder.png");
  expect_bad_line("bad_missing", R"({"prompt": "<image>colour?", "answer": " red", "images": ["folder.png"]})",
                  "image '" + dir + "/folder.png': not a file");
}

TEST_CASE("a corrupt image: random bytes, a truncated PNG, a header claiming 10000 x 10000 pixels" * doctest::timeout(60)) {
  const std::string dir = case_dir("bad_image");
  const std::string data = small_dataset(dir);
  write_file(dir + "/noise.png", random_bytes(600, 1));
  expect_bad_line("bad_image", R"({"prompt": "<image>colour?", "answer": " red", "images": ["noise.png"]})",
                  "image '" + dir + "/noise.png': corrupt or not an image (");
  const std::string png = slurp(data + "/images/train_00000.png");
  REQUIRE(png.size() > 60);
  write_file(dir + "/cut.png", png.substr(0, png.size() / 2));
  expect_bad_line("bad_image", R"({"prompt": "<image>colour?", "answer": " red", "images": ["cut.png"]})",
                  "image '" + dir + "/cut.png': corrupt or not an image (");
  // the PNG signature and an IHDR chunk that claims 10000 x 10000 RGB pixels: refused before decoding
  const std::string huge = std::string("\x89PNG\r\n\x1a\n", 8) + std::string("\0\0\0\x0dIHDR", 8) + std::string("\0\0\x27\x10\0\0\x27\x10", 8) +
                           std::string("\x08\x02\0\0\0", 5) + std::string("\0\0\0\0", 4);
  write_file(dir + "/huge.png", huge);
  expect_bad_line("bad_image", R"({"prompt": "<image>colour?", "answer": " red", "images": ["huge.png"]})",
                  "image '" + dir + "/huge.png': its header says 10000x10000 pixels");
  // an image to generate goes through the same checks
  expect_bad_line("bad_image", R"({"prompt": "draw", "generate_image": "noise.png"})", "image '" + dir + "/noise.png': corrupt or not an image (");
}

TEST_CASE("corrupt audio: random bytes, text and a PNG named .wav, NaN samples" * doctest::timeout(60)) {
  const std::string dir = case_dir("bad_audio");
  const std::string data = small_dataset(dir);
  write_file(dir + "/noise.wav", random_bytes(4000, 2));
  expect_bad_line("bad_audio", R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["noise.wav"]})",
                  "audio '" + dir + "/noise.wav': corrupt or not a WAV file (");
  write_file(dir + "/text.wav", "just some text, not a sound\n");
  expect_bad_line("bad_audio", R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["text.wav"]})",
                  "audio '" + dir + "/text.wav': corrupt or not a WAV file (");
  std::filesystem::copy_file(data + "/images/train_00000.png", dir + "/image.wav");
  expect_bad_line("bad_audio", R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["image.wav"]})",
                  "audio '" + dir + "/image.wav': corrupt or not a WAV file (");
  std::vector<float> wave(2000, 0.25f);
  wave[1000] = std::numeric_limits<float>::quiet_NaN();
  write_file(dir + "/nan.wav", float_wav(wave));
  expect_bad_line("bad_audio", R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["nan.wav"]})",
                  "audio '" + dir + "/nan.wav': NaN or infinite samples");
  wave[1000] = 0.5f;  // the same file without the NaN reads (so the case above tests the NaN)
  write_file(dir + "/fine.wav", float_wav(wave));
  write_file(dir + "/ok.jsonl", good + "\n" + R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["fine.wav"]})" + "\n");
  const job ok = train("bad_audio_ok", 1, data_config("bad_audio_ok", dir + "/ok.jsonl"));
  INFO(ok.output);
  CHECK(ok.rc == 0);
  CHECK(contains(ok.output, "veomni-train: 2 training samples, 0 held out"));
}

TEST_CASE("empty samples: {}, no prompt, nothing to learn, an empty path" * doctest::timeout(60)) {
  case_dir("bad_empty");
  expect_bad_line("bad_empty", "{}", "empty sample (no prompt, answer, text, messages or generate_image)");
  expect_bad_line("bad_empty", R"({"id": 7, "kind": "sum"})", "empty sample (no prompt, answer, text, messages or generate_image)");
  expect_bad_line("bad_empty", R"({"text": ""})", "empty sample (no prompt, answer, text, messages or generate_image)");
  expect_bad_line("bad_empty", R"({"answer": " 7"})", "no prompt: an 'answer' or 'generate_image' needs a 'prompt' or media");
  expect_bad_line("bad_empty", R"({"prompt": "3+4="})", "nothing to learn: a prompt needs an 'answer' or 'generate_image'");
  expect_bad_line("bad_empty", R"({"prompt": "<image>?", "answer": " x", "images": [""]})", "field 'images' holds an empty path");
}

TEST_CASE("an over-long sample names its file, line and lengths, on every rank before any collective" * doctest::timeout(90)) {
  const std::string dir = case_dir("bad_long");
  write_file(dir + "/m.jsonl", good + "\n" + R"({"text": ")" + std::string(300, 'x') + "\"}\n");
  const std::string cfg = data_config("bad_long", dir + "/m.jsonl");
  // bos + 300 bytes + eos
  const std::string message = dir + "/m.jsonl:2: sample has 302 tokens, data.max_seq_len = 256";
  expect_error(train("bad_long", 1, cfg), "veomni-train: error: " + message);
  expect_error(train("bad_long", 2, cfg), message, 2);
  expect_error_on_each_rank("bad_long", "", message);
  // a bad eval manifest line is named the same way
  write_file(dir + "/good.jsonl", good + "\n");
  expect_error(train("bad_long_eval", 1, data_config("bad_long_eval", dir + "/good.jsonl", "", dir + "/m.jsonl")),
               "veomni-train: error: " + message);
  // and a larger data.max_seq_len takes it
  const job ok = train("bad_long", 1, cfg, "--data.max_seq_len=302");
  INFO(ok.output);
  CHECK(ok.rc == 0);
}

TEST_CASE("data.bad_samples: skip skips bad lines, counts them by reason, reports them" * doctest::timeout(120)) {
  const std::string dir = case_dir("skip");
  const std::string data = dir + "/data";
  REQUIRE(std::system((dataset_bin + " --out " + data + " --train 16 --eval 8 > /dev/null").c_str()) == 0);
  write_file(data + "/noise.png", random_bytes(600, 3));
  write_file(data + "/noise.wav", random_bytes(4000, 4));
  std::string train_lines = slurp(data + "/train.jsonl");
  train_lines += R"({"text": "broken)" "\n";                                                                  // malformed_json
  train_lines += R"({"prompt": "<image>colour?", "answer": " red", "images": ["images/none.png"]})" "\n";  // missing_media
  train_lines += R"({"prompt": "<image>colour?", "answer": " red", "images": ["noise.png"]})" "\n";        // corrupt_image
  train_lines += R"({"prompt": "draw", "generate_image": "noise.png"})" "\n";                              // corrupt_image
  train_lines += R"({"prompt": "<audio>digit?", "answer": " 7", "audio": ["noise.wav"]})" "\n";          // corrupt_audio
  train_lines += "{}\n";                                                                                      // empty
  train_lines += R"({"prompt": "3+4="})" "\n";                                                               // empty
  train_lines += R"({"txt": "typo"})" "\n";                                                                  // invalid
  train_lines += R"({"text": ")" + std::string(300, 'y') + "\"}\n";                                         // too_long
  train_lines += R"({"text": ")" + std::string(260, 'z') + "\"}\n";                                         // too_long
  write_file(data + "/train_bad.jsonl", train_lines);
  write_file(data + "/eval_bad.jsonl", slurp(data + "/eval.jsonl") + "{}\n");
  const std::string cfg = data_config("skip", data + "/train_bad.jsonl", "  bad_samples: skip\n", data + "/eval_bad.jsonl");
  // the default (error) stops at the first bad line: line 17
  expect_error(train("skip", 1, cfg, "--data.bad_samples=error"), data + "/train_bad.jsonl:17: malformed JSON");
  const job j = train("skip", 1, cfg);
  INFO(j.output);
  REQUIRE(j.rc == 0);
  CHECK(contains(j.output,
                 "veomni-train: 16 training samples (bad lines skipped: 1 corrupt_audio, 2 corrupt_image, 2 empty, 1 invalid, "
                 "1 malformed_json, 1 missing_media, 2 too_long), 8 held out (bad lines skipped: 1 empty)\n"));
  const auto summary = nlohmann::json::parse(slurp(dir + "/out/summary.json"));
  const nlohmann::json expected = {{"corrupt_audio", 1}, {"corrupt_image", 2}, {"empty", 2}, {"invalid", 1},
                                   {"malformed_json", 1}, {"missing_media", 1}, {"too_long", 2}};
  CHECK(summary["skipped_samples"] == expected);
  CHECK(summary["eval_skipped_samples"] == nlohmann::json{{"empty", 1}});
  // the same good lines alone train to the same loss: the skipped lines left no trace
  const job clean = train("skip_clean", 1, data_config("skip_clean", data + "/train.jsonl", "", data + "/eval.jsonl"));
  INFO(clean.output);
  REQUIRE(clean.rc == 0);
  CHECK(contains(clean.output, "veomni-train: 16 training samples, 8 held out\n"));
  const auto a = metrics(dir + "/out"), b = metrics(tmp_root + "/skip_clean/out");
  REQUIRE(a.size() == 1);
  REQUIRE(b.size() == 1);
  CHECK(a[0]["loss"] == b[0]["loss"]);
  const auto clean_summary = nlohmann::json::parse(slurp(tmp_root + "/skip_clean/out/summary.json"));
  CHECK(clean_summary["skipped_samples"] == nlohmann::json::object());
}

TEST_CASE("data.bad_samples: skip with every line bad is still an error, and a wrong value is a config error" * doctest::timeout(60)) {
  const std::string dir = case_dir("skip_all");
  write_file(dir + "/m.jsonl", std::string("{}\n{\"text\": \"broken\n") + R"({"text": ")" + std::string(300, 'x') + "\"}\n");
  expect_error(train("skip_all", 1, data_config("skip_all", dir + "/m.jsonl", "  bad_samples: skip\n")),
               "veomni-train: error: " + dir + "/m.jsonl: no samples (3 bad lines skipped: 1 empty, 1 malformed_json, 1 too_long)");
  expect_error(train("skip_all", 1, data_config("skip_all", dir + "/m.jsonl"), "--data.bad_samples=ignore"),
               "veomni-train: error: data.bad_samples: 'ignore' is not one of error | skip");
}

TEST_CASE("the bundled dataset has no bad or over-long line under the shipped omni_moe config" * doctest::timeout(120)) {
  const std::string dir = case_dir("bundled");
  const std::string data = dir + "/default";
  REQUIRE(std::system((dataset_bin + " --out " + data + " > /dev/null").c_str()) == 0);  // README's first command's size
  const std::string shipped = VEOMNI_TEST_SOURCE_DIR "/configs/omni_moe.yaml";
  REQUIRE(std::filesystem::exists(shipped));
  // the shipped config as is (data.max_seq_len, data.bad_samples: error), on one rank, for one step
  const job j = run(train_bin + " " + shipped + " --data.manifest=" + data + "/train.jsonl --data.eval_manifest=" + data +
                        "/eval.jsonl --train.output_dir=" + dir + "/out --train.max_steps=1 --train.accelerator.ulysses_size=1 "
                        "--train.accelerator.ep_size=1 --train.save_checkpoints=false --train.export_safetensors=false "
                        "--train.peak_flops_per_rank=1e9",
                    "bundled_run");
  INFO(j.output);
  CHECK(j.rc == 0);
  CHECK(contains(j.output, "veomni-train: 2400 training samples, 240 held out\n"));
}
}  // TEST_SUITE("data")
