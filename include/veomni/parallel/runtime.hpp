#pragma once
// <veomni/parallel/runtime.hpp>: the runtime of a recipe (parallel_model),
// with the built-in policies' runtime halves.
//
//   contract.hpp    what a policy's runtime half sees and may call (op and node handles)
//   executor.hpp    walks the plan's schedule, issues each op instance in order
//   storage.hpp     how a unit's parameters are held, from the placements
//   reduce.hpp      gradient reductions and where their results go
//   autograd.hpp    the autograd functions around units and blocks
//   collectives.hpp collectives on activations, each with its backward dual
//   model.hpp       parallel_model: nn::forward over all of it
//   policies/       Ulysses's, EP's and LoRA's runtime halves
#include "model.hpp"
#include "policies/ep.hpp"
#include "policies/lora.hpp"
#include "policies/ulysses.hpp"
