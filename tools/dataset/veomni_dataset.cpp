// veomni-dataset: writes veomni's bundled default dataset — deterministic (a
// seed), offline, small enough to learn on two CPU cores in minutes.
//
//   veomni-dataset --out data/default [--train 2400] [--eval 240] [--seed 1]
//
// What it holds (one JSONL line per sample, "kind" names the task):
//   images   16x16 PNGs: a red, green, blue or yellow square, circle or
//            triangle in one of four quadrants, with jitter, shade and noise
//   audio    0.27 s 8 kHz WAV clips: a tone whose pitch (mel-spaced) encodes a digit
//   caption  <image>describe: -> " red square, top left"
//   colour   <image>colour?   -> " red"        shape  <image>shape? -> " circle"
//   where    <image>where?    -> " bottom right"
//   digit    <audio>digit?    -> " 7"          word   <audio>word?  -> " seven"
//   sum      "3+4="           -> " 7"          (text only)
//   generate "draw: blue circle, top right" -> the clean image, as colour codes
// Written: OUT/train.jsonl, OUT/eval.jsonl (held out: new draws), OUT/images/, OUT/audio/.
#include <sndfile.h>
#include <stb/stb_image_write.h>  // Debian libstb-dev (link -lstb)

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// Uniform draws spelled out (std::uniform_*_distribution's results are the library's choice).
struct rng {
  std::mt19937_64 g;
  explicit rng(uint64_t seed) : g(seed) {}
  double uniform() { return static_cast<double>(g() >> 11) * (1.0 / 9007199254740992.0); }
  int below(int n) { return static_cast<int>(g() % static_cast<uint64_t>(n)); }
};

const char* const colours[] = {"red", "green", "blue", "yellow"};
const unsigned char rgb[4][3] = {{220, 40, 40}, {40, 200, 60}, {50, 80, 230}, {230, 210, 40}};
const char* const shapes[] = {"square", "circle", "triangle"};
const char* const places[] = {"top left", "top right", "bottom left", "bottom right"};
const char* const words[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};

constexpr int side = 16;

// One shape in one quadrant; `clean`: no jitter, shade or noise (generation targets).
std::vector<unsigned char> draw(int colour, int shape, int place, bool clean, rng& r) {
  std::vector<unsigned char> px(side * side * 3);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<unsigned char>(clean ? 24 : 16 + r.below(20));
  const int jx = clean ? 0 : r.below(3) - 1, jy = clean ? 0 : r.below(3) - 1;
  const double shade = clean ? 1.0 : 0.8 + 0.2 * r.uniform();
  const double cx = (place % 2) * 8 + 3.5 + jx, cy = (place / 2) * 8 + 3.5 + jy;
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x) {
      const double dx = x - cx, dy = y - cy;
      bool in = false;
      if (shape == 0) in = std::abs(dx) <= 2.6 && std::abs(dy) <= 2.6;
      if (shape == 1) in = dx * dx + dy * dy <= 9.0;
      if (shape == 2) in = dy >= -3 && dy <= 2.6 && std::abs(dx) <= (dy + 3.0) * 0.55;
      if (!in) continue;
      for (int k = 0; k < 3; ++k) {
        const double noise = clean ? 0 : r.uniform() * 16 - 8;
        px[static_cast<size_t>((y * side + x) * 3 + k)] =
            static_cast<unsigned char>(std::clamp(rgb[colour][k] * shade + noise, 0.0, 255.0));
      }
    }
  return px;
}

// Mel-spaced tone frequencies (300 .. 3500 Hz) so that 16 mel bins tell the digits apart.
double digit_hz(int d) {
  auto mel = [](double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); };
  const double m = mel(300) + (mel(3500) - mel(300)) * d / 9.0;
  return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0);
}

