#pragma once
// <veomni/train/data.hpp>: multimodal samples for the trainer.
//
//   manifest (JSONL) -> samples (tokens, targets, images, log-mel clips, image codes)
//   -> a deterministic order (a seeded permutation per epoch; the cursor is
//      the iterator state a checkpoint keeps)
//   -> global batches of train.global_batch_size samples
//   -> each data rank's share (samples d, d + D, ...), cut into micro-batches
//      by count or by token budget, packed padding-free, sliced over sp
//      (parallel/data.hpp).
//
// A manifest line (paths relative to the manifest's folder):
//   {"prompt": "<image>colour?", "answer": " red", "images": ["images/0001.png"]}
//   {"prompt": "<audio>digit?", "answer": " 7", "audio": ["audio/0001.wav"]}
//   {"prompt": "draw: red square, top left", "generate_image": "images/0002.png"}
//   {"text": "loss on every token of this"}
// "<image>" / "<audio>" in a prompt mark where each image / clip goes (in
// order; media without markers go first). The loss is on the answer (and the
// end-of-sequence token), or on every token of "text"; an image to generate
// becomes one placeholder per image_out patch with its colour code as target.
//
// Tokenizer: bytes (0..255) plus specials; the model's vocabulary must hold them.
// Images are decoded by stb_image (PNG, PPM, ...), WAV by libsndfile, and
// turned into Whisper-style log-mel frames (n_fft 256, hop 128, Hann).
#include <sndfile.h>
#include <stb/stb_image.h>  // Debian libstb-dev (link -lstb)
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../parallel/data.hpp"
#include "config.hpp"

namespace veomni::train {

struct data_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- tokenizer -------------------------------------------------------------------------

struct byte_tokenizer {
  static constexpr int64_t bos = 256, eos = 257, image = 258, audio = 259, gen = 260, pad = 261;
  static constexpr int64_t vocab_size = 262;

  static std::vector<int64_t> encode(const std::string& s) {
    std::vector<int64_t> out;
    out.reserve(s.size());
    for (unsigned char ch : s) out.push_back(ch);
    return out;
  }
  static std::string decode(const std::vector<int64_t>& ids) {
    std::string s;
    for (int64_t t : ids)
      if (t >= 0 && t < 256) s.push_back(static_cast<char>(t));
    return s;
  }
};

// ---- media ----------------------------------------------------------------------------

// What the model expects of its inputs.
struct media_spec {
  int64_t vision_patch = 4;   // image sides must be multiples of 2 * patch; tokens = (H/2p) * (W/2p)
  int64_t channels = 3;
  int64_t mel_bins = 16;
  int64_t audio_kernel = 3;   // audio tokens = frames after the stride-2 conv
  int64_t code_patch = 4;     // image_out patch; one code per patch
  int64_t codebook = 256;
  int64_t sample_rate = 8000;
  bool images = false, audio = false, generation = false;  // what the model can take
};

inline int64_t image_tokens(const media_spec& m, int64_t h, int64_t w) {
  return (h / (2 * m.vision_patch)) * (w / (2 * m.vision_patch));
}
inline int64_t audio_tokens(const media_spec& m, int64_t frames) {
  return (frames + 2 * (m.audio_kernel / 2) - m.audio_kernel) / 2 + 1;
}

// [C, H, W] floats in [0, 1].
inline at::Tensor load_image(const std::string& path, int64_t channels = 3) {
  int w = 0, h = 0, c = 0;
  unsigned char* px = stbi_load(path.c_str(), &w, &h, &c, static_cast<int>(channels));
  if (!px) throw data_error("image '" + path + "': " + (std::filesystem::exists(path) ? stbi_failure_reason() : "not found"));
  at::Tensor t = at::from_blob(px, {h, w, channels}, at::kByte).permute({2, 0, 1}).to(at::kFloat).div_(255.0).contiguous();
  stbi_image_free(px);
  return t;
}

// The colour code of each code_patch x code_patch patch (3 bits red, 3 green,
// 2 blue of the patch's mean colour): [H/p * W/p], row-major.
inline std::vector<int64_t> colour_codes(const at::Tensor& img, int64_t patch) {
  const int64_t h = img.size(1) / patch, w = img.size(2) / patch;
  const at::Tensor mean = img.reshape({img.size(0), h, patch, w, patch}).mean({2, 4});  // [C, h, w]
  std::vector<int64_t> out;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      auto q = [&](int64_t c, int levels) {
        return std::min<int64_t>(levels - 1, static_cast<int64_t>(mean[c][y][x].item<double>() * levels));
      };
      out.push_back(q(0, 8) << 5 | q(1, 8) << 2 | q(2, 4));
    }
  return out;
}

