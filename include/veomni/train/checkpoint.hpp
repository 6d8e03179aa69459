#pragma once
// <veomni/train/checkpoint.hpp>: sharded checkpoints that any mesh can load,
// and a consolidated safetensors export.
//
// A checkpoint is a folder written atomically (step_000100.tmp, renamed when
// every rank has written):
//   step_000100/rank_00003.safetensors   what rank 3 holds, as 1-D pieces named
//        "param:<name>:<begin>"        elements [begin, begin + len) of parameter <name>
//        "exp_avg:<name>:<begin>"      AdamW's first moment of the same elements
//        "exp_avg_sq:<name>:<begin>"   and its second
//     with metadata: step, data_cursor, adam_steps, world, mesh, model
//   step_000100/meta.json                 step, data cursor, world, mesh, model, and
//                                         "files": {name: {"bytes", "crc32"}} of every rank file (rank 0)
//   latest                                "step_000100" (written last, atomically)
// Every file is written under a temporary name, flushed to disk (fsync), then
// renamed. Old checkpoints are kept, or only the newest train.keep_checkpoints
// of them (prune_checkpoints: after a newer one is complete and verified,
// never the one `latest` names, never one being read). Before loading, verify_checkpoint checks
// meta.json, the set of rank files, and each file's size and CRC-32 (zlib):
// a truncated or damaged checkpoint is refused with a message naming the file,
// and choose_checkpoint("auto") then falls back to the newest one that verifies.
// Loading reads every rank file's header, and each rank copies the element
// ranges of the pieces it now holds, whatever mesh wrote them: a checkpoint
// written on 2 ranks loads on 1, 4, or another mix of dp_shard, sp and ep.
//
// safetensors, written by hand: an 8-byte little-endian header length, a JSON
// header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {..}} padded with spaces to 8 bytes, then the data.
#include <torch/torch.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <zlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/communicator.hpp"
#include "../nn/model.hpp"
#include "../parallel/storage.hpp"
#include "hf.hpp"

namespace veomni::train {

struct checkpoint_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- files written whole or not at all -----------------------------------------------------

// What a written file holds: its size and the CRC-32 (zlib) of all its bytes.
struct file_sum {
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const Bytef*>(p);
    for (size_t done = 0; done < n;) {  // zlib takes uInt lengths
      const uInt part = static_cast<uInt>(std::min<size_t>(n - done, 1u << 30));
      crc32 = static_cast<uint32_t>(::crc32(crc32, b + done, part));
      done += part;
    }
    bytes += n;
  }
};

inline file_sum sum_of_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw checkpoint_error(path + ": cannot open");
  file_sum s;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    s.add(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return s;
}

// Writes `path` as path.tmp, flushes it to the disk, renames it over `path`:
// a reader sees the old file or the whole new one, even after a crash.
// `fill` writes the bytes through the callback it is given.
inline file_sum write_file_atomically(const std::string& path, const std::function<void(const std::function<void(const void*, size_t)>&)>& fill) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw checkpoint_error("cannot write '" + tmp + "': " + std::strerror(errno));
  file_sum sum;
  bool ok = true;
  std::string error;
  fill([&](const void* p, size_t n) {
    sum.add(p, n);
    for (const char* b = static_cast<const char*>(p); ok && n > 0;) {
      const ssize_t w = ::write(fd, b, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) ok = false, error = std::strerror(errno);
      else b += w, n -= static_cast<size_t>(w);
    }
  });
  if (ok && ::fsync(fd) != 0) ok = false, error = std::strerror(errno);
  ::close(fd);
  if (!ok) {
    std::filesystem::remove(tmp);
    throw checkpoint_error("writing '" + tmp + "' failed: " + error);
  }
  std::filesystem::rename(tmp, path);
  return sum;
}

inline file_sum write_text_atomically(const std::string& path, const std::string& text) {
  return write_file_atomically(path, [&](const auto& put) { put(text.data(), text.size()); });
}

// ---- safetensors -------------------------------------------------------------------------

