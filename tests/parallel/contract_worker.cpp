// One rank of a contract job: user policies that break the policy/runtime
// contract (each must get a clear error naming the policy, the node and the
// op), and one that is interrupted mid-step (the step is retried and the
// run trains exactly as an uninterrupted one; under the asan preset, nothing
// leaks).
//   contract_worker undeclared_op          world 1: a runtime half asks for an op its ops<Ctx>() lacks
//   contract_worker wrong_collective       world 2 (sp 2): an all_gather under an all_to_all op
//   contract_worker out_of_order           world 1: k's all_to_all before q's, against the plan
//   contract_worker interrupted DP SP OUT  a step's forward throws, a later step's backward throws;
//                                          writes "step loss" of the steps that completed to OUT
//   contract_worker clean DP SP OUT        the same steps, nothing thrown
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

#include <veomni/comm.hpp>
#include <veomni/core.hpp>
#include <veomni/models/zoo.hpp>
#include <veomni/parallel.hpp>
#include <veomni/train/optimizer.hpp>

#include "synthetic.hpp"

using namespace veomni;
using models::dense_lm;

namespace user {

// Ulysses' compile-time half under other names, so that each runtime half
// below is a user's: the all_to_alls around attention over sp.
template <fixed_string Name>
struct ulysses_like {
  static constexpr std::string_view name = veomni::text_of<Name>;
  static constexpr std::array touches{layer_kind::attention};
  static constexpr axis_set over = axes<axis::sp>;
  template <class Ctx>
  static constexpr placement_list placements() { return Ulysses::placements<Ctx>(); }
  template <class Ctx>
  static constexpr op_list ops() { return Ulysses::ops<Ctx>(); }
};

// Asks its node for an op it does not declare (all_to_all of kv_block).
struct UndeclaredOp : ulysses_like<"UndeclaredOp"> {
  template <class Node>
  struct runtime {
    explicit runtime(Node& node) { (void)node.op(phase::forward, tensor_role::kv_block); }
  };
};

// Runs an all_gather under its all_to_all(q) op.
struct WrongCollective : ulysses_like<"WrongCollective"> {
  template <class Node>
  struct runtime {
    explicit runtime(Node& node) {
      const auto q = node.op(phase::forward, tensor_role::q);
      node.hooks().attention = [q](const at::Tensor& qt, const at::Tensor&, const at::Tensor&, const nn::seq_layout&) {
        at::Tensor out = at::empty({2 * qt.numel()}, qt.options());
        q.all_gather(q.now(), out, qt.contiguous().view({-1})).wait();
        return qt;
      };
    }
  };
};

// Issues k's all_to_all before q's: the plan says q first.
struct OutOfOrder : ulysses_like<"OutOfOrder"> {
  template <class Node>
  struct runtime {
    explicit runtime(Node& node) {
      const auto q = node.op(phase::forward, tensor_role::q), k = node.op(phase::forward, tensor_role::k);
      node.hooks().attention = [q, k](const at::Tensor& qt, const at::Tensor& kt, const at::Tensor& vt,
                                      const nn::seq_layout& l) {
        at::Tensor ko = at::empty_like(kt.contiguous());
        k.all_to_all(k.now(), ko, kt.contiguous()).wait();
        at::Tensor qo = at::empty_like(qt.contiguous());
        q.all_to_all(q.now(), qo, qt.contiguous()).wait();
        return nn::varlen_attention(qo, ko, vt, l.cu_seqlens, l.causal);
      };
    }
  };
};

// Ulysses, whose attention throws at chosen calls: in forward (call
// number throw_forward) and in backward (the backward of call throw_backward).
inline int calls = 0, throw_forward = -1, throw_backward = -1;
struct throw_in_backward : torch::autograd::Function<throw_in_backward> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, bool armed) {
    ctx->saved_data["armed"] = armed;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list g) {
    if (ctx->saved_data["armed"].toBool()) throw std::runtime_error("contract_worker: thrown in backward");
    return {g[0], at::Tensor()};
  }
};
struct Flaky : ulysses_like<"Flaky"> {
  template <class Node>
  struct runtime {
    Ulysses::runtime<Node> inner;  // the built-in runtime half, on this policy's ops
    explicit runtime(Node& node) : inner(node) {
      auto attention = node.hooks().attention;
      node.hooks().attention = [attention](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const nn::seq_layout& l) {
        const int call = calls++;
        if (call == throw_forward) throw std::runtime_error("contract_worker: thrown in forward");
        return throw_in_backward::apply(attention(q, k, v, l), call == throw_backward);
      };
    }
  };
};

}  // namespace user

