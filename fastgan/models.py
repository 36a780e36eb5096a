"""DCGAN-style WGAN-GP models for the main job (DESIGN.md section 4).

Generator: z [N, nz] (or [N, nz, 1, 1]) -> image [N, channels, size, size] in (-1, 1).

    z -> ConvT k4 s1 p0 + act -> 4x4 -> (ConvT k4 s2 p1 + act) * (log2(size) - 3)
      -> ConvT k4 s2 p1 + tanh -> size x size

Every layer is a fastgan.layers.ConvTranspose2d whose bias and activation are fused into
the convolution's epilogue. There is no BatchNorm between a convolution and its
activation: it would split the fused epilogue. Instead (pixel_norm=True, the default) each
hidden feature vector is normalised AFTER the fused activation, ProGAN style:
x / sqrt(mean_c x^2 + 1e-8), without parameters. It keeps the signal of the plain ReLU
stack from shrinking layer by layer; on the digits it turned grey stripes after 400 steps
into recognisable digits (see fastgan.train).

Critic: image -> (Conv2d k4 s2 p1 + LeakyReLU(0.2)) * (log2(size) - 2) -> 4x4
    -> MinibatchStdDev(group_size=4) -> Conv2d k4 (valid) -> one score per sample [N].
No normalisation in the critic (WGAN-GP penalises per-sample gradients).

Channel widths: at resolution r the generator has min(g_width * size / (2 r), max_width)
channels and the critic min(d_width * size / (2 r), max_width), so width doubles each time
the resolution halves. Any size that is a power of two >= 16 works.

`eager=True` builds the same architecture from torch.nn layers only (nn.ConvTranspose2d
followed by a separate activation, and a plain-torch minibatch standard deviation), with
identical parameter names and shapes, so a state_dict moves between the two. The
end-to-end benchmark compares them.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fastgan import layers as L

_ACTS = {
    None: lambda x, slope: x,
    "linear": lambda x, slope: x,
    "relu": lambda x, slope: torch.relu(x),
    "lrelu": lambda x, slope: F.leaky_relu(x, slope),
    "tanh": lambda x, slope: torch.tanh(x),
    "sigmoid": lambda x, slope: torch.sigmoid(x),
}


def _check_size(size):
    if not isinstance(size, int) or size < 16 or size & (size - 1):
        raise ValueError(f"image size must be a power of two >= 16 (e.g. 32 or 64), got {size!r}")
    return int(math.log2(size))


class EagerConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d followed by a separate activation: what fastgan's fused
    ConvTranspose2d replaces. Same parameters and state_dict keys as nn.ConvTranspose2d."""

    def __init__(self, *args, activation: Optional[str] = None, negative_slope: float = 0.2, **kwargs):
        super().__init__(*args, **kwargs)
        if activation not in _ACTS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {tuple(_ACTS)}")
        self.activation = activation
        self.negative_slope = negative_slope

    def forward(self, input, output_size=None):
        return _ACTS[self.activation](super().forward(input, output_size), self.negative_slope)