inline file_sum write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t off = 0;
  for (const auto& [name, t0] : tensors) {
    at::Tensor t = t0.detach().cpu().contiguous();  // written from the host (a no-op on the CPU)
    const char* dtype = t.scalar_type() == at::kFloat ? "F32" : t.scalar_type() == at::kLong ? "I64" : nullptr;
    if (!dtype) throw checkpoint_error("write_safetensors: '" + name + "' is neither float32 nor int64");
    const uint64_t n = static_cast<uint64_t>(t.numel() * t.element_size());
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {off, off + n}}};
    off += n;
    data.push_back(t);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  return write_file_atomically(path, [&](const auto& put) {
    const uint64_t len = h.size();
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
    put(le, 8);
    put(h.data(), h.size());
    for (const auto& t : data) put(t.data_ptr(), static_cast<size_t>(t.numel() * t.element_size()));
  });
}

class safetensors_file {
 public:
  struct entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
  };

  explicit safetensors_file(std::string path) : path_(std::move(path)) {
    std::ifstream in(path_, std::ios::binary);
    if (!in) throw checkpoint_error(path_ + ": cannot open");
    unsigned char le[8];
    if (!in.read(reinterpret_cast<char*>(le), 8)) throw checkpoint_error(path_ + ": too short for safetensors");
    uint64_t len = 0;
    for (int i = 0; i < 8; ++i) len |= static_cast<uint64_t>(le[i]) << (8 * i);
    if (len > (1ULL << 30)) throw checkpoint_error(path_ + ": header length " + std::to_string(len) + " is not plausible");
    std::string h(len, ' ');
    if (!in.read(h.data(), static_cast<std::streamsize>(len))) throw checkpoint_error(path_ + ": truncated header");
    data_start_ = 8 + len;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(h);
    } catch (const std::exception& e) {
      throw checkpoint_error(path_ + ": malformed header: " + e.what());
    }
    for (auto& [k, v] : j.items()) {
      if (k == "__metadata__") {
        for (auto& [mk, mv] : v.items()) metadata_[mk] = mv.get<std::string>();
        continue;
      }
      entry e;
      e.dtype = v.at("dtype").get<std::string>();
      e.shape = v.at("shape").get<std::vector<int64_t>>();
      e.begin = v.at("data_offsets")[0].get<uint64_t>();
      e.end = v.at("data_offsets")[1].get<uint64_t>();
      names_.push_back(k);
      entries_[k] = e;
    }
  }
  const std::vector<std::string>& names() const { return names_; }
  const std::map<std::string, entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

  at::Tensor read(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw checkpoint_error(path_ + ": no tensor '" + name + "'");
    const entry& e = it->second;
    const at::ScalarType st = e.dtype == "F32"    ? at::kFloat
                              : e.dtype == "I64"  ? at::kLong
                              : e.dtype == "BF16" ? at::kBFloat16
                              : e.dtype == "F16"  ? at::kHalf
                                                  : at::kByte;
    if (st == at::kByte)
      throw checkpoint_error(path_ + ": '" + name + "' has dtype " + e.dtype + " (F32, BF16, F16 and I64 read)");
    at::Tensor t = at::empty(e.shape, st);
    const uint64_t n = e.end - e.begin;
    if (n != static_cast<uint64_t>(t.numel() * t.element_size()))
      throw checkpoint_error(path_ + ": '" + name + "' data_offsets do not match its shape");
    std::ifstream in(path_, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(data_start_ + e.begin));
    if (!in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(n)))
      throw checkpoint_error(path_ + ": '" + name + "' is truncated");
    return t;
  }

 private:
  std::string path_;
  uint64_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// ---- what a rank holds ----------------------------------------------------------------------

// Elements [begin, end) of parameter `name` sit at [offset, offset + end - begin)
// of a rank's master tensor number `tensor` (model.parameters() order):
// parallel::piece, from model.held_pieces().
using parallel::piece;

template <class Model>
std::vector<piece> held_pieces(const Model& model) {
  return model.held_pieces();
}

struct train_state {
  int64_t step = 0;         // optimizer steps taken
  int64_t data_cursor = 0;  // samples consumed
  int64_t adam_steps = 0;
};

inline std::string rank_file_name(int rank) {
  char b[40];
  std::snprintf(b, sizeof b, "rank_%05d.safetensors", rank);
  return b;
}

inline std::string step_dir_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step_%06lld", static_cast<long long>(step));
  return b;
}

