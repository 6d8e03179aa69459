#pragma once
// <veomni/comm/mesh.hpp>: one communicator per axis set the policies run
// collectives over, made from the mesh sizes and this rank's place
// (mesh_layout.hpp has the rank layout and a worked example).
//
//   auto env  = comm::read_launch_env();                 // torchrun's variables
//   comm::gloo_mesh mesh({.dp_shard = 2, .sp = 2}, env);  // 4 ranks
//   mesh[axes<axis::dp_shard, axis::sp>].all_gather(out, shard).wait();
//
// Sizes are validated before any connection is made. Each rank connects only
// the groups it belongs to, each under its own store prefix
// ("veomni/group/0,1/"); axis sets whose groups hold the same ranks (sp and
// dp_shard*sp when dp_shard = 1) share one connection but keep their own
// axis key for counters. Groups of one rank connect nothing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "communicator.hpp"
#include "error.hpp"
#include "launch_env.hpp"
#include "mesh_layout.hpp"
#include "rendezvous.hpp"

namespace veomni::comm {

template <class Backend>
class device_mesh {
 public:
  using communicator = typename Backend::communicator;

  device_mesh(const mesh_shape& shape, const launch_env& env, comm_options options = comm_options::from_env(),
              std::vector<axis_set> sets = {standard_axis_sets.begin(), standard_axis_sets.end()})
      : shape_(shape), env_(env), options_(options), counters_(std::make_shared<comm_counters>()) {
    validate_mesh(shape_, env_.world_size);
    if (!options_.trace.empty())
      counters_->set_trace(std::make_shared<comm_trace>(options_.trace + ".rank" + std::to_string(env_.rank) + ".csv"));
    store_ = make_store(env_, options_);
    std::map<std::vector<int>, typename Backend::group_ptr> connected;
    for (const axis_set& s : sets) {
      if (find(s)) continue;
      const std::vector<int> members = group_ranks(shape_, s, env_.rank);
      const int me = static_cast<int>(std::find(members.begin(), members.end(), env_.rank) - members.begin());
      typename Backend::group_ptr group{};
      if (members.size() > 1) {
        if (auto it = connected.find(members); it != connected.end()) {
          group = it->second;
        } else {
          group = connect(s, members, me);
          connected.emplace(members, group);
        }
      }
      sets_.push_back(s);
      comms_.push_back(std::make_unique<communicator>(group, comm::axis_key(s), members, me, counters_, options_));
    }
  }

  // Writes the collective trace, if there is one (a failure is printed: a
  // destructor must not throw).
  ~device_mesh() {
    if (comm_trace* t = counters_->trace()) try {
        t->write();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
      }
  }
  device_mesh(const device_mesh&) = delete;
  device_mesh& operator=(const device_mesh&) = delete;

  // The communicator over `over` (axes in any order); throws if the mesh
  // made no group for it.
  communicator& operator[](const axis_set& over) {
    if (auto* c = find(over)) return *c;
    std::string made;
    for (const auto& s : sets_) made += (made.empty() ? "" : ", ") + comm::axis_key(s);
    throw std::invalid_argument("veomni::comm::device_mesh: no group over " + comm::axis_key(over) + " (made: " + made + ")");
  }
  communicator& world() { return (*this)[world_axes]; }

  const mesh_shape& shape() const { return shape_; }
  const launch_env& env() const { return env_; }
  int rank() const { return env_.rank; }
  comm_counters& counters() { return *counters_; }
  const compat::store_ptr& store() const { return store_; }

 private:
  communicator* find(const axis_set& over) {
    for (std::size_t i = 0; i < sets_.size(); ++i)
      if (same_axes(sets_[i], over)) return comms_[i].get();
    return nullptr;
  }

  typename Backend::group_ptr connect(const axis_set& s, const std::vector<int>& members, int me) {
    std::string list;
    for (int r : members) list += (list.empty() ? "" : ",") + std::to_string(r);
    try {
      return Backend::make_group(compat::make_prefix_store("veomni/group/" + list + "/", store_), me,
                                 static_cast<int>(members.size()), env_, options_);
    } catch (const std::exception& e) {
      // a rank that never came (a host not started, or one that cannot reach the
      // rendezvous) shows here, after the timeout: say where they were to meet
      throw comm_error("veomni::comm::device_mesh: connecting the group over " + comm::axis_key(s) + " (ranks " +
                       list + ") through the rendezvous at " + env_.master_addr + ":" +
                       std::to_string(env_.master_port) + " failed within " +
                       std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.timeout).count()) +
                       " s: " + compat::reason(e));
    }
  }

  mesh_shape shape_;
  launch_env env_;
  comm_options options_;
  std::shared_ptr<comm_counters> counters_;
  compat::store_ptr store_;
  std::vector<axis_set> sets_;
  std::vector<std::unique_ptr<communicator>> comms_;
};

}  // namespace veomni::comm
