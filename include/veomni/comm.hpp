#pragma once
// <veomni/comm.hpp>: the distributed runtime: communicators over Gloo (CPU)
// and, when built with VEOMNI_WITH_NCCL, NCCL (CUDA); rendezvous from
// torchrun's environment over our own store; one group per mesh axis set; op/byte counters.
#include "comm/communicator.hpp"
#include "comm/counters.hpp"
#include "comm/error.hpp"
#include "comm/gloo.hpp"
#include "comm/launch_env.hpp"
#include "comm/mesh.hpp"
#include "comm/mesh_layout.hpp"
#include "comm/rendezvous.hpp"
#include "comm/store.hpp"
#include "comm/torch_compat.hpp"
#if defined(VEOMNI_WITH_NCCL)
#include "comm/nccl.hpp"
#endif
