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
//   step_000100/meta.json                 step, data cursor, world, mesh, model (rank 0)
//   latest                                "step_000100" (written last, atomically)
// Loading reads every rank file's header, and each rank copies the element
// ranges of the pieces it now holds, whatever mesh wrote them: a checkpoint
// written on 2 ranks loads on 1, 4, or another mix of dp_shard, sp and ep.
//
// safetensors, written by hand: an 8-byte little-endian header length, a JSON
// header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
// "__metadata__": {..}} padded with spaces to 8 bytes, then the data.
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "../comm/communicator.hpp"
#include "../nn/model.hpp"

namespace veomni::train {

struct checkpoint_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- safetensors -------------------------------------------------------------------------

inline void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t off = 0;
  for (const auto& [name, t0] : tensors) {
    at::Tensor t = t0.detach().contiguous();
    const char* dtype = t.scalar_type() == at::kFloat ? "F32" : t.scalar_type() == at::kLong ? "I64" : nullptr;
    if (!dtype) throw checkpoint_error("write_safetensors: '" + name + "' is neither float32 nor int64");
    const uint64_t n = static_cast<uint64_t>(t.numel() * t.element_size());
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {off, off + n}}};
    off += n;
    data.push_back(t);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw checkpoint_error("write_safetensors: cannot write '" + tmp + "'");
  const uint64_t len = h.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
  bool ok = std::fwrite(le, 1, 8, f) == 8 && std::fwrite(h.data(), 1, h.size(), f) == h.size();
  for (const auto& t : data)
    ok = ok && std::fwrite(t.data_ptr(), 1, static_cast<size_t>(t.numel() * t.element_size()), f) ==
                   static_cast<size_t>(t.numel() * t.element_size());
  ok = std::fclose(f) == 0 && ok;
  if (!ok) throw checkpoint_error("write_safetensors: writing '" + tmp + "' failed");
  std::filesystem::rename(tmp, path);
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
    const at::ScalarType st = e.dtype == "F32" ? at::kFloat : e.dtype == "I64" ? at::kLong : at::kByte;
    if (st == at::kByte) throw checkpoint_error(path_ + ": '" + name + "' has dtype " + e.dtype + " (F32 and I64 read)");
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

// ---- what a rank holds --------------------------------------------------------------------

// Elements [begin, end) of parameter `name` sit at [offset, offset + end - begin)
// of a rank's flat tensor number `tensor` (model.parameters() order).
struct piece {
  std::string name;
  int64_t begin = 0, end = 0;
  size_t tensor = 0;
  int64_t offset = 0;
};

// The pieces of every parameter group a parallel_model's rank holds.
template <class Model>
std::vector<piece> held_pieces(const Model& model) {
  std::vector<piece> out;
  size_t index = 0;
  for (const auto& u : model.units())
    for (const auto* g : {&u.dense, &u.experts}) {
      if (g->empty()) continue;
      const int64_t len = g->value.numel();
      const int64_t a = g->shard ? g->shard->rank() * len : 0, b = a + len;
      int64_t off = 0;
      for (const auto& s : g->segs) {
        const int64_t n = s.end - s.begin, lo = std::max(a, off), hi = std::min(b, off + n);
        if (lo < hi) out.push_back({s.spec.name, s.begin + lo - off, s.begin + hi - off, index, lo - a});
        off += n;
      }
      ++index;
    }
  return out;
}

struct train_state {
  int64_t step = 0;         // optimizer steps taken
  int64_t data_cursor = 0;  // samples consumed
  int64_t adam_steps = 0;
};

inline std::string step_dir_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step_%06lld", static_cast<long long>(step));
  return b;
}

// Writes this rank's file into dir/step_N.tmp/. The caller synchronises the
// ranks and then calls finish_checkpoint on rank 0.
template <class Model, class Optim>
void save_shard(const std::string& dir, int rank, Model& model, Optim& optim, const train_state& st,
                const std::map<std::string, std::string>& info) {
  const std::filesystem::path tmp = std::filesystem::path(dir) / (step_dir_name(st.step) + ".tmp");
  std::filesystem::create_directories(tmp);
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
  char name[32];
  std::snprintf(name, sizeof name, "rank_%05d.safetensors", rank);
  write_safetensors((tmp / name).string(), ts, meta);
}

// Rank 0, after every rank's save_shard: meta.json, rename, then `latest`.
inline std::string finish_checkpoint(const std::string& dir, const train_state& st, const nlohmann::json& meta) {
  const std::filesystem::path root(dir), tmp = root / (step_dir_name(st.step) + ".tmp"), fin = root / step_dir_name(st.step);
  {
    std::ofstream m(tmp / "meta.json");
    m << meta.dump(2) << "\n";
  }
  std::filesystem::remove_all(fin);
  std::filesystem::rename(tmp, fin);
  {
    std::ofstream l(root / "latest.tmp");
    l << step_dir_name(st.step) << "\n";
  }
  std::filesystem::rename(root / "latest.tmp", root / "latest");
  return fin.string();
}

// "auto": dir/latest if it exists (else ""), otherwise the path as given.
inline std::string resolve_checkpoint(const std::string& spec, const std::string& dir) {
  if (spec != "auto") return spec;
  std::ifstream l(std::filesystem::path(dir) / "latest");
  std::string name;
  if (!(l >> name)) return {};
  return (std::filesystem::path(dir) / name).string();
}

// Loads parameters, AdamW moments and the training state into a model on any mesh.
template <class Model, class Optim>
train_state load_checkpoint(const std::string& path, Model& model, Optim& optim) {
  if (!std::filesystem::is_directory(path)) throw checkpoint_error(path + ": no such checkpoint folder");
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
  return st;
}

// ---- consolidation -------------------------------------------------------------------------

// Every parameter whole, in model order, on every rank: each element is
// taken from one rank that holds it (the highest), so the result is exact.
// Two all_reduces over the world, of the whole model's size.
template <Model G, class M, class Mesh>
std::vector<std::pair<nn::param_spec, at::Tensor>> consolidate(const typename G::dims& d, M& model, Mesh& mesh) {
  std::vector<std::pair<nn::param_spec, at::Tensor>> out;
  std::map<std::string, int64_t> offset;
  int64_t total = 0;
  for (const auto& u : nn::model_units<G>(d))
    for (const auto& s : nn::unit_specs<G>(d, u.node, u.block)) {
      offset[s.name] = total;
      total += s.numel();
      out.push_back({s, at::Tensor()});
    }
  at::Tensor values = at::zeros({total}), owner = at::zeros({total});
  const auto params = model.parameters();
  const auto pieces = held_pieces(model);
  const float me = static_cast<float>(mesh.rank() + 1);
  for (const piece& p : pieces) owner.narrow(0, offset.at(p.name) + p.begin, p.end - p.begin).fill_(me);
  mesh.world().all_reduce(owner, comm::reduce_op::max).wait();
  for (const piece& p : pieces) {
    const int64_t at0 = offset.at(p.name) + p.begin, n = p.end - p.begin;
    const at::Tensor mine = owner.narrow(0, at0, n).eq(me);
    values.narrow(0, at0, n).copy_(at::where(mine, params[p.tensor].detach().narrow(0, p.offset, n), at::zeros({n})));
  }
  mesh.world().all_reduce(values, comm::reduce_op::sum).wait();
  for (auto& [s, t] : out) t = values.narrow(0, offset.at(s.name), s.numel()).view(s.shape);
  return out;
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