// Mono samples of a WAV file (libsndfile); its rate must be `rate`.
inline std::vector<float> load_wav(const std::string& path, int64_t rate) {
  if (!std::filesystem::exists(path)) throw data_error("audio '" + path + "': not found");
  SF_INFO info{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f) throw data_error("audio '" + path + "': " + sf_strerror(nullptr));
  std::vector<float> frames(static_cast<size_t>(info.frames * info.channels));
  sf_readf_float(f, frames.data(), info.frames);
  sf_close(f);
  if (info.samplerate != rate)
    throw data_error("audio '" + path + "': sample rate " + std::to_string(info.samplerate) +
                     " Hz, but data.sample_rate = " + std::to_string(rate));
  std::vector<float> mono(static_cast<size_t>(info.frames));
  for (sf_count_t i = 0; i < info.frames; ++i) {
    float s = 0;
    for (int c = 0; c < info.channels; ++c) s += frames[static_cast<size_t>(i * info.channels + c)];
    mono[static_cast<size_t>(i)] = s / static_cast<float>(info.channels);
  }
  return mono;
}

// Triangular mel filters [bins, n_fft/2 + 1] over 0 .. rate/2 (HTK mel scale).
inline at::Tensor mel_filters(int64_t bins, int64_t n_fft, int64_t rate) {
  auto mel = [](double hz) { return 2595.0 * std::log10(1.0 + hz / 700.0); };
  auto hz = [](double m) { return 700.0 * (std::pow(10.0, m / 2595.0) - 1.0); };
  const int64_t nf = n_fft / 2 + 1;
  at::Tensor fb = at::zeros({bins, nf});
  const double top = mel(rate / 2.0);
  std::vector<double> edges;
  for (int64_t i = 0; i < bins + 2; ++i) edges.push_back(hz(top * static_cast<double>(i) / static_cast<double>(bins + 1)));
  for (int64_t b = 0; b < bins; ++b)
    for (int64_t k = 0; k < nf; ++k) {
      const double f = static_cast<double>(k) * rate / n_fft;
      const double lo = edges[b], mid = edges[b + 1], hi = edges[b + 2];
      const double v = f < lo || f > hi ? 0.0 : f <= mid ? (f - lo) / (mid - lo) : (hi - f) / (hi - mid);
      fb[b][k] = v;
    }
  return fb;
}

// Log-mel frames [F, bins] of a clip: |STFT|^2 (n_fft 256, hop 128, Hann, no
// centering) through mel filters, log10, clamped to 8 below the clip's peak,
// scaled as Whisper does ((x + 4) / 4).
inline at::Tensor log_mel(const std::vector<float>& wav, int64_t bins, int64_t rate) {
  constexpr int64_t n_fft = 256, hop = 128;
  std::vector<float> x = wav;
  if (static_cast<int64_t>(x.size()) < n_fft) x.resize(n_fft, 0.0f);
  const at::Tensor sig = at::from_blob(x.data(), {static_cast<int64_t>(x.size())}, at::kFloat).clone();
  const at::Tensor spec = at::stft(sig, n_fft, hop, n_fft, at::hann_window(n_fft), false, true, true);  // [129, F]
  const at::Tensor power = at::view_as_real(spec).pow(2).sum(-1);
  at::Tensor m = at::matmul(mel_filters(bins, n_fft, rate), power).clamp_min(1e-10).log10();  // [bins, F]
  m = at::max(m, m.max() - 8.0);
  return ((m + 4.0) / 4.0).t().contiguous();
}

// ---- samples ----------------------------------------------------------------------------

namespace detail {
inline void add_tokens(std::vector<int64_t>& to, const std::vector<int64_t>& t) { to.insert(to.end(), t.begin(), t.end()); }
}  // namespace detail

