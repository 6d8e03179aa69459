#pragma once
// The executor: walks the plan's schedule (core/schedule.hpp) through each
// micro-batch and the optimizer phase, and issues every op instance there,
// in the schedule's order, each under its plan op's tag (comm/trace.hpp).
//
//   reach(trigger)     the computation came to a point: the instances placed
//                      there become ready
//   request(i, f)      a layer (through an op handle) asks for instance i now:
//                      it becomes ready, and f issues its collective when the
//                      walk gets there
//   walk               while the next instance is ready, run it: a unit op by
//                      its standard meaning (storage.hpp, reduce.hpp), a
//                      requested one by its f
//
// A request the walk cannot reach at once (an earlier instance is not ready)
// means the computation runs in another order than the plan: an error that
// names both, before any collective of it is issued. So the collectives a
// rank issues in a step are the schedule's, in its order, and every rank
// issues the same sequence.
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "../comm/mesh_layout.hpp"
#include "../core/schedule.hpp"
#include "../nn/model.hpp"
#include "contract.hpp"
#include "options.hpp"
#include "reduce.hpp"
#include "storage.hpp"

namespace veomni::parallel {

template <class P, class Mesh>
class executor {
 public:
  using plan_type = P;
  using G = typename P::model;
  using comm_type = typename Mesh::communicator;
  using unit_type = unit_state<comm_type>;

  executor(const typename G::dims& d, Mesh& mesh, const options& opt)
      : d_(d), mesh_(mesh), opt_(opt), reducer_(opt.max_reduces_in_flight, opt.async_reduce) {
    sched_ = schedule<P>(d, mesh.shape(),
                         {.checkpoint = opt.checkpoint, .forward_prefetch = opt.prefetch,
                          .backward_prefetch = opt.backward_prefetch,
                          .max_reduces_in_flight = opt.max_reduces_in_flight});
    for (std::size_t i = 0; i < P::size; ++i) {
      const plan_op& o = P::ops[i];
      comms_[i] = &mesh_[o.over];
      kinds_[i] = classify(o);
      labels_[i] = {static_cast<std::int64_t>(i), o.node, o.where, o.policy, to_string(o.ph), to_string(o.tensor),
                    to_string(run_dtype(o, opt.prec)), to_string(o.coll), comm::axis_key(o.over)};
    }
    units_ = storage_builder<P, Mesh>(d, mesh, sched_, opt).build(first_unit_);
    index(sched_.micro, micro_);
    index(sched_.optimizer, optim_);
  }
  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;

  // ---- what the model and the handles ask -----------------------------------------------
  comm_type& comm(std::size_t op) { return *comms_[op]; }
  Mesh& mesh() { return mesh_; }
  const options& opts() const { return opt_; }
  const step_schedule& steps() const { return sched_; }
  std::vector<unit_type>& units() { return units_; }
  const std::vector<unit_type>& units() const { return units_; }
  unit_type& unit(std::size_t node, long block) { return units_[first_unit_[node] + static_cast<std::size_t>(block + 1)]; }
  // Units of a node: its root and its blocks.
  long unit_count(std::size_t node) const { return static_cast<long>(first_unit_[node + 1] - first_unit_[node]); }
  static layer_kind layer_kind_of(const plan_op& o) {
    layer_kind k = layer_kind::norm;
    for_each_node<G>([&](auto I) {
      if (I.value == o.node_index) k = G::template component_at<I.value>::layers[o.target.layer].kind;
    });
    return k;
  }

  // The instance of op `op` for what runs now.
  op_instance now(std::size_t op) const {
    const bool per_block = P::ops[op].repeat == scope::block;
    return {op, per_block ? current_block_ : -1, per_block && recomputing_};
  }
  // The block whose forward (or recompute) runs now.
  void set_current(long block, bool recompute) {
    current_block_ = block;
    recomputing_ = recompute;
  }
  long current_block() const { return current_block_; }

  // ---- a micro-batch --------------------------------------------------------------------
  void begin_micro_batch() {
    // what an interrupted step (an exception) left behind
    reducer_.clear();
    for (auto& u : units_) u.clear_micro_batch();
    micro_.reset();
    active_ = &micro_;
    current_block_ = -1;
    recomputing_ = false;
  }

