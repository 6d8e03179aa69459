#pragma once
// The one contract between a policy and the runtime. Every policy, built-in
// or a user's, goes through it; nothing in parallel/ or train/ asks which
// policy a node has.
//
// A policy type carries two halves:
//
//   compile time  name, touches, placements<Ctx>(), ops<Ctx>()   (core/policy.hpp)
//   run time      template <class Node> struct runtime           (optional, here)
//
// What the compile-time half says is what runs:
//   - placements decide how each unit's parameters are stored
//     (parallel/storage.hpp: flat shards, whole, whole with a split optimizer);
//   - ops on units (params, grads) have one standard meaning each
//     (core/schedule.hpp, unit_op_kind), which the runtime carries out on
//     that storage when the schedule reaches them: gather, gather again,
//     reduce_scatter, all_reduce, all_gather after the update. FSDP, HSDP,
//     DDP, and the ZeRO examples need no runtime half;
//   - ops on layers (activations) are the policy's own: its runtime half
//     carries them out, through op handles, from the component hooks it
//     wraps (attention, experts). A policy with layer ops and no runtime half
//     does not compile.
//
// The runtime half is constructed once per node the policy is applied to:
//
//   struct Ulysses {
//     ... compile-time half ...
//     template <class Node> struct runtime;     // declared here, defined with torch:
//   };
//   template <class Node> struct Ulysses::runtime {
//     explicit runtime(Node& node) {
//       auto q = node.op(phase::forward, tensor_role::q);       // this policy's op on this node
//       node.hooks().attention = [=](...) { ... seq_to_heads(q, q_back, x) ... };
//     }
//   };
//
// and may declare `static constexpr sequence_layout layout` (how a Split
// lays the sequence over its ranks; parallel/data.hpp).
//
// A handle issues only its own op's collective, over its op's group, and
// only when the schedule has come to that instance (parallel/executor.hpp):
// an op the policy did not declare cannot be looked up, another collective
// under its tag is refused by the communicator, and an instance out of the
// schedule's order is an error that names both. So what runs is the plan.
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "../comm/communicator.hpp"
#include "../core/schedule.hpp"
#include "../nn/components.hpp"