// One manifest line -> one sample. `dir`: the manifest's folder. Throws data_error
// (without the line number: the caller adds it).
inline parallel::sample make_sample(const nlohmann::json& j, const std::filesystem::path& dir, const media_spec& m) {
  using tok = byte_tokenizer;
  if (!j.is_object()) throw data_error("expected a JSON object");
  static const std::vector<std::string> known{"prompt", "answer", "text", "images", "audio", "generate_image", "id", "kind"};
  for (const auto& [k, v] : j.items())
    if (std::find(known.begin(), known.end(), k) == known.end()) throw data_error("unknown field '" + k + "'");
  auto str = [&](const char* k) -> std::string {
    if (!j.contains(k)) return {};
    if (!j[k].is_string()) throw data_error(std::string("field '") + k + "' must be a string");
    return j[k].get<std::string>();
  };
  auto paths = [&](const char* k) {
    std::vector<std::string> out;
    if (!j.contains(k)) return out;
    if (!j[k].is_array()) throw data_error(std::string("field '") + k + "' must be a list of paths");
    for (const auto& p : j[k]) {
      if (!p.is_string()) throw data_error(std::string("field '") + k + "' must be a list of paths");
      out.push_back((dir / p.get<std::string>()).string());
    }
    return out;
  };
  parallel::sample s;
  const auto image_files = paths("images");
  const auto audio_files = paths("audio");
  if (!image_files.empty() && !m.images) throw data_error("this model takes no images");
  if (!audio_files.empty() && !m.audio) throw data_error("this model takes no audio");
  std::vector<int64_t> image_n, audio_n;
  for (const auto& f : image_files) {
    at::Tensor img = load_image(f, m.channels);
    if (img.size(1) % (2 * m.vision_patch) || img.size(2) % (2 * m.vision_patch))
      throw data_error("image '" + f + "' is " + std::to_string(img.size(2)) + "x" + std::to_string(img.size(1)) +
                       ", not a multiple of 2 * vision patch (" + std::to_string(2 * m.vision_patch) + ")");
    image_n.push_back(image_tokens(m, img.size(1), img.size(2)));
    s.images.push_back(img);
  }
  for (const auto& f : audio_files) {
    at::Tensor mel = log_mel(load_wav(f, m.sample_rate), m.mel_bins, m.sample_rate);
    audio_n.push_back(audio_tokens(m, mel.size(0)));
    s.audio.push_back(mel);
  }
  // prompt with its media placeholders
  std::vector<int64_t> tokens{tok::bos};
  const std::string text = str("text"), prompt = str("prompt"), answer = str("answer");
  if (!text.empty() && (!prompt.empty() || !answer.empty())) throw data_error("'text' goes without 'prompt' and 'answer'");
  size_t next_image = 0, next_audio = 0;
  auto put = [&](int64_t id, int64_t n) { tokens.insert(tokens.end(), static_cast<size_t>(n), id); };
  const std::string body = text.empty() ? prompt : text;
  const bool marked = body.find("<image>") != std::string::npos || body.find("<audio>") != std::string::npos;
  if (!marked) {
    for (; next_image < image_n.size(); ++next_image) put(tok::image, image_n[next_image]);
    for (; next_audio < audio_n.size(); ++next_audio) put(tok::audio, audio_n[next_audio]);
  }
  for (size_t i = 0; i < body.size();) {
    if (body.compare(i, 7, "<image>") == 0) {
      if (next_image >= image_n.size()) throw data_error("more <image> markers than images");
      put(tok::image, image_n[next_image++]);
      i += 7;
    } else if (body.compare(i, 7, "<audio>") == 0) {
      if (next_audio >= audio_n.size()) throw data_error("more <audio> markers than audio clips");
      put(tok::audio, audio_n[next_audio++]);
      i += 7;
    } else {
      tokens.push_back(static_cast<unsigned char>(body[i++]));
    }
  }
  if (next_image != image_n.size()) throw data_error("fewer <image> markers than images");
  if (next_audio != audio_n.size()) throw data_error("fewer <audio> markers than audio clips");
  // loss region: [loss_from, end) of the targets (targets[j] = tokens[j + 1])
  size_t loss_from = text.empty() ? tokens.size() : 1;
  if (!answer.empty() || !text.empty()) {
    detail::add_tokens(tokens, tok::encode(answer));
    tokens.push_back(tok::eos);
  }
  std::vector<int64_t> codes;
  if (j.contains("generate_image")) {
    if (!m.generation) throw data_error("this model does not generate images");
    if (!j["generate_image"].is_string()) throw data_error("field 'generate_image' must be a path");
    const std::string f = (dir / j["generate_image"].get<std::string>()).string();
    const at::Tensor img = load_image(f, m.channels);
    if (img.size(1) % m.code_patch || img.size(2) % m.code_patch)
      throw data_error("image '" + f + "' is not a multiple of the image_out patch (" + std::to_string(m.code_patch) + ")");
    codes = colour_codes(img, m.code_patch);
    for (int64_t c : codes)
      if (c >= m.codebook) throw data_error("image codes need model.image_out.codebook >= 256");
  }
  const size_t n_text = tokens.size();
  put(tok::gen, static_cast<int64_t>(codes.size()));
  s.tokens = tokens;
  s.targets.assign(tokens.size(), -100);
  if (!answer.empty() || !text.empty())
    for (size_t p = loss_from - 1; p + 1 < n_text; ++p) {
      const int64_t next = tokens[p + 1];
      if (next != tok::image && next != tok::audio) s.targets[p] = next;
    }
  if (!codes.empty()) {
    s.code_targets.assign(tokens.size(), -100);
    for (size_t i = 0; i < codes.size(); ++i) s.code_targets[n_text + i] = codes[i];
  }
  if (s.targets.size() == 1 && codes.empty()) throw data_error("empty sample (no prompt, answer or text)");
  return s;
}

