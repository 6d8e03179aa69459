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
// A manifest line (manifest.hpp, torch-free, parses and checks it):
//   {"prompt": "<image>colour?", "answer": " red", "images": ["images/0001.png"]}
// Bad lines (malformed, empty, missing or corrupt media, over-long) are errors
// naming the file and line; under data.bad_samples: skip they are skipped and
// counted by reason (dataset::skipped).
//
// Tokenizer (manifest.hpp's vocabulary): bytes (0..255) plus specials, or a Hugging Face
// tokenizer.json (data.tokenizer; vocabulary.hpp); the model's vocabulary must hold its ids.
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
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../parallel/data.hpp"
#include "config.hpp"
#include "manifest.hpp"

namespace veomni::train {

namespace detail {
// A media file must be there and be a file: both are missing_media.
inline void check_media_file(const char* what, const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) throw data_error(std::string(what) + " '" + path + "': not found", bad_sample::missing_media);
  if (!std::filesystem::is_regular_file(st))
    throw data_error(std::string(what) + " '" + path + "': not a file", bad_sample::missing_media);
}
inline std::string stbi_reason() {
  const char* r = stbi_failure_reason();
  return r ? r : "unknown error";
}
}  // namespace detail

// The most pixels (and the most audio samples) veomni reads: a damaged header
// can claim 2^24 x 2^24 pixels, and decoding it would exhaust memory.
inline constexpr int64_t max_image_pixels = int64_t{1} << 24;
inline constexpr int64_t max_audio_samples = int64_t{1} << 26;