// Writes this rank's file into dir/step_N.tmp/. The caller synchronises the
// ranks and then calls finish_checkpoint on rank 0.
template <class Model, class Optim>
file_sum save_shard(const std::string& dir, int rank, Model& model, Optim& optim, const train_state& st,
                const std::map<std::string, std::string>& info) {
  const std::filesystem::path tmp = std::filesystem::path(dir) / (step_dir_name(st.step) + ".tmp");
  std::filesystem::create_directories(tmp);  // emptied by rank 0 (begin_checkpoint) before any rank writes
  const auto params = model.parameters();
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (const piece& p : held_pieces(model)) {
    const std::string key = p.name + ":" + std::to_string(p.begin);
    const int64_t n = p.end - p.begin;
    ts.emplace_back("param:" + key, params[p.tensor].detach().narrow(0, p.offset, n));
    ts.emplace_back("exp_avg:" + key, optim.exp_avg()[p.tensor].narrow(0, p.offset, n));
    ts.emplace_back("exp_avg_sq:" + key, optim.exp_avg_sq()[p.tensor].narrow(0, p.offset, n));
  }
  auto meta = info;
  meta["step"] = std::to_string(st.step);
  meta["data_cursor"] = std::to_string(st.data_cursor);
  meta["adam_steps"] = std::to_string(st.adam_steps);
  meta["rank"] = std::to_string(rank);
  return write_safetensors((tmp / rank_file_name(rank)).string(), ts, meta);
}

// Rank 0, before any rank's save_shard: an empty step_N.tmp (a job killed
// while saving leaves one behind, perhaps with another world's rank files).
inline void begin_checkpoint(const std::string& dir, int64_t step) {
  const std::filesystem::path tmp = std::filesystem::path(dir) / (step_dir_name(step) + ".tmp");
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
}

// Rank 0, after every rank's save_shard: meta.json (with each rank file's
// size and CRC-32, `sums[r]` for rank r), rename, then `latest`.
inline std::string finish_checkpoint(const std::string& dir, const train_state& st, nlohmann::json meta,
                                     const std::vector<file_sum>& sums) {
  const std::filesystem::path root(dir), tmp = root / (step_dir_name(st.step) + ".tmp"), fin = root / step_dir_name(st.step);
  for (size_t r = 0; r < sums.size(); ++r)
    meta["files"][rank_file_name(static_cast<int>(r))] = {{"bytes", sums[r].bytes}, {"crc32", sums[r].crc32}};
  write_text_atomically((tmp / "meta.json").string(), meta.dump(2) + "\n");
  std::filesystem::remove_all(fin);
  std::filesystem::rename(tmp, fin);
  write_text_atomically((root / "latest").string(), step_dir_name(st.step) + "\n");
  return fin.string();
}

// ---- readers and retention ------------------------------------------------------------------

// An advisory lock (flock) on a checkpoint folder. Readers (verify_checkpoint,
// load_checkpoint; this job or another on the host) hold a shared one while
// they read; prune_checkpoints removes a folder only under an exclusive one
// taken without waiting, so a checkpoint that a resume still reads is kept.
class folder_lock {
 public:
  folder_lock(const std::string& path, bool exclusive) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0) return;
    if (exclusive) held_ = ::flock(fd_, LOCK_EX | LOCK_NB) == 0;
    else
      while (!(held_ = ::flock(fd_, LOCK_SH) == 0) && errno == EINTR) {
      }
  }
  folder_lock(const folder_lock&) = delete;
  folder_lock& operator=(const folder_lock&) = delete;
  ~folder_lock() {
    if (fd_ >= 0) ::close(fd_);  // closing drops the lock
  }
  bool held() const { return held_; }

 private:
  int fd_ = -1;
  bool held_ = false;
};

