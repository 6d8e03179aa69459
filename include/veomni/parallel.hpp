#pragma once
// <veomni/parallel.hpp>: the runtime of the built-in policies.
#include "parallel/collectives.hpp"
#include "parallel/data.hpp"
#include "parallel/host_memory.hpp"
#include "parallel/runtime.hpp"
#include "parallel/setup.hpp"
