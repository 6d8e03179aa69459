#pragma once
// <veomni/parallel.hpp>: the runtime of recipes and the built-in policies.
#include "parallel/collectives.hpp"
#include "parallel/contract.hpp"
#include "parallel/data.hpp"
#include "parallel/host_memory.hpp"
#include "parallel/runtime.hpp"