// Throws checkpoint_error naming what is wrong with the checkpoint folder
// `path`: meta.json missing or unreadable, a rank file missing, extra, of the
// wrong size (truncated) or with another CRC-32 (damaged). Reads every byte.
inline void verify_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) throw checkpoint_error(path + ": no such checkpoint folder");
  const folder_lock reading(path, false);
  const fs::path meta_path = fs::path(path) / "meta.json";
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(std::ifstream(meta_path));
    if (!meta.at("files").is_object() || meta.at("files").empty()) throw std::runtime_error("no files listed");
  } catch (const std::exception& e) {
    throw checkpoint_error(meta_path.string() + ": " + (fs::exists(meta_path) ? "unreadable (" + std::string(e.what()) + ")" : "missing") +
                           ": the checkpoint is incomplete or damaged");
  }
  for (const auto& e : fs::directory_iterator(path))
    if (e.path().extension() == ".safetensors" && !meta["files"].contains(e.path().filename().string()))
      throw checkpoint_error(e.path().string() + ": not listed in meta.json: the checkpoint is damaged");
  for (const auto& [name, want] : meta["files"].items()) {
    const fs::path f = fs::path(path) / name;
    if (name.find('/') != std::string::npos || !fs::is_regular_file(f))
      throw checkpoint_error(f.string() + ": missing: the checkpoint is incomplete");
    uint64_t bytes = 0;
    uint32_t crc = 0;
    try {
      bytes = want.at("bytes").get<uint64_t>();
      crc = want.at("crc32").get<uint32_t>();
    } catch (const std::exception&) {
      throw checkpoint_error(meta_path.string() + ": the entry of " + name + " lacks bytes or crc32");
    }
    if (const uint64_t have = fs::file_size(f); have != bytes)
      throw checkpoint_error(f.string() + ": " + std::to_string(have) + " bytes, meta.json says " + std::to_string(bytes) +
                             ": the file is truncated or damaged");
    if (const file_sum s = sum_of_file(f.string()); s.crc32 != crc)
      throw checkpoint_error(f.string() + ": CRC-32 " + std::to_string(s.crc32) + ", meta.json says " + std::to_string(crc) +
                             ": the file is damaged");
  }
}

// The checkpoint to resume from, verified: "" (a fresh start), a folder, or
// "auto": the newest folder of dir that verifies — `latest` first, then the
// step_N folders from the highest N down; each refused one is reported
// through `log`. Throws checkpoint_error for a folder given by name that does
// not verify, or when dir holds checkpoints and none verifies.
inline std::string choose_checkpoint(const std::string& spec, const std::string& dir,
                                     const std::function<void(const std::string&)>& log) {
  namespace fs = std::filesystem;
  if (spec.empty()) return {};
  if (spec != "auto") {
    verify_checkpoint(spec);
    return spec;
  }
  static const std::regex step_name("step_[0-9]+");
  std::vector<std::string> names;
  {
    std::ifstream l(fs::path(dir) / "latest");
    std::string name;
    if (l >> name) {
      if (std::regex_match(name, step_name)) names.push_back(name);
      else log((fs::path(dir) / "latest").string() + " names '" + name + "', not a step_N folder of " + dir + ": ignored");
    }
  }
  std::vector<std::string> found;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && std::regex_match(e.path().filename().string(), step_name)) found.push_back(e.path().filename().string());
  std::sort(found.begin(), found.end(), [](const std::string& a, const std::string& b) {
    return std::stoll(a.substr(5)) > std::stoll(b.substr(5));
  });
  names.insert(names.end(), found.begin(), found.end());
  std::string refused;
  for (size_t i = 0; i < names.size(); ++i) {
    if (std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), names[i]) != names.begin() + static_cast<std::ptrdiff_t>(i)) continue;
    const std::string p = (fs::path(dir) / names[i]).string();
    try {
      verify_checkpoint(p);
      return p;
    } catch (const checkpoint_error& e) {
      log(std::string("refusing checkpoint ") + p + ": " + e.what());
      refused += std::string(refused.empty() ? "" : "; ") + e.what();
    }
  }
  if (!refused.empty()) throw checkpoint_error(dir + ": no checkpoint verifies (" + refused + ")");
  return {};
}

