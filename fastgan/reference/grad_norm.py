"""The gradient-norm penalty reduction, in plain PyTorch.

For g of shape [N, ...], n_i = ||g_i||_2 over all non-batch dims:
    penalty = mean_i (n_i - center)^2
At g_i = 0 the derivative of n_i does not exist; we take the subgradient 0 direction,
so the gradient is finite there (and exactly 2 g_i / N = 0).
"""
import torch


def grad_norm_penalty(grad: torch.Tensor, center: float) -> torch.Tensor:
    g = grad.reshape(grad.shape[0], -1)
    dt = torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else g.dtype
    sumsq = g.to(dt).square().sum(dim=1)
    if center == 0:
        return sumsq.mean()
    # sqrt has an infinite derivative at 0: evaluate it where sumsq > 0 only.
    positive = sumsq > 0
    norm = torch.where(positive, torch.where(positive, sumsq, torch.ones_like(sumsq)).sqrt(),
                       torch.zeros_like(sumsq))
    return (norm - center).square().mean()
