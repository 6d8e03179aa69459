// Peak memory of one training step on one long sample (world 1, FSDP,
// activation checkpointing): a small dense model on L tokens; prints the
// process's peak RSS. test_parallel.cpp runs it at L/2, L and 2L in fresh
// processes and checks that memory grows linearly in L (flash attention
// keeps no [L, L] matrix).
//   memory_worker L
#include <malloc.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>

using namespace veomni;

int main(int argc, char** argv) {
  if (argc != 2 || std::atol(argv[1]) < 8) {
    std::fprintf(stderr, "usage: memory_worker L (tokens, >= 8)\n");
    return 2;
  }
  const int64_t len = std::atol(argv[1]);
  // every block above 64 KiB its own mapping, returned when freed (a fixed
  // threshold also turns off glibc's adaptive one): the peak RSS is then the
  // peak of live memory, not of a heap's fragments
  mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  try {
    comm::gloo_mesh mesh(mesh_shape{}, comm::read_launch_env());
    models::dense_lm::dims d;
    d.at<"lm">() = {.vocab = 256, .hidden = 128, .layers = 2, .heads = 2, .kv_heads = 2, .head_dim = 64, .ffn = 256};
    parallel::parallel_model<models::dense_lm, recipe<apply<"lm", Shard<FSDP>>>, comm::gloo_mesh> model(
        d, mesh, {.checkpoint = true, .seed = 1});
    parallel::sample s;
    for (int64_t i = 0; i < len; ++i) {
      s.tokens.push_back((i * 7 + 3) % 256);
      s.targets.push_back((i * 7 + 10) % 256);
    }
    const nn::batch b = parallel::local_batch({s}, mesh.shape(), 0, -1, -1);
    const double loss = model.forward_backward(b).loss;
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    std::printf("memory_worker: L=%lld loss=%.4f peak_rss_kb=%ld\n", static_cast<long long>(len), loss, u.ru_maxrss);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_worker: %s\n", e.what());
    return 1;
  }
}
