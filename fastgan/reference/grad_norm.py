"""The gradient-norm penalty reduction, in plain PyTorch (the truth in tests).

For g of shape [N, ...] (N samples), per sample i over all non-batch dims:

    s_i     = sum_j g_ij^2                   (sum of squares, float32 for half/bfloat16)
    n_i     = sqrt(s_i)
    penalty = 1/N sum_i (n_i - c)^2          (c = center; c = 0 gives 1/N sum_i s_i)

Backward, for an upstream gradient go (a scalar):

    d penalty / d g_i = go * 2/N * (n_i - c) / n_i * g_i = go * 2/N * (1 - c / n_i) * g_i

n_i has no derivative at g_i = 0; there we take the subgradient whose direction is 0,
i.e. d/dg_i = 0 (for c = 0 the formula gives 2/N * g_i = 0 anyway). So the per-sample
coefficient is

    coef_i = go * 2/N * (1 - c / n_i)   if s_i > 0
           = go * 2/N                   if s_i = 0   (multiplies g_i = 0: any finite value)

and d/dg_i = coef_i * g_i: finite everywhere, never NaN.

Every function here is built from differentiable torch ops with the zero case masked
by double `where` (so no 0 * inf appears in any derivative either): the custom ops use
`grad_norm_penalty_backward` to differentiate their own backward (WGAN-GP's double
backward goes through it).
"""
import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation (and result) dtype: float32 for half/bfloat16, else dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sum_of_squares(grad: torch.Tensor) -> torch.Tensor:
    """s_i = sum_j g_ij^2 per sample, shape [N], in acc_dtype(grad.dtype)."""
    g = grad.reshape(grad.shape[0], -1).to(acc_dtype(grad.dtype))
    return g.square().sum(dim=1)


def _safe_norm(sumsq: torch.Tensor):
    """(positive mask, n_i where positive else 1): sqrt never sees 0, so neither its
    value nor its derivative (inf at 0) leaks into a masked-out branch."""
    positive = sumsq > 0
    return positive, torch.where(positive, sumsq, torch.ones_like(sumsq)).sqrt()


def penalty_from_sumsq(sumsq: torch.Tensor, center: float) -> torch.Tensor:
    """1/N sum_i (sqrt(s_i) - c)^2 from the per-sample sums of squares s_i."""
    if center == 0:
        return sumsq.mean()
    positive, norm = _safe_norm(sumsq)
    norm = torch.where(positive, norm, torch.zeros_like(norm))
    return (norm - center).square().mean()


def grad_norm_penalty(grad: torch.Tensor, center: float) -> torch.Tensor:
    """penalty = 1/N sum_i (||g_i||_2 - center)^2, a 0-dim tensor in acc_dtype(grad.dtype)."""
    return penalty_from_sumsq(sum_of_squares(grad), center)


def backward_coef(grad_out: torch.Tensor, sumsq: torch.Tensor, center: float) -> torch.Tensor:
    """coef_i = go * 2/N * (1 - c / n_i) (and go * 2/N where s_i = 0), shape [N]."""
    n = sumsq.shape[0]
    scale = grad_out.to(sumsq.dtype) * (2.0 / n)
    if center == 0:
        return scale.expand(n)
    positive, norm = _safe_norm(sumsq)
    return scale * torch.where(positive, 1 - center / norm, torch.ones_like(norm))


def grad_norm_penalty_backward(grad_out: torch.Tensor, grad: torch.Tensor, center: float) -> torch.Tensor:
    """d penalty / d g = coef_i * g_i (see the module docstring), in grad's dtype.

    Differentiable in both grad_out and grad (the norms are recomputed from grad here,
    so the derivative through n_i is included): the custom ops' double backward."""
    coef = backward_coef(grad_out, sum_of_squares(grad), center)
    g = grad.to(coef.dtype)
    shape = (grad.shape[0],) + (1,) * (grad.dim() - 1)
    return (coef.reshape(shape) * g).to(grad.dtype)