struct dataset {
  std::vector<parallel::sample> samples;
  std::vector<std::string> kinds;  // the manifest's "kind" of each sample ("all" when absent), for per-kind evaluation
  long skipped_too_long = 0;
};

// Reads a JSONL manifest. Errors name the file and line:
//   "data/train.jsonl:12: malformed JSON: ..."   "data/train.jsonl:3: image 'data/images/x.png': not found"
inline dataset load_manifest(const std::string& path, const media_spec& m, long max_seq_len) {
  std::ifstream in(path);
  if (!in) throw data_error(path + ": cannot open the manifest");
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  dataset d;
  std::string line;
  long no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(no) + ": ";
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw data_error(where + "malformed JSON: " + e.what());
    }
    try {
      parallel::sample s = make_sample(j, dir, m);
      if (static_cast<long>(s.tokens.size()) > max_seq_len) {
        ++d.skipped_too_long;
        continue;
      }
      d.samples.push_back(std::move(s));
      d.kinds.push_back(j.contains("kind") && j["kind"].is_string() ? j["kind"].get<std::string>() : "all");
    } catch (const data_error& e) {
      throw data_error(where + e.what());
    } catch (const c10::Error& e) {
      throw data_error(where + e.what_without_backtrace());
    }
  }
  if (d.samples.empty()) throw data_error(path + ": no samples (" + std::to_string(d.skipped_too_long) + " longer than data.max_seq_len)");
  return d;
}

// Deterministic random samples for benchmarks (data.type: synthetic): counting
// runs of tokens, with images, clips and codes on some samples where the model takes them.
inline parallel::sample synthetic_sample(int64_t index, uint64_t seed, int64_t len, int64_t vocab, const media_spec& m) {
  at::Generator gen = at::detail::createCPUGenerator(seed * 1000003ULL + static_cast<uint64_t>(index));
  parallel::sample s;
  const int64_t top = std::min<int64_t>(vocab, byte_tokenizer::bos);  // never a special id
  int64_t t = at::randint(0, top, {1}, gen).item<int64_t>();
  if (m.images && index % 4 == 0) {
    const int64_t side = 4 * m.vision_patch;
    s.tokens.insert(s.tokens.end(), static_cast<size_t>(image_tokens(m, side, side)), byte_tokenizer::image);
    s.images.push_back(at::rand({m.channels, side, side}, gen));
  }
  if (m.audio && index % 3 == 1) {
    const at::Tensor mel = at::randn({16, m.mel_bins}, gen);
    s.tokens.insert(s.tokens.end(), static_cast<size_t>(audio_tokens(m, 16)), byte_tokenizer::audio);
    s.audio.push_back(mel);
  }
  while (static_cast<int64_t>(s.tokens.size()) < len) s.tokens.push_back(t), t = (t + 1) % top;
  const size_t n = s.tokens.size();
  for (size_t j = 0; j < n; ++j) {
    const int64_t next = j + 1 < n ? s.tokens[j + 1] : -100;
    s.targets.push_back(next == byte_tokenizer::image || next == byte_tokenizer::audio ? -100 : next);
  }
  if (m.generation && index % 4 == 2) {
    s.code_targets.assign(n, -100);
    for (size_t j = n - 4; j < n; ++j) s.code_targets[j] = static_cast<int64_t>((j * 37 + static_cast<size_t>(index)) % static_cast<size_t>(m.codebook));
  }
  return s;
}

