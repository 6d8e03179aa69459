#pragma once
// <veomni/veomni.hpp>: everything (needs LibTorch).
#include "core.hpp"
