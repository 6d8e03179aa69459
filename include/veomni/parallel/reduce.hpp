#pragma once
// Gradient reduction: the plan's backward unit ops (reduce_scatter,
// all_reduce) on a unit's gradient of one micro-batch, and where their
// results go (the master's .grad, accumulating micro-batches).
//
//   reduce_scatter(g)   FSDP, ZeRO-2: the flat gradient (padded) to this
//                       rank's shard; waited for once max_in_flight newer
//                       ones are issued (bounding the unsharded gradients
//                       held), then added to .grad, or kept for:
//   all_reduce_shard(g) HSDP: the reduce_scatter's output summed over the
//                       replicas (dp_replicate), in place, then added.
//   all_reduce(g)       DDP, ZeRO-1: the whole gradient summed in place.
// Everything issued is waited for at the end of backward (finish), in issue
// order. On a group of one rank nothing is issued; the gradient goes to
// .grad as it is, without a copy when nothing else holds it.
#include <torch/torch.h>

#include <deque>
#include <stdexcept>
#include <vector>

#include "storage.hpp"

namespace veomni::parallel {

// A gradient nothing else can see: contiguous over the whole of a storage
// that only it refers to (what split_flat's backward hands over), so it may
// become a .grad or a collective's buffer without a copy.
inline bool sole_owner(const at::Tensor& t) {
  return t.defined() && t.is_contiguous() && t.storage_offset() == 0 && t.storage().use_count() == 1 &&
         static_cast<int64_t>(t.storage().nbytes()) == t.numel() * static_cast<int64_t>(t.element_size());
}

// The reduced gradient into the group's gradient home (accumulating micro-batches).
template <class Comm>
void accumulate(param_group<Comm>& g, const at::Tensor& reduced, bool owned) {
  const bool whole_home = g.how == holding::whole_split && !g.grads_split;  // ZeRO-1
  at::Tensor& home = whole_home ? g.whole_grad : g.master.mutable_grad();
  at::Tensor t = reduced.to(g.master.scalar_type());
  if (home.defined())
    home.add_(t.reshape(home.sizes()));
  else
    home = (owned || !t.is_same(reduced) ? t : t.clone()).reshape({-1});
  if (whole_home && !g.master.grad().defined()) g.master.mutable_grad() = home.narrow(0, g.master_begin(), g.per());
}

template <class Comm>
class reducer {
 public:
  // async false: every reduction is waited for as soon as it is issued (a synchronous backward).
  explicit reducer(int max_in_flight = 1, bool async = true) : max_in_flight_(max_in_flight), async_(async) {}

  // reduce_scatter of `grad` (the flat gradient of the group's compute
  // buffer, padded or just its numel; undefined: zeros) over the group's
  // split, issued under `tag`; `replicas`: an all_reduce of the result follows.
  void reduce_scatter(unit_state<Comm>& u, int gi, const at::Tensor& grad, comm::issue_tag tag, bool issued) {
    param_group<Comm>& g = u.groups[static_cast<std::size_t>(gi)];
    const bool owned = sole_owner(grad);
    at::Tensor gr = grad.defined() ? grad.reshape({-1}) : at::zeros({g.numel}, g.master.options().requires_grad(false));
    if (!issued && !g.replica_reduce && owned && gr.numel() == g.master.numel() && gr.scalar_type() == g.reduce_type) {
      // a shard group of one (and no replicas): the gradient is the shard's as it is
      if (gr.numel() > g.numel) gr.narrow(0, g.numel, gr.numel() - g.numel).zero_();
      return accumulate(g, gr, true);
    }
    pending r;
    r.unit = &u, r.group = gi;
    const auto opts = g.master.options().dtype(g.reduce_type).requires_grad(false);
    if (gr.numel() == g.padded() && gr.scalar_type() == g.reduce_type) {
      r.in = gr;  // the gathered buffer's own gradient: only its padding to clear
      if (g.padded() > g.numel) r.in.narrow(0, g.numel, g.padded() - g.numel).zero_();
    } else {
      r.in = at::empty({g.padded()}, opts);
      r.in.narrow(0, 0, g.numel).copy_(gr.narrow(0, 0, g.numel));
      if (g.padded() > g.numel) r.in.narrow(0, g.numel, g.padded() - g.numel).zero_();
    }
    r.out = at::empty({g.per()}, opts);
    {
      comm::tagged_issue t(g.split->counters(), tag);
      r.w = g.split->reduce_scatter(r.out, r.in);
    }
    scattering_.push_back(std::move(r));
    // wait for the oldest at a point that depends only on the program: when over the limit
    while (!scattering_.empty() &&
           (!async_ || (max_in_flight_ > 0 && scattering_.size() > static_cast<std::size_t>(max_in_flight_))))
      pop_scattered();
  }

