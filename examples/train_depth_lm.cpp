// Trains the user's depth-map model (examples/depth_encoder.hpp: the
// component and its graph; examples/depth_encoder_nn.hpp: its math) under its
// FSDP recipe on every rank the launcher starts, on synthetic depth maps and
// text: all a component of one's own needs to train at any world size.
// Rank 0 writes "step loss grad_norm" per step to OUT.
//
//   veomni-launch --nproc 2 -- train_depth_lm OUT [STEPS]
//
// tests/parallel/test_parallel.cpp runs it at world 1 and 2 and compares.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <veomni/comm.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "depth_encoder_nn.hpp"

using namespace veomni;

namespace {

constexpr int64_t depth_token = 250;  // the placeholder the depth embeddings replace (lm.image_embeds)

// Step `step`'s global batch, the same on every rank: 4 samples, each a
// 16 x 16 depth map (4 patches of 8 x 8, so 4 placeholders) inside text.
std::vector<parallel::sample> global_batch(int step) {
  std::vector<parallel::sample> out;
  for (int i = 0; i < 4; ++i) {
    at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + i));
    const int64_t before = 3 + i, after = 6 + 2 * i;
    const at::Tensor words = at::randint(0, 200, {before + after}, gen, at::kLong);
    parallel::sample s;
    for (int64_t k = 0; k < before; ++k) s.tokens.push_back(words[k].item<int64_t>());
    for (int k = 0; k < 4; ++k) s.tokens.push_back(depth_token);
    for (int64_t k = before; k < before + after; ++k) s.tokens.push_back(words[k].item<int64_t>());
    for (std::size_t k = 0; k < s.tokens.size(); ++k)  // next-token targets, none onto a placeholder
      s.targets.push_back(k + 1 < s.tokens.size() && s.tokens[k + 1] != depth_token ? s.tokens[k + 1] : -100);
    s.inputs["depth"].push_back(at::rand({1, 16, 16}, gen));
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: train_depth_lm OUT [STEPS]\n");
    return 2;
  }
  const std::string out_path = argv[1];
  const int steps = argc > 2 ? std::atoi(argv[2]) : 10;
  try {
    const comm::launch_env env = comm::read_launch_env();
    const mesh_shape m{.dp_shard = env.world_size};  // the recipe's FSDP over every rank
    comm::gloo_mesh mesh(m, env);
    parallel::parallel_model<user::depth_lm, user::depth_lm_fsdp, comm::gloo_mesh> model(user::depth_lm_dims(), mesh,
                                                                                         {.seed = 7});
    train::adamw optim(model.parameters(), model.decay_masks(), {.lr = 1e-3, .weight_decay = 0.1});
    std::ofstream out;
    if (env.rank == 0) out.open(out_path);
    for (int step = 0; step < steps; ++step) {
      const nn::batch b = parallel::local_batch(global_batch(step), m, env.rank, depth_token, -1);
      model.zero_grad();
      const double loss = model.forward_backward(b).loss;
      const double norm = model.optimizer_step([&](double n) { optim.step(1e-3, train::clip_scale(n, 1.0)); });
      if (env.rank == 0) {
        char line[96];
        std::snprintf(line, sizeof line, "%d %.9e %.9e\n", step, loss, norm);
        out << line;
      }
    }
    if (env.rank == 0) std::printf("train_depth_lm: %d steps at world %ld\n", steps, m.world());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_depth_lm: %s\n", e.what());
    return 1;
  }
  return 0;
}