  void reach(const trigger& t) {
    auto it = active_->by_trigger.find(key(t));
    if (it != active_->by_trigger.end())
      for (std::size_t e : it->second) active_->ready[e] = 1;
    walk();
  }

  // Instance i, asked for by the computation now; f issues its collective.
  void request(const op_instance& i, function_ref<void(comm::issue_tag)> f) {
    auto it = active_->by_instance.find(key(i));
    if (it == active_->by_instance.end())
      throw std::logic_error("veomni::parallel: " +
                             describe_instance<P>({i.op, i.block, i.recompute, true, {}}) +
                             " is not in this step's schedule (a block the plan does not run it for, or a recompute "
                             "without activation checkpointing)");
    const std::size_t e = it->second;
    if (e < active_->cursor) {
      // an instance's collectives go one after another (an uneven
      // all_to_all's counts, then its rows): the one just run may go on
      if (e + 1 == active_->cursor) return f({&labels_[i.op], i.block, i.recompute});
      throw std::logic_error("veomni::parallel: " + describe_instance<P>(active_->seq[e]) +
                             " was asked for again after later ops ran in this micro-batch");
    }
    active_->ready[e] = 1;
    active_->action = &f;
    active_->action_entry = e;
    walk();
    active_->action = nullptr;
    if (active_->cursor <= e) {
      const scheduled_op& next = active_->seq[active_->cursor];
      throw std::logic_error("veomni::parallel: the computation asks for " + describe_instance<P>(active_->seq[e]) +
                             " while the plan's schedule runs " + describe_instance<P>(next) + " first (at " +
                             std::string(to_string(next.when.kind)) + ", not reached): plan and runtime disagree");
    }
  }

  // A unit's gradient of this micro-batch (group gi) is complete.
  void grads_ready(unit_type& u, int gi, at::Tensor grad) {
    const auto g = static_cast<std::size_t>(gi);
    if (u.grad_arrived[g])
      throw std::logic_error("veomni::parallel: node '" + std::string(G::names[u.id.node]) + "' unit " +
                             std::to_string(u.id.block) + ": its gradient arrived twice in one backward");
    u.grad_arrived[g] = true;
    param_group<comm_type>& grp = u.groups[g];
    if (grp.empty() || grp.frozen) return reach({trigger_kind::grads_ready, u.id.node, u.id.block, gi});
    if (grp.leaf) {  // nothing reduces it: straight into .grad
      if (grad.defined()) accumulate(grp, grad, sole_owner(grad));
    } else {
      u.grad[g] = std::move(grad);
    }
    reach({trigger_kind::grads_ready, u.id.node, u.id.block, gi});
  }

  // A flat-sharded group's gathered parameters (waits for the gather the
  // schedule issued for this unit).
  at::Tensor take_gathered(unit_type& u, int gi) { return arrived(u, static_cast<std::size_t>(gi), "its gathered parameters"); }
  // The backward gather into the storage forward freed (waits for it).
  // only_issued: wait only for one already in flight (prefetched), so that
  // the next block's is issued after it completes.
  void finish_regather(unit_type& u, bool only_issued = false) {
    for (std::size_t g = 0; g < 2; ++g) {
      if (!u.regathers[g] || !u.groups[g].gathers() || u.regathered[g]) continue;
      if (only_issued && !u.gathered[g].defined()) continue;
      arrived(u, g, "its parameters again");
      u.regathered[g] = true;
    }
  }
  // Frees a block's gathered copy (its storage, which autograd refers to).
  static void free_gathered(unit_type& u, const at::Tensor& dense, const at::Tensor& experts) {
    if (u.regathers[0] && u.groups[0].gathers()) detail::resize_storage(dense, 0);
    if (u.regathers[1] && u.groups[1].gathers()) detail::resize_storage(experts, 0);
  }