def eager_minibatch_stddev(x: torch.Tensor, group_size: Optional[int] = 4, num_channels: int = 1,
                           eps: float = 1e-8) -> torch.Tensor:
    """Minibatch standard deviation in plain PyTorch (StyleGAN2's formulation):
    strided groups of G samples, biased variance over the group, sqrt(var + eps),
    averaged over (C/F, H, W), appended as F channels."""
    N, C, H, W = x.shape
    G = N if group_size is None else min(group_size, N)
    if N % G or C % num_channels:
        raise ValueError(f"minibatch std needs N={N} divisible by G={G} and C={C} by F={num_channels}")
    y = x.reshape(G, N // G, num_channels, C // num_channels, H, W)
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + eps).sqrt()              # [N/G, F, c, H, W]
    y = y.mean(dim=(2, 3, 4)).reshape(N // G, num_channels, 1, 1)
    y = y.repeat(G, 1, H, W)                               # sample i gets group i mod N/G
    return torch.cat([x, y], dim=1)


class EagerMinibatchStdDev(nn.Module):
    """Plain-torch twin of fastgan.layers.MinibatchStdDev."""

    def __init__(self, group_size: Optional[int] = 4, num_channels: int = 1, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.num_channels, self.eps = group_size, num_channels, eps

    def forward(self, x):
        return eager_minibatch_stddev(x, self.group_size, self.num_channels, self.eps)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean over channels of x^2 + eps), per sample and position (ProGAN)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class Generator(nn.Module):
    """DCGAN-style generator of fused transposed convolutions (see the module docstring).

    nz: latent size; size: output resolution (power of two >= 16); channels: image
    channels; width: channels at size/2 (doubling per halving of resolution, capped at
    max_width); activation: "relu" or "lrelu" for hidden layers (fused); pixel_norm:
    ProGAN pixel normalisation after each hidden activation; eager: plain torch.nn twin.
    """

    def __init__(self, nz: int = 64, size: int = 32, channels: int = 1, width: int = 32,
                 max_width: int = 256, activation: str = "relu", pixel_norm: bool = True,
                 eager: bool = False):
        super().__init__()
        log2 = _check_size(size)
        if activation not in ("relu", "lrelu"):
            raise ValueError(f"generator activation must be 'relu' or 'lrelu', got {activation!r}")
        self.nz, self.size, self.channels = nz, size, channels
        self.pixel_norm = pixel_norm
        self.eager = eager
        conv = EagerConvTranspose2d if eager else L.ConvTranspose2d

        def ch(res):
            return min(width * size // (2 * res), max_width)

        blocks = [conv(nz, ch(4), 4, 1, 0, activation=activation)]
        res = 4
        for _ in range(log2 - 3):
            blocks.append(conv(ch(res), ch(2 * res), 4, 2, 1, activation=activation))
            res *= 2
        blocks.append(conv(ch(res), channels, 4, 2, 1, activation="tanh"))
        self.layers = nn.ModuleList(blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], self.nz, 1, 1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.pixel_norm and i < last:
                x = pixel_norm(x)
        return x

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None,
                      device=None) -> torch.Tensor:
        """Standard normal latents [n, nz]."""
        device = device if device is not None else self.layers[0].weight.device
        z = torch.randn(n, self.nz, generator=generator,
                        device=generator.device if generator is not None else device)
        return z.to(device)


class Critic(nn.Module):
    """WGAN critic ending in a minibatch standard deviation layer (see the module
    docstring). Returns one unbounded score per sample, shape [N].

    N must be divisible by min(group_size, N) (the minibatch std groups)."""

    def __init__(self, size: int = 32, channels: int = 1, width: int = 32, max_width: int = 256,
                 group_size: Optional[int] = 4, negative_slope: float = 0.2, eager: bool = False):
        super().__init__()
        log2 = _check_size(size)
        self.size, self.channels, self.negative_slope = size, channels, negative_slope
        self.eager = eager

        def ch(res):
            return min(width * size // (2 * res), max_width)

        convs, c_in, res = [], channels, size
        for _ in range(log2 - 2):
            res //= 2
            convs.append(nn.Conv2d(c_in, ch(res), 4, 2, 1))
            c_in = ch(res)
        self.layers = nn.ModuleList(convs)
        self.mbstd = (EagerMinibatchStdDev if eager else L.MinibatchStdDev)(group_size)
        self.final = nn.Conv2d(c_in + 1, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.layers:
            x = F.leaky_relu(conv(x), self.negative_slope)
        return self.final(self.mbstd(x)).reshape(x.shape[0])


def eager_twin(model: nn.Module) -> nn.Module:
    """The plain torch.nn twin of a Generator or Critic, holding a copy of its weights."""
    if isinstance(model, Generator):
        first = model.layers[0]
        twin = Generator(nz=model.nz, size=model.size, channels=model.channels, width=1,
                         activation=first.activation, pixel_norm=model.pixel_norm, eager=True)
        # Widths are read off the model itself so any width/max_width combination copies.
        twin.layers = nn.ModuleList(
            EagerConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                 activation=m.activation, negative_slope=m.negative_slope)
            for m in model.layers)
    elif isinstance(model, Critic):
        twin = Critic(size=model.size, channels=model.channels, width=1,
                      group_size=model.mbstd.group_size, negative_slope=model.negative_slope,
                      eager=True)
        twin.layers = nn.ModuleList(nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                              m.padding) for m in model.layers)
        twin.final = nn.Conv2d(model.final.in_channels, 1, model.final.kernel_size)
    else:
        raise TypeError(f"eager_twin takes a fastgan.models Generator or Critic, got {type(model).__name__}")
    p = next(model.parameters())
    twin.to(device=p.device, dtype=p.dtype)
    twin.load_state_dict(model.state_dict())
    return twin