namespace veomni::parallel {

// One instance of a plan op: the op, which block's (-1: once per node), and
// whether it is a checkpointed block's forward run again in backward.
struct op_instance {
  std::size_t op = 0;
  long block = -1;
  bool recompute = false;
  friend bool operator==(const op_instance&, const op_instance&) = default;
};

// A non-owning reference to a callable, for the one the executor runs when
// the schedule reaches a requested instance (no allocation per collective).
template <class Sig>
class function_ref;
template <class R, class... A>
class function_ref<R(A...)> {
 public:
  template <class F>
  function_ref(F& f) : obj_(&f), call_([](void* o, A... a) -> R { return (*static_cast<F*>(o))(a...); }) {}
  R operator()(A... a) const { return call_(obj_, a...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// One op of the plan, as a policy's runtime half (or the runtime's own step
// reductions) issues it. Copyable; refers to the executor, which outlives
// every graph it is used in.
template <class Exec>
class op_handle {
 public:
  using comm_type = typename Exec::comm_type;
  op_handle() = default;
  op_handle(Exec* e, std::size_t op) : exec_(e), op_(op) {}

  // The instance for what runs now: the current block's (forward, or its
  // recompute in backward) for a block-scope op, else the node's.
  op_instance now() const { return exec_->now(op_); }
  // This op's instance paired with a forward instance (a backward dual: same block).
  op_instance paired(const op_instance& forward) const { return {op_, forward.block, false}; }

  int size() const { return comm().size(); }
  int rank() const { return comm().rank(); }
  const plan_op& op() const { return Exec::plan_type::ops[op_]; }
  std::size_t index() const { return op_; }
  explicit operator bool() const { return exec_ != nullptr; }

  comm::work all_to_all(const op_instance& i, at::Tensor out, const at::Tensor& in) const {
    return issue(i, [&](comm_type& c) { return c.all_to_all(out, in); });
  }
  comm::work all_to_all(const op_instance& i, at::Tensor out, const at::Tensor& in, std::vector<int64_t> out_splits,
                        std::vector<int64_t> in_splits) const {
    return issue(i, [&](comm_type& c) { return c.all_to_all(out, in, out_splits, in_splits); });
  }
  // The counts an uneven all_to_all exchanges first (part of the same op).
  comm::work all_to_all_counts(const op_instance& i, at::Tensor out, const at::Tensor& in) const {
    return issue(i, [&](comm_type& c) { return c.all_to_all_counts(out, in); });
  }
  comm::work all_gather(const op_instance& i, at::Tensor out, const at::Tensor& in) const {
    return issue(i, [&](comm_type& c) { return c.all_gather(out, in); });
  }
  comm::work reduce_scatter(const op_instance& i, at::Tensor out, const at::Tensor& in) const {
    return issue(i, [&](comm_type& c) { return c.reduce_scatter(out, in); });
  }
  comm::work all_reduce(const op_instance& i, at::Tensor t) const {
    return issue(i, [&](comm_type& c) { return c.all_reduce(t, comm::reduce_op::sum); });
  }

  // Instance i's collectives, as f(communicator) issues them, when the
  // schedule grants i (once). Every collective f runs is checked against the
  // op (its kind, its group): an uneven all_to_all exchanges its counts and
  // then its rows under one instance this way. Returns what f returns.
  template <class F>
  auto issue(const op_instance& i, F&& f) const {
    using result = decltype(f(std::declval<comm_type&>()));
    result out{};
    auto run = [&](comm::issue_tag t) {
      comm::tagged_issue g(comm().counters(), t);
      out = f(comm());
    };
    exec_->request(i, function_ref<void(comm::issue_tag)>(run));
    return out;
  }

 private:
  comm_type& comm() const { return exec_->comm(op_); }

  Exec* exec_ = nullptr;
  std::size_t op_ = 0;
};

// What a policy's runtime half sees of the node it is applied to.
template <class Exec>
class node_handle {
 public:
  using plan_type = typename Exec::plan_type;
  using op_type = op_handle<Exec>;

  node_handle(Exec& e, std::size_t node, std::string_view policy, nn::hooks& h)
      : exec_(&e), node_(node), policy_(policy), hooks_(&h) {}

  std::size_t index() const { return node_; }
  std::string_view name() const { return plan_type::model::names[node_]; }
  std::string_view policy() const { return policy_; }
  // The node's hooks (parallel/../nn/components.hpp): wrap or replace them.
  nn::hooks& hooks() const { return *hooks_; }
  // The runtime options (parallel/executor.hpp), e.g. adapters' settings.
  const auto& run_options() const { return exec_->opts(); }

  // The adapters the runtime holds for this node's units of scope s (its
  // root, or any of its blocks: all alike), where its Adapt<> placements put
  // them: at the end of the unit's tensor list, lora_A then lora_B of each
  // adapted linear map (an expert tensor's stacked like it: [E, rank, in],
  // [E, out, rank], its local experts' rows when split with the experts).
  // slot[i] = k for the list's k-th adapted tensor i (its factors at
  // base + 2k and base + 2k + 1), else -1; size: the list's length. No
  // adapters: an empty slot list.
  struct unit_adapters {
    std::vector<int> slot;
    std::size_t base = 0, size = 0;
  };
  unit_adapters adapters(scope s) const {
    const long units = exec_->unit_count(node_);
    if (s == scope::block && units < 2) return {};
    const auto& u = exec_->unit(node_, s == scope::block ? 0 : -1);
    unit_adapters a;
    a.slot = u.adapter_slot;
    a.base = u.groups[0].shapes.size() + u.groups[1].shapes.size();
    a.size = a.base + u.groups[2].shapes.size() + u.groups[3].shapes.size();
    return a;
  }

  // This policy's op on this node's layer `layer` (index into the component's layers).
  op_type op(std::size_t layer, phase ph, tensor_role t) const { return find(ph, t, [&](const plan_op& o) {
      return !o.target.is_unit && o.target.layer == layer; }, "layer " + std::to_string(layer)); }
  // This policy's op on the node's one layer of kind k.
  op_type op(layer_kind k, phase ph, tensor_role t) const {
    return find(ph, t, [&](const plan_op& o) { return !o.target.is_unit && exec_->layer_kind_of(o) == k; },
                std::string(to_string(k)) + " layer");
  }
  // This policy's op on a layer of the kind it touches (its only one).
  op_type op(phase ph, tensor_role t) const {
    return find(ph, t, [](const plan_op& o) { return !o.target.is_unit; }, "layer");
  }

 private:
  template <class F>
  op_type find(phase ph, tensor_role t, F&& match, const std::string& what) const {
    std::size_t found = plan_type::size, layer = 0;
    for (std::size_t i = 0; i < plan_type::size; ++i) {
      const plan_op& o = plan_type::ops[i];
      if (o.node_index != node_ || o.policy != policy_ || o.ph != ph || o.tensor != t || !match(o)) continue;
      if (found != plan_type::size && o.target.layer != layer)
        throw std::logic_error("veomni::parallel: " + std::string(policy_) + " on node '" + std::string(name()) +
                               "' has " + std::string(to_string(ph)) + " " + std::string(to_string(t)) +
                               " ops on more than one " + what + ": name the layer (node.op(layer, phase, tensor))");
      found = i;
      layer = o.target.layer;
    }
    if (found == plan_type::size)
      throw std::logic_error("veomni::parallel: " + std::string(policy_) + " on node '" + std::string(name()) +
                             "' asks for a " + std::string(to_string(ph)) + " op on " + std::string(to_string(t)) +
                             " (" + what + ") that its ops<Ctx>() does not declare: it is not in the plan");
    return {exec_, found};
  }

  Exec* exec_;
  std::size_t node_;
  std::string_view policy_;
  nn::hooks* hooks_;
};

namespace detail {
template <class P, class = void>
struct implementation_of {
  using type = P;
};
template <class P>
struct implementation_of<P, std::void_t<typename P::implementation>> {
  using type = typename P::implementation;
};
}  // namespace detail

// The policy implementation's runtime half for node handle type H, if it has one.
template <class P, class H>
concept has_runtime = requires { typename detail::implementation_of<P>::type::template runtime<H>; };

template <class P, class H>
struct runtime_of {
  using type = typename detail::implementation_of<P>::type::template runtime<H>;
};

// Compile-time checks of one policy on one node against the contract.
template <class P, class Ctx>
constexpr bool has_layer_ops() {
  for (const auto& o : P::template ops<Ctx>())
    if (!o.target.is_unit) return true;
  return false;
}
template <class P, class Ctx>
constexpr bool unit_ops_standard() {
  for (const auto& o : P::template ops<Ctx>())
    if (o.target.is_unit && classify(o) == unit_op_kind::none) return false;
  return true;
}

// One error each, naming the node and the policy (core/diagnostics.hpp).
template <bool HasRuntimeIfNeeded, bool UnitOpsStandard, class Node, class P>
constexpr bool report_contract() {
  static_assert(HasRuntimeIfNeeded,
                "veomni::parallel: the policy adds collectives on layers (activations), which only its runtime half "
                "can carry out: give its implementation a nested `template <class Node> struct runtime` "
                "(parallel/contract.hpp, docs/extending.md)");
  static_assert(!HasRuntimeIfNeeded || UnitOpsStandard,
                "veomni::parallel: the policy adds an op on a unit that has no standard meaning (a unit's ops are "
                "forward/backward/optimizer all_gather of params, backward reduce_scatter or all_reduce of grads; "
                "core/schedule.hpp, unit_op_kind)");
  return HasRuntimeIfNeeded && UnitOpsStandard;
}
template <class P, class Ctx, class H, const std::string_view& Node>
constexpr bool check_contract() {
  return report_contract<!has_layer_ops<P, Ctx>() || has_runtime<P, H>, unit_ops_standard<P, Ctx>(),
                         veomni::diag::node_named<Node>, P>();
}

}  // namespace veomni::parallel