// [C, H, W] floats in [0, 1].
inline at::Tensor load_image(const std::string& path, int64_t channels = 3) {
  detail::check_media_file("image", path);
  int w = 0, h = 0, c = 0;
  if (!stbi_info(path.c_str(), &w, &h, &c))
    throw data_error("image '" + path + "': corrupt or not an image (" + detail::stbi_reason() + ")", bad_sample::corrupt_image);
  if (w < 1 || h < 1 || int64_t{w} * h > max_image_pixels)
    throw data_error("image '" + path + "': its header says " + std::to_string(w) + "x" + std::to_string(h) + " pixels (at most " +
                         std::to_string(max_image_pixels) + " are read)",
                     bad_sample::corrupt_image);
  unsigned char* px = stbi_load(path.c_str(), &w, &h, &c, static_cast<int>(channels));
  if (!px) throw data_error("image '" + path + "': corrupt or not an image (" + detail::stbi_reason() + ")", bad_sample::corrupt_image);
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
  detail::check_media_file("audio", path);
  SF_INFO info{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f) throw data_error("audio '" + path + "': corrupt or not a WAV file (" + sf_strerror(nullptr) + ")", bad_sample::corrupt_audio);
  if (info.channels < 1 || info.frames < 1 || info.frames > max_audio_samples / info.channels) {
    sf_close(f);
    throw data_error("audio '" + path + "': its header says " + std::to_string(info.frames) + " frames of " +
                         std::to_string(info.channels) + " channel(s) (1 to " + std::to_string(max_audio_samples) +
                         " samples are read)",
                     bad_sample::corrupt_audio);
  }
  std::vector<float> frames(static_cast<size_t>(info.frames * info.channels));
  const sf_count_t got = sf_readf_float(f, frames.data(), info.frames);
  sf_close(f);
  if (got < 1) throw data_error("audio '" + path + "': no samples could be read", bad_sample::corrupt_audio);
  if (info.samplerate != rate)
    throw data_error("audio '" + path + "': sample rate " + std::to_string(info.samplerate) +
                         " Hz, but data.sample_rate = " + std::to_string(rate),
                     bad_sample::unsupported_media);
  std::vector<float> mono(static_cast<size_t>(got));
  for (sf_count_t i = 0; i < got; ++i) {
    float s = 0;
    for (int c = 0; c < info.channels; ++c) s += frames[static_cast<size_t>(i * info.channels + c)];
    if (!std::isfinite(s)) throw data_error("audio '" + path + "': NaN or infinite samples", bad_sample::corrupt_audio);
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

// One checked manifest line -> one sample: reads its media and lays out its
// tokens. Throws data_error (without the line number: the caller adds it).
inline parallel::sample make_sample(const manifest_entry& e, const media_spec& m, const vocabulary& v = byte_vocabulary()) {
  parallel::sample s;
  std::vector<int64_t> image_n, audio_n;
  for (const auto& f : e.images) {
    at::Tensor img = load_image(f, m.channels);
    if (img.size(1) % (2 * m.vision_patch) || img.size(2) % (2 * m.vision_patch))
      throw data_error("image '" + f + "' is " + std::to_string(img.size(2)) + "x" + std::to_string(img.size(1)) +
                           ", not a multiple of 2 * vision patch (" + std::to_string(2 * m.vision_patch) + ")",
                       bad_sample::unsupported_media);
    image_n.push_back(image_tokens(m, img.size(1), img.size(2)));
    s.images.push_back(img);
  }
  for (const auto& f : e.audio) {
    at::Tensor mel = log_mel(load_wav(f, m.sample_rate), m.mel_bins, m.sample_rate);
    audio_n.push_back(audio_tokens(m, mel.size(0)));
    s.audio.push_back(mel);
  }
  std::vector<int64_t> codes;
  if (!e.generate_image.empty()) {
    const std::string& f = e.generate_image;
    const at::Tensor img = load_image(f, m.channels);
    if (img.size(1) % m.code_patch || img.size(2) % m.code_patch)
      throw data_error("image '" + f + "' is not a multiple of the image_out patch (" + std::to_string(m.code_patch) + ")",
                       bad_sample::unsupported_media);
    codes = colour_codes(img, m.code_patch);
    for (int64_t c : codes)
      if (c >= m.codebook) throw data_error("image codes need model.image_out.codebook >= 256", bad_sample::unsupported_media);
  }
  sample_layout l = lay_out(e, image_n, audio_n, codes.size(), v);
  s.tokens = std::move(l.tokens);
  s.targets = std::move(l.targets);
  if (!codes.empty()) {
    s.code_targets.assign(s.tokens.size(), -100);
    for (size_t i = 0; i < codes.size(); ++i) s.code_targets[l.codes_from + i] = codes[i];
  }
  return s;
}

// One manifest line, parsed as JSON, -> one sample. `dir`: the manifest's folder.
inline parallel::sample make_sample(const nlohmann::json& j, const std::filesystem::path& dir, const media_spec& m,
                                    const vocabulary& v = byte_vocabulary()) {
  return make_sample(parse_manifest_entry(j, dir, m, v), m, v);
}

struct dataset {
  std::vector<parallel::sample> samples;
  std::vector<std::string> kinds;          // the manifest's "kind" of each sample ("all" when absent), for per-kind evaluation
  std::map<std::string, long> skipped;     // data.bad_samples: skip — bad lines by reason (bad_sample::too_long, ...)
};

// "2 too_long, 1 corrupt_image"
inline std::string describe_skipped(const std::map<std::string, long>& skipped) {
  std::string out;
  for (const auto& [why, n] : skipped) out += (out.empty() ? "" : ", ") + std::to_string(n) + " " + why;
  return out;
}
inline long count_skipped(const std::map<std::string, long>& skipped) {
  long n = 0;
  for (const auto& kv : skipped) n += kv.second;
  return n;
}

// Reads a JSONL manifest. A bad line is an error naming the file and line:
//   "data/train.jsonl:12: malformed JSON: ..."   "data/train.jsonl:3: image 'data/images/x.png': not found"
//   "data/train.jsonl:7: sample has 300 tokens, data.max_seq_len = 256 ..."
// or, with skip_bad (data.bad_samples: skip), is skipped and counted by reason.
// A manifest left without samples is an error either way.
inline dataset load_manifest(const std::string& path, const media_spec& m, long max_seq_len, bool skip_bad = false,
                             const vocabulary& v = byte_vocabulary()) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw data_error(path + ": a folder, not a JSONL manifest");
  std::ifstream in(path);
  if (!in) throw data_error(path + ": cannot open the manifest");
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  dataset d;
  std::string line;
  long no = 0;
  while (std::getline(in, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      try {
        const manifest_entry e = parse_manifest_line(line, dir, m, v);
        parallel::sample s = make_sample(e, m, v);
        if (static_cast<long>(s.tokens.size()) > max_seq_len)
          throw data_error("sample has " + std::to_string(s.tokens.size()) + " tokens, data.max_seq_len = " + std::to_string(max_seq_len) +
                               " (raise data.max_seq_len, or set data.bad_samples: skip)",
                           bad_sample::too_long);
        d.samples.push_back(std::move(s));
        d.kinds.push_back(e.kind);
      } catch (const c10::Error& e) {
        throw data_error(e.what_without_backtrace());
      }
    } catch (const data_error& e) {
      if (!skip_bad) throw data_error(path + ":" + std::to_string(no) + ": " + e.what(), e.reason);
      ++d.skipped[e.reason];
    }
  }
  if (d.samples.empty())
    throw data_error(path + ": no samples" + (d.skipped.empty() ? std::string()
                                                               : " (" + std::to_string(count_skipped(d.skipped)) +
                                                                     " bad lines skipped: " + describe_skipped(d.skipped) + ")"));
  return d;
}

// Deterministic random samples for benchmarks (data.type: synthetic): counting
// runs of tokens, with images, clips and codes on some samples where the model takes them.
inline parallel::sample synthetic_sample(int64_t index, uint64_t seed, int64_t len, int64_t vocab, const media_spec& m,
                                         const vocabulary& v = byte_vocabulary()) {
  at::Generator gen = at::detail::createCPUGenerator(seed * 1000003ULL + static_cast<uint64_t>(index));
  parallel::sample s;
  // below bos and the placeholders (the byte tokenizer: bytes only; a tokenizer.json's special ids may occur)
  const int64_t top = std::min<int64_t>(vocab, v.bos >= 0 ? std::min(v.bos, v.image) : v.image);
  int64_t t = at::randint(0, top, {1}, gen).item<int64_t>();
  if (m.images && index % 4 == 0) {
    const int64_t side = 4 * m.vision_patch;
    s.tokens.insert(s.tokens.end(), static_cast<size_t>(image_tokens(m, side, side)), v.image);
    s.images.push_back(at::rand({m.channels, side, side}, gen));
  }
  if (m.audio && index % 3 == 1) {
    const at::Tensor mel = at::randn({16, m.mel_bins}, gen);
    s.tokens.insert(s.tokens.end(), static_cast<size_t>(audio_tokens(m, 16)), v.audio);
    s.audio.push_back(mel);
  }
  while (static_cast<int64_t>(s.tokens.size()) < len) s.tokens.push_back(t), t = (t + 1) % top;
  const size_t n = s.tokens.size();
  for (size_t j = 0; j < n; ++j) {
    const int64_t next = j + 1 < n ? s.tokens[j + 1] : -100;
    s.targets.push_back(next == v.image || next == v.audio ? -100 : next);
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
inline nn::batch empty_micro_batch(long sp, const vocabulary& v) {
  const int64_t image_token = v.image, audio_token = v.audio;
  parallel::sample s;
  s.tokens.assign(static_cast<size_t>(sp), v.pad);
  s.targets.assign(static_cast<size_t>(sp), -100);
  nn::batch b = parallel::pack({&s}, sp, image_token, audio_token);
  b.token_mask = at::zeros({sp});
  return b;
}

}  // namespace veomni::train