void write_wav(const fs::path& path, int digit, rng& r) {
  constexpr int rate = 8000, n = 256 + 15 * 128;  // 16 log-mel frames (n_fft 256, hop 128)
  const double hz = digit_hz(digit) * (0.98 + 0.04 * r.uniform()), amp = 0.3 + 0.5 * r.uniform();
  std::vector<float> s(n);
  for (int i = 0; i < n; ++i) {
    const double env = std::min(1.0, std::min(i, n - i) / 200.0);
    s[static_cast<size_t>(i)] =
        static_cast<float>(amp * env * std::sin(2 * std::numbers::pi * hz * i / rate) + 0.02 * (r.uniform() * 2 - 1));
  }
  SF_INFO info{};
  info.samplerate = rate;
  info.channels = 1;
  info.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
  SNDFILE* f = sf_open(path.string().c_str(), SFM_WRITE, &info);
  if (!f) throw std::runtime_error("cannot write " + path.string() + ": " + sf_strerror(nullptr));
  sf_writef_float(f, s.data(), n);
  sf_close(f);
}

void write_split(const fs::path& out, const std::string& split, int count, uint64_t seed) {
  rng r(seed);
  std::ofstream jsonl(out / (split + ".jsonl"));
  const char* const kinds[] = {"caption", "colour", "shape", "where", "digit", "word", "sum", "generate"};
  for (int i = 0; i < count; ++i) {
    const std::string kind = kinds[i % 8];
    char id[64];
    std::snprintf(id, sizeof id, "%s_%05d", split.c_str(), i);
    nlohmann::ordered_json j;
    j["id"] = id;
    j["kind"] = kind;
    const int c = r.below(4), s = r.below(3), p = r.below(4), d = r.below(10);
    const std::string what = std::string(colours[c]) + " " + shapes[s] + ", " + places[p];
    if (kind == "caption" || kind == "colour" || kind == "shape" || kind == "where") {
      const std::string img = std::string("images/") + id + ".png";
      const auto px = draw(c, s, p, false, r);
      stbi_write_png((out / img).string().c_str(), side, side, 3, px.data(), side * 3);
      j["images"] = {img};
      if (kind == "caption") j["prompt"] = "<image>describe:", j["answer"] = " " + what;
      if (kind == "colour") j["prompt"] = "<image>colour?", j["answer"] = std::string(" ") + colours[c];
      if (kind == "shape") j["prompt"] = "<image>shape?", j["answer"] = std::string(" ") + shapes[s];
      if (kind == "where") j["prompt"] = "<image>where?", j["answer"] = std::string(" ") + places[p];
    } else if (kind == "digit" || kind == "word") {
      const std::string wav = std::string("audio/") + id + ".wav";
      write_wav(out / wav, d, r);
      j["audio"] = {wav};
      j["prompt"] = kind == "digit" ? "<audio>digit?" : "<audio>word?";
      j["answer"] = " " + (kind == "digit" ? std::to_string(d) : std::string(words[d]));
    } else if (kind == "sum") {
      const int a = r.below(5), b = r.below(5);
      j["prompt"] = std::to_string(a) + "+" + std::to_string(b) + "=";
      j["answer"] = " " + std::to_string(a + b);
    } else {  // generate: the clean image is the target
      const std::string img = std::string("images/") + id + ".png";
      const auto px = draw(c, s, p, true, r);
      stbi_write_png((out / img).string().c_str(), side, side, 3, px.data(), side * 3);
      j["prompt"] = "draw: " + what;
      j["generate_image"] = img;
    }
    jsonl << j.dump() << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "data/default";
  int train = 2400, eval = 240;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "veomni-dataset: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    try {
      if (a == "--out") out = value();
      else if (a == "--train") train = std::stoi(value());
      else if (a == "--eval") eval = std::stoi(value());
      else if (a == "--seed") seed = std::stoull(value());
      else if (a == "--help" || a == "-h") {
        std::printf("usage: veomni-dataset [--out DIR] [--train N] [--eval N] [--seed S]\n");
        return 0;
      } else {
        std::fprintf(stderr, "veomni-dataset: unknown argument '%s'\n", a.c_str());
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "veomni-dataset: %s: not a number\n", a.c_str());
      return 2;
    }
  }
  try {
    const fs::path root(out);
    fs::create_directories(root / "images");
    fs::create_directories(root / "audio");
    write_split(root, "train", train, seed);
    write_split(root, "eval", eval, seed + 1000);
    std::printf("veomni-dataset: %d training and %d held-out samples in %s (train.jsonl, eval.jsonl)\n", train, eval,
                out.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "veomni-dataset: %s\n", e.what());
    return 1;
  }
  return 0;
}