// Rank 0: the retention rule, applied after finish_checkpoint wrote the
// step_N folder `current` of dir (and at a resume from dir's newest). Keeps
// `current` and the newest keep - 1 other step_N folders (0: all), removes
// the rest — but first verifies `current` (every byte; only when something
// is to be removed, and unless the caller just did), and never removes the
// folder `latest` names or one another process is reading (folder_lock: it
// stays, and a later prune removes it). A removal renames the folder to
// step_N.deleting first, so a crash mid-way leaves no half folder that looks
// like a checkpoint; leftovers of crashed removals and of saves killed
// midway (step_N.tmp, N below current's) go too. Returns one line per folder
// removed or kept back. Throws checkpoint_error when `current` does not
// verify (nothing is removed then).
inline std::vector<std::string> prune_checkpoints(const std::string& dir, long keep, const std::string& current,
                                                  bool verified = false) {
  namespace fs = std::filesystem;
  std::vector<std::string> said;
  if (keep <= 0 || !fs::is_directory(dir)) return said;
  static const std::regex step_name("step_([0-9]+)"), leftover("step_([0-9]+)\\.(tmp|deleting)");
  std::smatch m;
  if (!std::regex_match(current, m, step_name)) return said;
  const long long now = std::stoll(m[1].str());
  std::vector<std::pair<long long, std::string>> others;
  std::vector<std::string> leftovers;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, step_name)) {
      if (name != current) others.emplace_back(std::stoll(m[1].str()), name);
    } else if (std::regex_match(name, m, leftover)) {
      if (std::stoll(m[1].str()) < now || m[2].str() == "deleting") leftovers.push_back(name);
    }
  }
  if (others.size() < static_cast<size_t>(keep) && leftovers.empty()) return said;
  if (!verified) verify_checkpoint((fs::path(dir) / current).string());
  std::sort(others.begin(), others.end(), std::greater<>());
  std::string latest;
  std::ifstream(fs::path(dir) / "latest") >> latest;
  for (const auto& name : leftovers) {
    fs::remove_all(fs::path(dir) / name);
    said.push_back("removed " + (fs::path(dir) / name).string() + " (left by an interrupted save or removal)");
  }
  for (size_t i = static_cast<size_t>(keep) - 1; i < others.size(); ++i) {
    const fs::path p = fs::path(dir) / others[i].second;
    if (others[i].second == latest) continue;
    folder_lock mine(p.string(), true);
    if (!mine.held()) {
      said.push_back("kept " + p.string() + " past train.keep_checkpoints = " + std::to_string(keep) +
                     ": another process is reading it");
      continue;
    }
    const fs::path gone = fs::path(dir) / (others[i].second + ".deleting");
    fs::rename(p, gone);
    fs::remove_all(gone);
    said.push_back("removed " + p.string() + " (train.keep_checkpoints = " + std::to_string(keep) + ")");
  }
  return said;
}

// Loads parameters, AdamW moments and the training state into a model on any mesh.
template <class Model, class Optim>
train_state load_checkpoint(const std::string& path, Model& model, Optim& optim) {
  if (!std::filesystem::is_directory(path)) throw checkpoint_error(path + ": no such checkpoint folder");
  const folder_lock reading(path, false);
  std::vector<safetensors_file> files;
  for (const auto& e : std::filesystem::directory_iterator(path))
    if (e.path().extension() == ".safetensors") files.emplace_back(e.path().string());
  if (files.empty()) throw checkpoint_error(path + ": no rank_*.safetensors files");
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.path() < b.path(); });
  // name -> (file, begin, end, key) of every stored piece of parameters
  struct stored {
    size_t file;
    int64_t begin, end;
    std::string key;
  };
  std::map<std::string, std::vector<stored>> index;
  for (size_t f = 0; f < files.size(); ++f)
    for (const auto& k : files[f].names()) {
      if (k.rfind("param:", 0) != 0) continue;
      const auto colon = k.rfind(':');
      const std::string name = k.substr(6, colon - 6);
      const int64_t b = std::stoll(k.substr(colon + 1));
      index[name].push_back({f, b, b + files[f].entries().at(k).shape.at(0), k.substr(6)});
    }
  auto params = model.parameters();
  torch::NoGradGuard no_grad;
  for (const piece& p : held_pieces(model)) {
    auto it = index.find(p.name);
    if (it == index.end()) throw checkpoint_error(path + ": holds no parameter '" + p.name + "'");
    int64_t covered = 0;
    for (const stored& s : it->second) {
      const int64_t lo = std::max(p.begin, s.begin), hi = std::min(p.end, s.end);
      if (lo >= hi) continue;
      for (auto [kind, dst] : {std::pair{"param:", params[p.tensor]}, std::pair{"exp_avg:", optim.exp_avg()[p.tensor]},
                               std::pair{"exp_avg_sq:", optim.exp_avg_sq()[p.tensor]}}) {
        const at::Tensor src = files[s.file].read(kind + s.key);
        dst.narrow(0, p.offset + lo - p.begin, hi - lo).copy_(src.narrow(0, lo - s.begin, hi - lo));
      }
      covered += hi - lo;  // pieces of replicas overlap: count only the first cover below
    }
    if (covered < p.end - p.begin)
      throw checkpoint_error(path + ": elements [" + std::to_string(p.begin) + ", " + std::to_string(p.end) + ") of '" +
                             p.name + "' are not all stored");
  }
  const auto& m = files.front().metadata();
  train_state st;
  try {
    st.step = std::stoll(m.at("step"));
    st.data_cursor = std::stoll(m.at("data_cursor"));
    st.adam_steps = std::stoll(m.at("adam_steps"));
  } catch (const std::exception&) {
    throw checkpoint_error(files.front().path() + ": metadata lacks step, data_cursor or adam_steps");
  }
  optim.set_steps(st.adam_steps);
  model.after_load();  // what the model derives from the masters (ZeRO's whole parameters)
  return st;
}