  // After backward: every instance left is run (a unit backward did not
  // reach reduces zeros, as the plan does whatever the data), everything
  // issued is waited for and added to .grad.
  void finish_micro_batch() {
    for (std::size_t e = active_->cursor; e < active_->seq.size(); ++e) {
      const scheduled_op& s = active_->seq[e];
      if (s.when.kind == trigger_kind::request && !active_->ready[e])
        throw std::logic_error("veomni::parallel: backward ended before " + describe_instance<P>(s) +
                               " ran: plan and runtime disagree");
      active_->ready[e] = 1;
    }
    walk();
    reducer_.finish();
    for (auto& u : units_) {
      // gathered for a backward that did not run: complete, and drop
      for (std::size_t g = 0; g < 2; ++g) {
        u.gathering[g].wait();
        u.gathering[g] = comm::work();
      }
      u.clear_micro_batch();
      for (auto& g : u.groups)
        if (!g.empty() && !g.frozen && !g.master.grad().defined()) g.master.mutable_grad() = at::zeros_like(g.master);
    }
    current_block_ = -1;
  }

  // ---- the optimizer phase ----------------------------------------------------------------
  void begin_optimizer() {
    optim_.reset();
    active_ = &optim_;
  }
  void finish_optimizer() {
    reach({trigger_kind::update_end, G::size, -1});
    if (optim_.cursor != optim_.seq.size())
      throw std::logic_error("veomni::parallel: the optimizer phase ended before " +
                             describe_instance<P>(optim_.seq[optim_.cursor]) + " ran");
    for (auto& u : units_)
      for (std::size_t g = 0; g < 2; ++g) {
        u.gathering[g].wait();
        u.gathering[g] = comm::work();
        u.gathered[g] = at::Tensor();
      }
    active_ = &micro_;
  }
  // The optimizer-phase gathers alone (after a checkpoint's load): the whole
  // parameters of split groups from their masters.
  void refresh_from_masters() {
    begin_optimizer();
    for (std::size_t e = 0; e < optim_.seq.size(); ++e)
      if (optim_.seq[e].when.kind == trigger_kind::update_end) run(optim_, e);
    for (auto& u : units_)
      for (std::size_t g = 0; g < 2; ++g) {
        u.gathering[g].wait();
        u.gathering[g] = comm::work();
        u.gathered[g] = at::Tensor();
      }
    optim_.reset();
    active_ = &micro_;
  }
  bool optimizer_pending() const { return active_ == &optim_; }

 private:
  // A schedule being walked, and its lookup tables.
  struct walker {
    std::vector<scheduled_op> seq;
    std::unordered_map<std::uint64_t, std::vector<std::size_t>> by_trigger;
    std::unordered_map<std::uint64_t, std::size_t> by_instance;
    std::vector<char> ready;
    std::size_t cursor = 0;
    function_ref<void(comm::issue_tag)>* action = nullptr;
    std::size_t action_entry = 0;
    void reset() {
      std::fill(ready.begin(), ready.end(), 0);
      cursor = 0;
      action = nullptr;
    }
  };

  static std::uint64_t key(const trigger& t) {
    return (static_cast<std::uint64_t>(t.kind) << 56) | (static_cast<std::uint64_t>(t.node) << 40) |
           (static_cast<std::uint64_t>(t.block + 1) << 8) | static_cast<std::uint64_t>(t.group);
  }
  static std::uint64_t key(const op_instance& i) {
    return (static_cast<std::uint64_t>(i.op) << 32) | (static_cast<std::uint64_t>(i.block + 1) << 1) |
           (i.recompute ? 1u : 0u);
  }
  void index(const std::vector<scheduled_op>& seq, walker& w) {
    w.seq = seq;
    w.ready.assign(seq.size(), 0);
    for (std::size_t e = 0; e < seq.size(); ++e) {
      if (seq[e].when.kind == trigger_kind::request)
        w.by_instance[key(op_instance{seq[e].op, seq[e].block, seq[e].recompute})] = e;
      else
        w.by_trigger[key(seq[e].when)].push_back(e);
    }
  }

  void walk() {
    walker& w = *active_;
    while (w.cursor < w.seq.size() && w.ready[w.cursor]) run(w, w.cursor++);
  }

  // The gather issued for group g of u, once it has arrived; an error if the
  // schedule has not issued it (the computation needs `what` first).
  at::Tensor arrived(unit_type& u, std::size_t g, const char* what) {
    if (!u.gathered[g].defined())
      throw std::logic_error("veomni::parallel: node '" + std::string(G::names[u.id.node]) + "' block " +
                             std::to_string(u.id.block) + " needs " + what +
                             " before the plan's schedule gathered them");
    u.gathering[g].wait();
    u.gathering[g] = comm::work();
    return std::move(u.gathered[g]);
  }

