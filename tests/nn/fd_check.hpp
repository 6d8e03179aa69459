#pragma once
// Gradients against central finite differences (double precision): for
// every `stride`-th parameter with a gradient, its middle element.
#include <torch/torch.h>
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <veomni/nn.hpp>

namespace veomni::testing {

struct fd_result {
  int checked = 0;
  std::vector<std::string> names;  // of the parameters checked
};

// `loss` recomputes the loss from the current values of `ps`, whose
// gradients backward has filled; specs[i] names ps[i] in messages.
inline fd_result check_gradients_by_fd(const std::vector<at::Tensor>& ps, const std::vector<nn::param_spec>& specs,
                                       const std::function<at::Tensor()>& loss, std::size_t stride) {
  fd_result r;
  for (std::size_t i = 0; i < ps.size(); i += stride) {
    if (!ps[i].grad().defined()) continue;
    torch::NoGradGuard ng;
    const int64_t j = ps[i].numel() / 2;
    const double h = 1e-6, old = ps[i].view({-1})[j].item<double>();
    ps[i].view({-1})[j] = old + h;
    const double up = loss().item<double>();
    ps[i].view({-1})[j] = old - h;
    const double down = loss().item<double>();
    ps[i].view({-1})[j] = old;
    const double fd = (up - down) / (2 * h), ad = ps[i].grad().view({-1})[j].item<double>();
    CHECK_MESSAGE(std::abs(fd - ad) <= 1e-6 * (1 + std::abs(fd)), specs[i].name, ": fd ", fd, " autograd ", ad);
    ++r.checked;
    r.names.push_back(specs[i].name);
  }
  return r;
}

}  // namespace veomni::testing