// ---- a Hugging Face checkpoint's weights (model.path) -----------------------------------------

// Each parameter of a model under its Hugging Face name(s), from the dims
// alone: veomni's name without the node prefix ("lm.model.layers.0.self_attn.
// q_proj.weight" -> "model.layers.0.self_attn.q_proj.weight"), except the
// stacked experts, which are one tensor per expert there
// ("lm.model.layers.0.mlp.experts.gate_proj" [E, F, H] -> "model.layers.0.mlp.
// experts.{e}.gate_proj.weight" [F, H], e = 0 .. E-1).
template <Model G>
std::vector<std::pair<nn::param_spec, hf_source>> hf_layout(const typename G::dims& d) {
  static const std::string stacked = "mlp.experts.";
  std::vector<std::pair<nn::param_spec, hf_source>> out;
  for (const auto& u : nn::model_units<G>(d))
    for (const auto& s : nn::unit_specs<G>(d, u.node, u.block)) {
      const std::string h = s.name.substr(s.name.find('.') + 1);
      hf_source src;
      const auto at = h.rfind(stacked);
      if (s.expert && at != std::string::npos && h.find('.', at + stacked.size()) == std::string::npos) {
        src.each = s.numel() / s.shape.at(0);
        src.stacked = true;
        for (int64_t e = 0; e < s.shape[0]; ++e)
          src.tensors.push_back(h.substr(0, at + stacked.size()) + std::to_string(e) + "." + h.substr(at + stacked.size()) + ".weight");
      } else {
        src.tensors = {h};
        src.each = s.numel();
      }
      out.emplace_back(s, std::move(src));
    }
  return out;
}

// hf_layout's names, checked against a checkpoint folder (hf.hpp) with the
// dims alone (every rank, before any collective): each tensor is there with
// the model's shape, and each tensor of the checkpoint is a parameter (a tied
// model's lm_head.weight may be there, as Hugging Face sometimes writes it).
// Throws hf_error naming the file and tensor.
template <Model G>
std::map<std::string, hf_source> hf_names(const hf_checkpoint& ck, const typename G::dims& d, bool tied) {
  auto shape_text = [](const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  };
  std::map<std::string, hf_source> names;
  std::set<std::string> used;
  for (auto& [s, src] : hf_layout<G>(d)) {
    const bool split = src.stacked;
    const std::vector<int64_t> want = split ? std::vector<int64_t>(s.shape.begin() + 1, s.shape.end()) : s.shape;
    for (const std::string& h : src.tensors) {
      const std::string what = split ? "one expert of the model's " + s.name + ", " + shape_text(s.shape) : "the model's " + s.name;
      if (!ck.has(h))
        throw hf_error(ck.dir().string() + ": the checkpoint has no tensor '" + h + "' (" + what + ", " + shape_text(want) + ")");
      const auto& t = ck.tensor(h);
      if (t.shape != want)
        throw hf_error(t.file + ": '" + h + "' is " + shape_text(t.shape) + ", " + what + " is " + shape_text(want) +
                       " (config.json and the weights disagree)");
      used.insert(h);
    }
    names[s.name] = std::move(src);
  }
  for (const auto& [name, t] : ck.tensors())
    if (!used.count(name) && !(tied && name == "lm_head.weight"))
      throw hf_error(t.file + ": '" + name + "' is not a parameter of this model (config.json describes another one)");
  return names;
}

