"""Minibatch standard deviation (ProGAN / StyleGAN2), in plain PyTorch.

For x of shape [N, C, H, W], G members per group, F = num_channels, c = C // F and
M = N // G groups, sample i belongs to group i mod M (x viewed as [G, M, F, c, H, W]):

    mu[m,f,k,h,w]  = 1/G  sum_g x[g,m,f,k,h,w]
    var            = 1/G  sum_g (x - mu)^2            (biased)
    s[m,f]         = 1/(cHW) sum_{k,h,w} sqrt(var + eps)
    y              = cat([x, s broadcast to [N, F, H, W]], dim=1)

Statistics are computed in float32 for float16/bfloat16 input; y keeps x's dtype.
"""
import torch


def _stat_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def minibatch_std(x: torch.Tensor, group_size: int, num_channels: int, eps: float) -> torch.Tensor:
    """y = cat([x, per-group mean std]) with G = group_size (already resolved, divides N)."""
    N, C, H, W = x.shape
    G, F = group_size, num_channels
    xs = x.to(_stat_dtype(x.dtype)).reshape(G, N // G, F, C // F, H, W)
    centered = xs - xs.mean(dim=0)
    std = (centered.square().mean(dim=0) + eps).sqrt()         # [M, F, c, H, W]
    stat = std.mean(dim=(2, 3, 4))                             # [M, F]
    stat = stat.reshape(1, N // G, F, 1, 1).expand(G, N // G, F, H, W).reshape(N, F, H, W)
    return torch.cat([x, stat.to(x.dtype)], dim=1)


def minibatch_std_backward(grad: torch.Tensor, x: torch.Tensor, group_size: int,
                           num_channels: int, eps: float) -> torch.Tensor:
    """dL/dx given grad = dL/dy, in closed form (differentiable again):

        S[m,f] = sum_{g,h,w} grad[g,m,C+f,h,w]
        dL/dx  = grad[:, :C] + S[m,f] / (cHW) * (x - mu) / (G * sqrt(var + eps))

    (the derivative through mu vanishes because sum_g (x - mu) = 0).
    """
    N, C, H, W = x.shape
    G, F = group_size, num_channels
    M, c = N // G, C // F
    dt = _stat_dtype(x.dtype)
    xs = x.to(dt).reshape(G, M, F, c, H, W)
    centered = xs - xs.mean(dim=0)
    std = (centered.square().mean(dim=0) + eps).sqrt()
    s = grad[:, C:].to(dt).reshape(G, M, F, H, W).sum(dim=(0, 3, 4))   # [M, F]
    coef = (s / (c * H * W * G)).reshape(1, M, F, 1, 1, 1)
    gx = grad[:, :C].to(dt) + (coef * centered / std).reshape(N, C, H, W)
    return gx.to(x.dtype)
