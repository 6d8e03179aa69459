// comm_nccl_worker: the collectives scenario over the NCCL backend, with
// CUDA tensors on device LOCAL_RANK. Built wherever CUDA + NCCL are found
// (so CI compiles the backend); run by scripts/gpu_comm_check.sh:
//   comm_nccl_worker collectives                      a world of one GPU
//   veomni-launch --nproc N -- comm_nccl_worker collectives   N GPUs
//   comm_nccl_worker train MODEL STEPS OUT [bf16] [cpu] [sp=N] [seq=N]
//       the runtime on the GPU: MODEL under FSDP (+ Ulysses over sp) on the
//       NCCL mesh, every tensor on cuda:LOCAL_RANK (parallel::options::device),
//       or with `cpu` the same over Gloo on the CPU (the reference run); rank 0
//       writes "step loss grad_norm tokens_per_s_per_rank" lines to OUT.
//       MODEL: dense_lm (the zoo's tiny one, the parity batches), qwen2_0_5b
//       and dense_peer (dense_lm's component at those sizes, 8 samples of
//       seq tokens a step), omni_moe (CUDA builds only: the zoo's tiny one)
// Exits 0 with "collectives ok", 1 on a wrong value, 77 when there is no GPU
// (ctest's conventional "skipped"). The train scenario is what makes CI
// compile the runtime (parallel_model, storage, executor, EP) over the NCCL
// communicator: its tensors' device comes from parallel::options::device.
#include "scenarios.hpp"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "../parallel/synthetic.hpp"

using namespace comm_test;

namespace {
namespace v = veomni;
template <v::fixed_string N>
using fsdp_on = v::apply<N, v::Shard<v::FSDP>>;
using dense_recipe = v::recipe<v::apply<"lm", v::Shard<v::FSDP>, v::Split<v::Ulysses>>>;
using omni_recipe = v::recipe<fsdp_on<"vision">, fsdp_on<"vision_proj">, fsdp_on<"audio">, fsdp_on<"audio_proj">,
                              v::apply<"lm", v::Shard<v::FSDP>, v::Split<v::Ulysses>>, fsdp_on<"image_out">>;

struct train_args {
  std::string model, out;
  int steps = 20;
  bool bf16 = false;
  long sp = 1, seq = 0;
};

// 8 samples of `seq` tokens (a counting run from a seeded start: learnable), ids below `vocab`.
std::vector<v::parallel::sample> long_samples(int64_t step, long seq, long vocab) {
  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(7000 + step));
  std::vector<v::parallel::sample> out(8);
  for (auto& s : out) {
    int64_t t = at::randint(1, vocab - 1, {1}, gen).item<int64_t>();
    for (long j = 0; j < seq; ++j) s.tokens.push_back(t), t = t % (vocab - 2) + 1;
    for (long j = 0; j < seq; ++j) s.targets.push_back(j + 1 < seq ? s.tokens[static_cast<size_t>(j + 1)] : -100);
  }
  return out;
}

template <class G, class R, class Mesh>
int train_steps(const comm::launch_env& env, const at::Device& device, const train_args& a, const typename G::dims& d,
                v::testing::kind k, long vocab = 0) {
  if (a.seq > 0 && vocab == 0) {
    std::cerr << "comm_nccl_worker: seq= takes qwen2_0_5b or dense_peer\n";
    return 2;
  }
  const v::mesh_shape shape{.dp_shard = env.world_size / a.sp, .sp = a.sp};
  Mesh mesh(shape, env);
  v::parallel::options opt;
  opt.seed = 1234;
  opt.device = device;
  opt.prec = a.bf16 ? v::precisions::bf16 : v::precisions::fp32;
  using model_t = v::parallel::parallel_model<G, R, Mesh>;
  model_t model(d, mesh, opt);
  v::train::adamw optim(model.parameters(), model.decay_masks(), {.lr = 1e-3, .weight_decay = 0.1});
  std::ofstream file;
  if (env.rank == 0) file.open(a.out);
  for (int step = 0; step < a.steps; ++step) {
    const auto global = a.seq > 0 ? long_samples(step, a.seq, vocab) : v::testing::global_batch(k, step);
    const v::nn::batch b = v::parallel::local_batch(global, shape, env.rank, v::testing::image_token,
                                                    v::testing::audio_token, model_t::layout());
    const auto t0 = std::chrono::steady_clock::now();
    model.zero_grad();
    const double loss = model.forward_backward(b).total;  // .total waits for the loss: the step's work is done
    const double norm = model.optimizer_step([&](double n) { optim.step(1e-3, v::train::clip_scale(n, 1.0)); });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (env.rank == 0) file << step << ' ' << loss << ' ' << norm << ' ' << static_cast<double>(b.tokens.size(0)) / s << '\n';
  }
  std::cout << "train ok: " << a.model << ", " << a.steps << " steps on " << device.str() << (a.bf16 ? " (bf16)" : " (fp32)")
            << std::endl;
  return 0;
}