  // One instance, by what its op is.
  void run(walker& w, std::size_t e) {
    const scheduled_op& s = w.seq[e];
    const plan_op& o = P::ops[s.op];
    const comm::issue_tag tag{&labels_[s.op], s.block, s.recompute};
    if (kinds_[s.op] == unit_op_kind::none) {
      if (!w.action || w.action_entry != e)
        throw std::logic_error("veomni::parallel: " + describe_instance<P>(s) + " has no one to issue it");
      (*w.action)(tag);
      return;
    }
    const int gi = group_of(o.tensor);
    const auto g = static_cast<std::size_t>(gi);
    unit_type& u = unit(o.node_index, s.block);
    param_group<comm_type>& grp = u.groups[g];
    if (grp.empty()) return;
    switch (kinds_[s.op]) {
      case unit_op_kind::gather:
      case unit_op_kind::regather: return start_gather(u, gi, tag, kinds_[s.op] == unit_op_kind::regather);
      // each gradient goes to one reduction, which holds it as long as it needs it
      case unit_op_kind::reduce_scatter:
        reducer_.reduce_scatter(u, gi, u.grad[g], tag, s.issued);
        u.grad[g] = at::Tensor();
        return;
      case unit_op_kind::all_reduce:
        if (!grp.leaf) reducer_.all_reduce(u, gi, u.grad[g], *comms_[s.op], tag, s.issued);
        u.grad[g] = at::Tensor();
        return;
      case unit_op_kind::all_reduce_shard: return reducer_.all_reduce_shard(u, gi, *comms_[s.op], tag);
      case unit_op_kind::update_gather: return update_gather(grp, tag);
      case unit_op_kind::none: return;
    }
  }

  // Gathers in the compute dtype (bf16 halves the bytes); the shard stays
  // fp32. A regather after forward freed the storage writes into it again
  // (autograd saved that storage); else a fresh buffer.
  void start_gather(unit_type& u, int gi, comm::issue_tag tag, bool again) {
    const auto g = static_cast<std::size_t>(gi);
    param_group<comm_type>& grp = u.groups[g];
    if (grp.how != holding::flat_shard)
      throw std::logic_error("veomni::parallel: node '" + std::string(G::names[u.id.node]) +
                             "': an all_gather of parameters on a group its placements do not shard");
    if (!grp.gathers()) {  // the shard itself (no copy in its own dtype)
      u.gathered[g] = grp.master.detach().to(grp.compute);
      return;
    }
    at::Tensor out;
    if (again && !opt_.checkpoint && u.saved[g].defined()) {
      detail::resize_storage(u.saved[g], static_cast<size_t>(grp.padded()) * u.saved[g].element_size());
      out = detail::alias_of(u.saved[g]);
    } else {
      out = at::empty({grp.padded()}, grp.master.options().dtype(grp.compute).requires_grad(false));
    }
    comm::tagged_issue t(grp.split->counters(), tag);
    u.gathering[g] = grp.split->all_gather(out, grp.master.detach().to(grp.compute).contiguous());
    u.gathered[g] = out;
  }

  // ZeRO: the updated shards into the whole parameters.
  static void update_gather(param_group<comm_type>& grp, comm::issue_tag tag) {
    if (grp.how != holding::whole_split) return;
    const at::Tensor mine = grp.master.detach().clone();
    comm::tagged_issue t(grp.split->counters(), tag);
    grp.split->all_gather(grp.whole, mine).wait();
  }

  typename G::dims d_;
  Mesh& mesh_;
  options opt_;
  step_schedule sched_;
  std::array<comm_type*, P::size> comms_{};
  std::array<unit_op_kind, P::size> kinds_{};
  std::array<comm::op_label, P::size> labels_{};
  std::vector<unit_type> units_;
  std::array<std::size_t, G::size + 1> first_unit_{};
  reducer<comm_type> reducer_;
  walker micro_, optim_;
  walker* active_ = &micro_;
  long current_block_ = -1;
  bool recomputing_ = false;
};

}  // namespace veomni::parallel
