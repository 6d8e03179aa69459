#pragma once
// AdamW on flat parameter shards, with a per-element weight-decay mask (no
// decay on norms and biases) and global-norm clipping. Element-wise, so a
// shard updates exactly as its elements would in the whole tensor.
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "../nn/kernels.hpp"

namespace veomni::train {

struct adamw_options {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class adamw {
 public:
  adamw(std::vector<at::Tensor> params, std::vector<at::Tensor> decay_masks, adamw_options o = {})
      : params_(std::move(params)), masks_(std::move(decay_masks)), o_(o) {
    for (const auto& p : params_) {
      m_.push_back(at::zeros_like(p, at::TensorOptions().requires_grad(false)));
      v_.push_back(at::zeros_like(p, at::TensorOptions().requires_grad(false)));
    }
  }

  // One update at learning rate lr, with gradients scaled by grad_scale (clipping).
  // Written as few passes over the parameters as the math allows:
  //   m = b1 m + (1 - b1) s g,  v = b2 v + (1 - b2) s^2 g^2,
  //   p -= lr wd mask p,  p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
  void step(double lr, double grad_scale = 1.0) {
    torch::NoGradGuard no_grad;
    ++t_;
    const double bc1 = 1 - std::pow(o_.beta1, t_), bc2 = 1 - std::pow(o_.beta2, t_);
    for (size_t i = 0; i < params_.size(); ++i) {
      at::Tensor& p = params_[i];
      if (!p.grad().defined()) continue;
      const at::Tensor& g = p.grad();
      if (nn::kernels::adamw_fusable(p, g, m_[i], v_[i], masks_[i])) {  // the same update in one pass
        nn::kernels::adamw_update(
            p, g, m_[i], v_[i], masks_[i],
            {.b1 = static_cast<float>(o_.beta1), .b2 = static_cast<float>(o_.beta2),
             .c1 = static_cast<float>((1 - o_.beta1) * grad_scale),
             .c2 = static_cast<float>((1 - o_.beta2) * grad_scale * grad_scale),
             .decay = static_cast<float>(lr * o_.weight_decay), .step = static_cast<float>(lr / bc1),
             .sqrt_bc2 = static_cast<float>(std::sqrt(bc2)), .eps = static_cast<float>(o_.eps)});
        continue;
      }
      m_[i].mul_(o_.beta1).add_(g, (1 - o_.beta1) * grad_scale);
      v_[i].mul_(o_.beta2).addcmul_(g, g, (1 - o_.beta2) * grad_scale * grad_scale);
      if (o_.weight_decay != 0) p.addcmul_(p, masks_[i], -lr * o_.weight_decay);
      p.addcdiv_(m_[i], v_[i].sqrt().div_(std::sqrt(bc2)).add_(o_.eps), -lr / bc1);
    }
  }
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }  // resuming from a checkpoint
  const std::vector<at::Tensor>& params() const { return params_; }
  std::vector<at::Tensor>& exp_avg() { return m_; }
  std::vector<at::Tensor>& exp_avg_sq() { return v_; }

 private:
  std::vector<at::Tensor> params_, masks_, m_, v_;
  adamw_options o_;
  int64_t t_ = 0;
};

// Scale that clips a gradient of norm `norm` to at most `max_norm` (0: off).
inline double clip_scale(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

}  // namespace veomni::train