// Loads the checkpoint's weights into a model on any mesh: each rank reads the
// elements of the pieces it holds (its FSDP / EP shard: byte ranges of the
// safetensors files, hf_checkpoint::read), so no rank holds the whole model.
// `names`: hf_names' map.
template <class M>
void load_hf_weights(const hf_checkpoint& ck, M& model, const std::map<std::string, hf_source>& names) {
  using held = typename M::held;
  auto params = model.masters(held::base);  // frozen ones too (LoRA's base)
  torch::NoGradGuard no_grad;
  for (const piece& p : model.pieces(held::base)) {
    at::Tensor dst = params[p.tensor].detach().narrow(0, p.offset, p.end - p.begin);
    TORCH_CHECK(dst.is_contiguous() && dst.scalar_type() == at::kFloat, "load_hf_weights: float32 masters expected");
    if (dst.is_cpu()) {  // read straight into the master: no staging copy
      names.at(p.name).read(ck, p.begin, p.end, dst.data_ptr<float>());
    } else {  // a GPU master: read on the host, then copy
      at::Tensor host = at::empty({p.end - p.begin}, at::kFloat);
      names.at(p.name).read(ck, p.begin, p.end, host.data_ptr<float>());
      dst.copy_(host);
    }
  }
  model.after_load();
}

// The tensors of a Hugging Face export of whole parameters (consolidate's
// `all`), under hf_layout's names: stacked experts become one tensor per
// expert. `tensors` point into `values`, the parameters as float32.
struct hf_export {
  std::vector<at::Tensor> values;
  std::vector<hf_tensor> tensors;
};
template <Model G>
hf_export hf_tensors(const typename G::dims& d, const std::vector<std::pair<nn::param_spec, at::Tensor>>& all) {
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [s, t] : all) by_name[s.name] = t.detach().to(at::kCPU, at::kFloat).contiguous();
  hf_export out;
  for (const auto& [s, src] : hf_layout<G>(d)) {
    const at::Tensor& t = out.values.emplace_back(by_name.at(s.name));
    for (size_t i = 0; i < src.tensors.size(); ++i)
      out.tensors.push_back({src.tensors[i], src.stacked ? std::vector<int64_t>(s.shape.begin() + 1, s.shape.end()) : s.shape,
                             t.data_ptr<float>() + static_cast<int64_t>(i) * src.each});
  }
  return out;
}

// ---- consolidation -------------------------------------------------------------------------

// The tensors of `specs` whole, in their order, on every rank, from the
// element ranges each rank holds (`pieces` of its tensors `held`): each
// element is taken from one rank that holds it (the highest), so the result
// is exact. Two all_reduces over the world, of the specs' size.
template <class Mesh>
std::vector<std::pair<nn::param_spec, at::Tensor>> gather_whole(const std::vector<nn::param_spec>& specs,
                                                                const std::vector<at::Tensor>& held,
                                                                const std::vector<piece>& pieces, Mesh& mesh) {
  std::vector<std::pair<nn::param_spec, at::Tensor>> out;
  std::map<std::string, int64_t> offset;
  int64_t total = 0;
  for (const auto& s : specs) {
    offset[s.name] = total;
    total += s.numel();
    out.push_back({s, at::Tensor()});
  }
  // on the masters' device (the mesh's communicators need it there)
  const auto on = at::TensorOptions().dtype(at::kFloat).device(held.empty() ? at::Device(at::kCPU) : held[0].device());
  at::Tensor values = at::zeros({total}, on), owner = at::zeros({total}, on);
  const float me = static_cast<float>(mesh.rank() + 1);
  for (const piece& p : pieces) owner.narrow(0, offset.at(p.name) + p.begin, p.end - p.begin).fill_(me);
  mesh.world().all_reduce(owner, comm::reduce_op::max).wait();
  for (const piece& p : pieces) {
    const int64_t at0 = offset.at(p.name) + p.begin, n = p.end - p.begin;
    const at::Tensor mine = owner.narrow(0, at0, n).eq(me);
    values.narrow(0, at0, n).copy_(at::where(mine, held[p.tensor].detach().narrow(0, p.offset, n), at::zeros({n}, on)));
  }
  mesh.world().all_reduce(values, comm::reduce_op::sum).wait();
  for (auto& [s, t] : out) t = values.narrow(0, offset.at(s.name), s.numel()).view(s.shape);
  return out;
}

