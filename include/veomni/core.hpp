#pragma once
// <veomni/core.hpp>: the compile-time layer. No torch: the standard library
// and Boost.Hana only.
#include "core/axis.hpp"
#include "core/collective.hpp"
#include "core/component.hpp"
#include "core/components.hpp"
#include "core/cost.hpp"
#include "core/describe.hpp"
#include "core/fixed_string.hpp"
#include "core/graph.hpp"
#include "core/layer.hpp"
#include "core/plan.hpp"
#include "core/policies.hpp"
#include "core/policy.hpp"
#include "core/recipe.hpp"
#include "core/static_vector.hpp"
#include "models/zoo.hpp"