template <class Mesh>
int train(const comm::launch_env& env, const at::Device& device, const train_args& a) {
  if (a.model == "dense_lm") return train_steps<v::models::dense_lm, dense_recipe, Mesh>(env, device, a, v::models::dense_lm_tiny(), v::testing::kind::text);
  v::models::dense_lm::dims d;
  if (a.model == "qwen2_0_5b")  // Qwen2-0.5B's config.json, random weights
    d.at<"lm">() = {.vocab = 151936, .hidden = 896, .layers = 24, .heads = 14, .kv_heads = 2, .head_dim = 64,
                    .ffn = 4864, .qkv_bias = true, .rope_theta = 1e6, .tie_word_embeddings = true};
  else if (a.model == "dense_peer")  // benchmarks/configs/dense_peer.yaml
    d.at<"lm">() = {.vocab = 1024, .hidden = 256, .layers = 4, .heads = 4, .kv_heads = 4, .head_dim = 64, .ffn = 1024};
  const long vocab = d.at<"lm">().vocab;
  if (vocab > 0) return train_steps<v::models::dense_lm, dense_recipe, Mesh>(env, device, a, d, v::testing::kind::text, vocab);
#if defined(VEOMNI_TORCH_CUDA)
  if (a.model == "omni_moe")
    return train_steps<v::models::omni_moe, omni_recipe, Mesh>(env, device, a, v::models::omni_moe_tiny(), v::testing::kind::omni);
#endif
  std::cerr << "comm_nccl_worker: unknown model '" << a.model << "'\n";
  return 2;
}
}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "collectives";
  try {
    const comm::launch_env env = comm::read_launch_env();
    train_args ta;
    bool cpu = false;
    if (scenario == "train") {
      if (argc < 5) {
        std::cerr << "usage: comm_nccl_worker train MODEL STEPS OUT [bf16] [cpu] [sp=N] [seq=N]\n";
        return 2;
      }
      ta.model = argv[2], ta.steps = std::atoi(argv[3]), ta.out = argv[4];
      for (int i = 5; i < argc; ++i) {
        const std::string f = argv[i];
        if (f == "bf16") ta.bf16 = true;
        else if (f == "cpu") cpu = true;
        else if (f.rfind("sp=", 0) == 0) ta.sp = std::atol(f.c_str() + 3);
        else if (f.rfind("seq=", 0) == 0) ta.seq = std::atol(f.c_str() + 4);
        else {
          std::cerr << "comm_nccl_worker: unknown train option '" << f << "'\n";
          return 2;
        }
      }
      if (ta.sp < 1 || env.world_size % ta.sp != 0) {
        std::cerr << "comm_nccl_worker: sp=" << ta.sp << " does not divide the world of " << env.world_size << "\n";
        return 2;
      }
      if (cpu) return train<veomni::comm::gloo_mesh>(env, at::kCPU, ta);
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      std::cout << "skipped: no CUDA device" << std::endl;
      return 77;
    }
    const int device = env.local_rank % devices;
    cudaSetDevice(device);
    const at::Device cuda(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    if (scenario == "collectives") return collectives<comm::nccl_mesh>(env, at::TensorOptions().device(cuda));
    if (scenario == "train") return train<veomni::comm::nccl_mesh>(env, cuda, ta);
    std::cerr << "usage: comm_nccl_worker [collectives | train MODEL STEPS OUT [bf16] [cpu] [sp=N] [seq=N]]\n";
    return 2;
  } catch (const check_failed& e) {
    std::cout << "FAILED: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << std::endl;
    return 4;
  }
}
