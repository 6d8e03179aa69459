// veomni-train: trains a model of the zoo with its compiled-in recipe, from a
// YAML config and `--section.key=value` overrides (docs/trainer.md).
//
//   veomni-train configs/omni_moe.yaml
//   veomni-launch --nproc 2 -- veomni-train configs/omni_moe.yaml --train.accelerator.ulysses_size=2
//   torchrun --nproc_per_node 2 --no_python veomni-train configs/omni_moe.yaml
//
// Exit codes: 0 done; 2 a bad config, manifest, launch or checkpoint to resume
// from (reported on every rank, before any collective); 1 a failure while training.
#include <csignal>
#include <cstdio>
#include <string>
#include <vector>

#include <veomni/train/trainer.hpp>

using namespace veomni;

namespace {

template <Model G, Recipe R>
int run(train::config& c, const comm::launch_env& env) {
  train::prepared<G> p;
  try {
    p = train::prepare<G>(c, env.world_size);
    p.resume = train::resume_point(c, env.rank, [](const std::string& m) { std::fprintf(stderr, "%s\n", m.c_str()); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "veomni-train: error: %s\n", e.what());
    return 2;
  }
  return train::train_model<G, R>(c, env, std::move(p));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fprintf(argc < 2 ? stderr : stdout,
                 "usage: veomni-train CONFIG.yaml [--section.key=value ...]\n"
                 "  trains model.name (dense_lm | tiny_vl | omni_moe | moe_lm) as CONFIG says; keys: docs/trainer.md\n");
    return argc < 2 ? 2 : 0;
  }
  // A file-size limit (ulimit -f) then fails a write with EFBIG, reported
  // like a full disk, instead of killing the process without a message.
  std::signal(SIGXFSZ, SIG_IGN);
  parallel::retain_host_memory();  // freed step temporaries stay in the process (no page faults every step)
  train::config c;
  comm::launch_env env;
  try {
    c = train::load_config(argv[1], std::vector<std::string>(argv + 2, argv + argc));
    env = comm::read_launch_env();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "veomni-train: error: %s\n", e.what());
    return 2;
  }
  try {
    if (c.model.name == "dense_lm" && (c.train.lora.rank > 0 || !c.train.lora.path.empty()))
      return run<models::dense_lm, train::dense_lm_lora_recipe>(c, env);
    if (c.model.name == "dense_lm") return run<models::dense_lm, train::dense_lm_recipe>(c, env);
    if (c.model.name == "tiny_vl") return run<models::tiny_vl, train::tiny_vl_recipe>(c, env);
    if (c.model.name == "moe_lm" && (c.train.lora.rank > 0 || !c.train.lora.path.empty()))
      return run<models::moe_lm, train::moe_lm_lora_recipe>(c, env);
    if (c.model.name == "moe_lm") return run<models::moe_lm, train::moe_lm_recipe>(c, env);
    return run<models::omni_moe, train::omni_moe_recipe>(c, env);
  } catch (const train::config_error& e) {
    std::fprintf(stderr, "veomni-train: error: %s\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "veomni-train: failed: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "veomni-train: failed: %s\n", e.what());
    return 1;
  }
}
