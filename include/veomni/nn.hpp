#pragma once
// <veomni/nn.hpp>: the modality components' math on LibTorch.
#include "nn/components.hpp"
#include "nn/functional.hpp"
#include "nn/init.hpp"
#include "nn/model.hpp"
