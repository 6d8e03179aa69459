// veomni-tokenize: a tokenizer.json's ids for one JSON string a line, and back.
//
//   $ printf '"Hello world<|im_end|>"\n' | veomni-tokenize models/qwen3
//   [9707,1879,151645]
//   $ printf '[9707,1879,151645]\n' | veomni-tokenize models/qwen3 --decode --skip-special
//   "Hello world"
//
// TOKENIZER is a tokenizer.json or the directory holding it. Encoding adds no
// BOS/EOS (the post-processor's tokens); added tokens written in the text are
// matched. Exit 2, with "stdin:LINE: why" on stderr, at the first bad line (not
// a JSON string, or with --decode not an array of known ids); exit 2 as well
// when the tokenizer cannot be loaded.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <veomni/text/tokenizer.hpp>

int main(int argc, char** argv) {
  std::string path;
  bool decode = false, skip_special = false;
  CLI::App app{"veomni-tokenize: one JSON string a line on stdin -> one JSON array of ids a line (--decode: back)"};
  app.add_option("tokenizer", path, "tokenizer.json, or the directory holding it")->required();
  app.add_flag("--decode", decode, "read JSON arrays of ids, write JSON strings");
  app.add_flag("--skip-special", skip_special, "with --decode: leave the special tokens out");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  std::optional<veomni::text::tokenizer> tok;
  try {
    tok = veomni::text::tokenizer::from_file(path);
  } catch (const std::exception& e) {
    std::cerr << "veomni-tokenize: " << e.what() << "\n";
    return 2;
  }

  std::ios::sync_with_stdio(false);
  std::string line, out;
  for (std::size_t n = 1; std::getline(std::cin, line); ++n) {
    try {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw std::runtime_error(std::string("not valid JSON (") + e.what() + ")");
      }
      if (!decode) {
        if (!j.is_string()) throw std::runtime_error("expected a JSON string, got " + std::string(j.type_name()));
        out = nlohmann::json(tok->encode(j.get_ref<const std::string&>())).dump();
      } else {
        if (!j.is_array()) throw std::runtime_error("expected a JSON array of ids, got " + std::string(j.type_name()));
        std::vector<int64_t> ids;
        ids.reserve(j.size());
        for (std::size_t i = 0; i < j.size(); ++i) {
          if (!j[i].is_number_integer())
            throw std::runtime_error("element " + std::to_string(i) + " (" + j[i].dump() + ") is not an integer id");
          ids.push_back(j[i].get<int64_t>());
        }
        out = nlohmann::json(tok->decode(ids, skip_special)).dump();
      }
    } catch (const std::exception& e) {
      std::cout.flush();
      std::cerr << "stdin:" << n << ": " << e.what() << "\n";
      return 2;
    }
    std::cout << out << '\n';
  }
  return 0;
}
