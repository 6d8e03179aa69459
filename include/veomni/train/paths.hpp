#pragma once
// <veomni/train/paths.hpp>: every file the trainer writes lies inside
// train.output_dir.
//
//   const output_root out("outputs/run");         // the folder, created
//   std::ofstream(out.file("metrics.jsonl"));    // outputs/run/metrics.jsonl
//   out.file("../x")                             // config_error: leaves train.output_dir
//
// A name is refused when it is absolute, has a ".." part, or resolves (through
// a symbolic link already on disk, say outputs/run/checkpoints -> /elsewhere)
// to a place outside the folder. Names are only ever joined as paths: nothing
// the trainer writes goes through a shell.
#include <algorithm>
#include <filesystem>
#include <string>

#include "config.hpp"

namespace veomni::train {

class output_root {
 public:
  explicit output_root(const std::filesystem::path& dir) : given_(dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) throw config_error("train.output_dir: cannot create '" + dir.string() + "': " + ec.message());
    root_ = std::filesystem::canonical(dir);
  }

  // The path of `name` (relative, e.g. "checkpoints/latest") inside the folder.
  std::filesystem::path file(const std::filesystem::path& name) const {
    if (name.empty() || name.is_absolute())
      throw config_error("train.output_dir: '" + name.string() + "' is not a name inside " + given_.string());
    for (const auto& part : name)
      if (part == "..") throw config_error("train.output_dir: '" + name.string() + "' leaves " + given_.string());
    namespace fs = std::filesystem;
    const fs::path p = given_ / name;
    // every symbolic link on the way, dangling ones included (a write would follow them)
    fs::path at = given_;
    for (const auto& part : name) {
      at /= part;
      std::error_code ec;
      if (!fs::is_symlink(fs::symlink_status(at, ec))) continue;
      fs::path target = fs::read_symlink(at, ec);
      if (target.is_relative()) target = at.parent_path() / target;
      inside(at, fs::weakly_canonical(target));
    }
    inside(p, fs::weakly_canonical(p));
    return p;
  }

  const std::filesystem::path& dir() const { return given_; }

 private:
  void inside(const std::filesystem::path& p, const std::filesystem::path& real) const {
    const auto [a, b] = std::mismatch(root_.begin(), root_.end(), real.begin(), real.end());
    if (a != root_.end())
      throw config_error("train.output_dir: '" + p.string() + "' leads to '" + real.string() + "', outside " + root_.string() +
                         ": refusing to write there");
  }

  std::filesystem::path given_, root_;
};

}  // namespace veomni::train
