"""WGAN-GP, R1 and R2 penalties built on fastgan.ops.grad_norm (first version; the
gradient-penalty issue hardens these)."""
import torch

from fastgan.ops.grad_norm import gradient_norm_penalty


def _critic_grad(critic, x, scaler=None):
    x = x.detach().requires_grad_(True)
    out = critic(x)
    score = out.sum()
    if scaler is not None:
        score = scaler.scale(score)
    (grad,) = torch.autograd.grad(score, x, create_graph=True)
    if scaler is not None:
        grad = grad / scaler.get_scale()
    return grad


def gradient_penalty(critic, real, fake, *, weight=10.0, center=1.0, alpha=None, scaler=None):
    """WGAN-GP: weight * mean_i (||d critic(x_hat)/d x_hat_i|| - center)^2,
    x_hat = alpha*real + (1-alpha)*fake with alpha ~ U[0,1) per sample."""
    real, fake = real.detach(), fake.detach()
    if alpha is None:
        alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = alpha * real + (1 - alpha) * fake
    return weight * gradient_norm_penalty(_critic_grad(critic, x_hat, scaler), center)


def r1_penalty(critic, real, *, gamma=10.0, scaler=None):
    """R1: gamma/2 * mean_i ||d critic(real)/d real_i||^2."""
    return gamma / 2 * gradient_norm_penalty(_critic_grad(critic, real, scaler), 0.0)


def r2_penalty(critic, fake, *, gamma=10.0, scaler=None):
    """R2: gamma/2 * mean_i ||d critic(fake)/d fake_i||^2."""
    return gamma / 2 * gradient_norm_penalty(_critic_grad(critic, fake, scaler), 0.0)