  // HSDP: the reduce_scatter's output of (u, gi) all-reduced over `over`.
  void all_reduce_shard(unit_state<Comm>& u, int gi, Comm& over, comm::issue_tag tag) {
    for (auto it = scattering_.begin(); it != scattering_.end(); ++it)
      if (it->unit == &u && it->group == gi) {
        it->w.wait();
        it->in = at::Tensor();
        scattered_.push_back(std::move(*it));
        scattering_.erase(it);
        break;
      }
    pending r;
    for (auto it = scattered_.begin(); it != scattered_.end(); ++it)
      if (it->unit == &u && it->group == gi) {
        r = std::move(*it);
        scattered_.erase(it);
        break;
      }
    if (!r.unit)
      throw std::logic_error("veomni::parallel: an all_reduce over replicas ran before its unit's reduce_scatter");
    {
      comm::tagged_issue t(over.counters(), tag);
      r.w = over.all_reduce(r.out, comm::reduce_op::sum);
    }
    summed(std::move(r));
  }

  // DDP, ZeRO-1: the whole gradient all-reduced in place over `over`. In
  // place when nothing else can see its memory (split_flat's fresh flat
  // gradient); else a copy.
  void all_reduce(unit_state<Comm>& u, int gi, const at::Tensor& grad, Comm& over, comm::issue_tag tag, bool issued) {
    param_group<Comm>& g = u.groups[static_cast<std::size_t>(gi)];
    const bool own = sole_owner(grad) && grad.numel() == g.padded() && grad.scalar_type() == g.master.scalar_type();
    at::Tensor buf;
    if (own) {
      buf = grad.view({-1});
    } else {
      buf = at::empty({g.padded()}, g.master.options().requires_grad(false));
      if (grad.defined())
        buf.narrow(0, 0, grad.numel()).copy_(grad.reshape({-1}));
      else
        buf.zero_();
    }
    if (!issued) return accumulate(g, buf, true);
    pending r;
    r.unit = &u, r.group = gi, r.out = buf;
    {
      comm::tagged_issue t(over.counters(), tag);
      r.w = over.all_reduce(r.out, comm::reduce_op::sum);
    }
    summed(std::move(r));
  }

  // After backward: everything issued waited for, in issue order, and added to .grad.
  void finish() {
    while (!scattering_.empty()) pop_scattered();
    for (auto& r : summing_) {
      r.w.wait();
      accumulate(r.unit->groups[static_cast<std::size_t>(r.group)], r.out, true);
    }
    summing_.clear();
    if (!scattered_.empty())
      throw std::logic_error("veomni::parallel: a reduce_scatter's output was kept for an all_reduce the schedule never ran");
  }
  // What an interrupted step left behind.
  void clear() {
    scattering_.clear();
    scattered_.clear();
    summing_.clear();
  }

 private:
  struct pending {
    unit_state<Comm>* unit = nullptr;
    int group = 0;
    at::Tensor in, out;
    comm::work w;
  };

  void summed(pending r) {
    if (async_) return summing_.push_back(std::move(r));
    r.w.wait();
    accumulate(r.unit->groups[static_cast<std::size_t>(r.group)], r.out, true);
  }

  void pop_scattered() {
    pending r = std::move(scattering_.front());
    scattering_.pop_front();
    r.w.wait();
    r.in = at::Tensor();
    param_group<Comm>& g = r.unit->groups[static_cast<std::size_t>(r.group)];
    if (g.replica_reduce)
      scattered_.push_back(std::move(r));  // its all_reduce over the replicas comes
    else
      accumulate(g, r.out, true);
  }

  int max_in_flight_;
  bool async_;
  std::deque<pending> scattering_;  // reduce_scatters issued, oldest first
  std::vector<pending> scattered_;  // done, awaiting their all_reduce (HSDP)
  std::vector<pending> summing_;    // all_reduces issued
};

}  // namespace veomni::parallel
