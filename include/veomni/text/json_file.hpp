#pragma once
// <veomni/text/json_file.hpp>: a JSON file read whole, with what is wrong
// (it cannot be opened, it is not JSON) thrown as the caller's error type,
// naming the file. nlohmann-json only; tokenizer_config.json (chat.hpp) and a
// checkpoint's config.json and index (train/hf.hpp) are read with it.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace veomni::text {

// Error: constructible from a std::string (chat_error, train::hf_error).
template <class Error>
nlohmann::json read_json_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(p.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(p.string() + ": malformed JSON: " + e.what());
  }
}

}  // namespace veomni::text