// Every parameter whole, in model order, on every rank (frozen ones too: LoRA's base).
template <Model G, class M, class Mesh>
std::vector<std::pair<nn::param_spec, at::Tensor>> consolidate(const typename G::dims& d, M& model, Mesh& mesh) {
  std::vector<nn::param_spec> specs;
  for (const auto& u : nn::model_units<G>(d))
    for (const auto& s : nn::unit_specs<G>(d, u.node, u.block)) specs.push_back(s);
  using held = typename M::held;
  return gather_whole(specs, model.masters(held::base), model.pieces(held::base), mesh);
}

// Every adapter (Adapt<LoRA>) whole, in model order, on every rank: those
// split with the experts gathered from the ranks holding them.
template <class M, class Mesh>
std::vector<std::pair<nn::param_spec, at::Tensor>> whole_adapters(M& model, Mesh& mesh) {
  using held = typename M::held;
  return gather_whole(model.adapter_specs(), model.masters(held::adapters), model.pieces(held::adapters), mesh);
}

// LoRA merged into whole parameters: W += scale * B A for each adapter pair
// (".../q_proj.lora_A.weight", ".../q_proj.lora_B.weight") of `adapters`
// (whole_adapters), in place; stacked experts' pairs expert by expert. An
// adapter without its weight in `all`, or a lone factor, is an error naming it.
inline void merge_adapters(std::vector<std::pair<nn::param_spec, at::Tensor>>& all,
                           const std::vector<std::pair<nn::param_spec, at::Tensor>>& adapters, double scale) {
  std::map<std::string, at::Tensor> by_stem;  // "...q_proj.weight" and a stacked "...experts.up_proj" alike
  for (auto& [s, t] : all) by_stem[nn::weight_stem(s.name)] = t;
  std::map<std::string, at::Tensor> a_of, b_of;
  const std::string ka = ".lora_A", kb = ".lora_B";
  for (const auto& [spec, t] : adapters) {
    const std::string stem = nn::weight_stem(spec.name);
    if (stem.ends_with(ka)) a_of[stem.substr(0, stem.size() - ka.size())] = t;
    else if (stem.ends_with(kb)) b_of[stem.substr(0, stem.size() - kb.size())] = t;
    else throw checkpoint_error("merge_adapters: '" + spec.name + "' is neither a lora_A nor a lora_B weight");
  }
  torch::NoGradGuard no_grad;
  for (const auto& [stem, a] : a_of) {
    auto b = b_of.find(stem);
    auto w = by_stem.find(stem);
    if (b == b_of.end()) throw checkpoint_error("merge_adapters: '" + stem + ka + ".weight' has no lora_B");
    if (w == by_stem.end()) throw checkpoint_error("merge_adapters: no weight '" + stem + "(.weight)' for its adapters");
    w->second.add_(at::matmul(b->second.to(at::kFloat), a.to(at::kFloat)), scale);  // [E] batched for experts
  }
  if (b_of.size() != a_of.size()) throw checkpoint_error("merge_adapters: a lora_B weight has no lora_A");
}

// Whole parameters by name as a unit source for nn::forward (evaluation).
template <Model G>
class named_params : public nn::unit_source {
 public:
  named_params(const typename G::dims& d, const std::vector<std::pair<nn::param_spec, at::Tensor>>& all) : d_(d) {
    for (const auto& [s, t] : all) by_name_[s.name] = t;
  }
  nn::tensors unit(const nn::unit_id& u) override {
    nn::tensors out;
    for (const auto& s : nn::unit_specs<G>(d_, u.node, u.block)) out.push_back(by_name_.at(s.name));
    return out;
  }

 private:
  typename G::dims d_;
  std::map<std::string, at::Tensor> by_name_;
};

}  // namespace veomni::train