namespace {

template <class Policy>
int misuse(const mesh_shape& m) {
  const comm::launch_env env = comm::read_launch_env();
  comm::gloo_mesh mesh(m, env);
  try {
    parallel::parallel_model<dense_lm, recipe<apply<"lm", Shard<FSDP>, Split<Policy>>>, comm::gloo_mesh> model(
        models::dense_lm_tiny(), mesh, {.seed = 1});
    const nn::batch b = parallel::local_batch(testing::global_batch(testing::kind::text, 0), m, env.rank, -1, -1);
    model.forward_backward(b);
  } catch (const std::logic_error& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  std::printf("no error\n");
  return 0;
}

int run_steps(bool interrupt, const mesh_shape& m, const std::string& out_path) {
  const comm::launch_env env = comm::read_launch_env();
  comm::gloo_mesh mesh(m, env);
  parallel::parallel_model<dense_lm, recipe<apply<"lm", Shard<FSDP>, Split<user::Flaky>>>, comm::gloo_mesh> model(
      models::dense_lm_tiny(), mesh, {.seed = 1234});
  train::adamw optim(model.parameters(), model.decay_masks(), {.lr = 1e-3, .weight_decay = 0.1});
  std::ofstream out;
  if (env.rank == 0) out.open(out_path);
  const long blocks = models::dense_lm_tiny().at<"lm">().layers;
  int thrown = 0;
  for (int step = 0; step < 4;) {
    // step 1: block 1's attention throws in forward; step 2: block 0's backward throws
    user::calls = 0;
    user::throw_forward = interrupt && step == 1 && thrown == 0 ? 1 : -1;
    user::throw_backward = interrupt && step == 2 && thrown == 1 ? 0 : -1;
    (void)blocks;
    const nn::batch b = parallel::local_batch(testing::global_batch(testing::kind::text, step), m, env.rank, -1, -1);
    model.zero_grad();
    double loss = 0;
    try {
      loss = model.forward_backward(b).loss;
    } catch (const std::runtime_error& e) {
      if (env.rank == 0) std::printf("step %d interrupted: %s\n", step, e.what());
      ++thrown;
      continue;  // the same step again
    }
    const double norm = model.optimizer_step([&](double n) { optim.step(1e-3, train::clip_scale(n, 1.0)); });
    if (env.rank == 0) {
      char line[96];
      std::snprintf(line, sizeof line, "%d %.9e %.9e\n", step, loss, norm);
      out << line;
    }
    ++step;
  }
  if (env.rank == 0) std::printf("contract_worker: 4 steps, %d interrupted\n", thrown);
  return interrupt && thrown != 2 ? 4 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string s = argc > 1 ? argv[1] : "";
  try {
    if (s == "undeclared_op") return misuse<user::UndeclaredOp>({});
    if (s == "wrong_collective") return misuse<user::WrongCollective>({.sp = 2});
    if (s == "out_of_order") return misuse<user::OutOfOrder>({});
    if ((s == "interrupted" || s == "clean") && argc == 5)
      return run_steps(s == "interrupted", {.dp_shard = std::atol(argv[2]), .sp = std::atol(argv[3])}, argv[4]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "contract_worker: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr,
               "usage: contract_worker undeclared_op|wrong_collective|out_of_order | interrupted|clean DP SP OUT\n");
  return 2;
}
