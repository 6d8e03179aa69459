#pragma once
// <veomni/veomni.hpp>: everything (needs LibTorch).
#include "comm.hpp"
#include "core.hpp"
#include "nn.hpp"
#include "parallel.hpp"
#include "train/optimizer.hpp"