// ---- order, batches, micro-batches ------------------------------------------------------

// The sample at global position `cursor` of the stream: epoch e = cursor / n
// walks a permutation of the dataset seeded by (seed, e).
class sample_order {
 public:
  sample_order(int64_t n, uint64_t seed) : n_(n), seed_(seed) {}
  int64_t at(int64_t cursor) {
    const int64_t e = cursor / n_;
    if (e != epoch_) {
      perm_.resize(static_cast<size_t>(n_));
      for (int64_t i = 0; i < n_; ++i) perm_[static_cast<size_t>(i)] = i;
      std::mt19937_64 rng(seed_ * 7919ULL + static_cast<uint64_t>(e));
      for (int64_t i = n_ - 1; i > 0; --i) {  // Fisher-Yates, spelled out: std::shuffle's order is the library's
        const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
        std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
      }
      epoch_ = e;
    }
    return perm_[static_cast<size_t>(cursor % n_)];
  }

 private:
  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
};

// Global target counts of a batch by loss term (what forward_backward's
// accumulation divides by).
inline std::map<std::string, double> target_counts(const std::vector<const parallel::sample*>& batch) {
  double lm = 0, codes = 0;
  for (const auto* s : batch) {
    for (int64_t t : s->targets) lm += t != -100;
    for (int64_t t : s->code_targets) codes += t != -100;
  }
  return {{"lm", lm}, {"image_codes", codes}};
}

// Cuts each data rank's share into micro-batches: by count (micro_batch_size;
// 0 = the whole share), or greedily by token budget (a sample larger than the
// budget goes alone). Every rank runs the same number of micro-batches (the
// largest any data rank needs): the collectives of a micro-batch involve all
// ranks. Returns, for data rank `data_index`, lists of indices into `global`.
inline std::vector<std::vector<size_t>> micro_batches(const std::vector<const parallel::sample*>& global, long data_index,
                                                      long data_size, long micro_batch_size, long token_budget) {
  auto split = [&](long d) {
    std::vector<std::vector<size_t>> out;
    long used = 0;
    for (size_t i = static_cast<size_t>(d); i < global.size(); i += static_cast<size_t>(data_size)) {
      const long len = static_cast<long>(global[i]->tokens.size());
      const bool full = out.empty() || (token_budget > 0 ? used + len > token_budget
                                                         : micro_batch_size > 0 &&
                                                               static_cast<long>(out.back().size()) >= micro_batch_size);
      if (full) out.emplace_back(), used = 0;
      out.back().push_back(i);
      used += len;
    }
    return out;
  };
  size_t most = 0;
  for (long d = 0; d < data_size; ++d) most = std::max(most, split(d).size());
  auto mine = split(data_index);
  mine.resize(std::max<size_t>(most, 1));  // empty micro-batches: the rank runs a target-free dummy
  return mine;
}

// A micro-batch with no data: one padding token per sp rank, no targets, not
// counted as tokens by the MoE routers.
inline nn::batch empty_micro_batch(long sp, int64_t image_token, int64_t audio_token) {
  parallel::sample s;
  s.tokens.assign(static_cast<size_t>(sp), byte_tokenizer::pad);
  s.targets.assign(static_cast<size_t>(sp), -100);
  nn::batch b = parallel::pack({&s}, sp, image_token, audio_token);
  b.token_mask = at::zeros({sp});
  return b;
}

}  // namespace veomni::train
