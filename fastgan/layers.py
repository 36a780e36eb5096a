"""Drop-in nn.Modules (DESIGN.md section 1)."""
from typing import Optional

import torch
from torch import nn

from fastgan import functional as FG
from fastgan.ops.conv_transpose import check_epilogue
from fastgan.ops.minibatch_std import check_minibatch_std_args


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with a fused epilogue:
    y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp).

    Subclasses nn.ConvTranspose2d, so the constructor, parameters, initialisation,
    state_dict keys and argument errors are exactly PyTorch's.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, activation: Optional[str] = None,
                 negative_slope: float = 0.2, gain: float = 1.0, clamp: Optional[float] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode, device, dtype)
        check_epilogue(activation, negative_slope, gain, clamp)  # fail at construction, not first use
        self.activation = activation
        self.negative_slope = negative_slope
        self.gain = gain
        self.clamp = clamp

    def forward(self, input: torch.Tensor, output_size=None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, num_spatial_dims, self.dilation)
        return FG.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                   output_padding, self.groups, self.dilation,
                                   activation=self.activation, negative_slope=self.negative_slope,
                                   gain=self.gain, clamp=self.clamp)

    def extra_repr(self):
        s = super().extra_repr()
        if self.activation not in (None, "linear"):
            s += f", activation={self.activation!r}"
            if self.activation == "lrelu":
                s += f", negative_slope={self.negative_slope}"
        if self.gain != 1:
            s += f", gain={self.gain}"
        if self.clamp is not None:
            s += f", clamp={self.clamp}"
        return s


class MinibatchStdDev(nn.Module):
    """Appends the per-group mean standard deviation as num_channels extra channels
    (ProGAN / StyleGAN2). See fastgan.functional.minibatch_stddev."""

    def __init__(self, group_size: Optional[int] = 4, num_channels: int = 1, eps: float = 1e-8):
        super().__init__()
        check_minibatch_std_args(group_size, num_channels, eps)  # fail at construction, not first use
        self.group_size = group_size
        self.num_channels = num_channels
        self.eps = eps

    def forward(self, x):
        return FG.minibatch_stddev(x, self.group_size, self.num_channels, self.eps)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}, eps={self.eps}"


class _LazyRegularizer(nn.Module):
    """Lazy regularisation (StyleGAN2, Karras et al. 2020, appendix B): apply a penalty
    only every `interval` steps and multiply it by `interval`, so that on average it
    weighs the same as when applied every step, at a fraction of the cost:

        for step in range(steps):
            loss = adversarial_loss
            if penalty.due(step):          # step % interval == 0
                loss = loss + penalty(critic, real)   # already multiplied by interval
            loss.backward(); opt.step()

    StyleGAN2 also rescales the optimiser (lr * c, betas ** c with c = interval /
    (interval + 1)); that is the caller's choice and not done here. interval=1 (the
    default) applies the penalty every step, unscaled.
    """

    def __init__(self, interval: int = 1):
        super().__init__()
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive int (apply every `interval` steps), got {interval!r}")
        self.interval = interval

    def due(self, step: int) -> bool:
        """Whether the penalty applies at training step `step` (step % interval == 0)."""
        return step % self.interval == 0

    def _lazy(self, penalty):
        return penalty * self.interval if self.interval > 1 else penalty


class GradientPenalty(_LazyRegularizer):
    """WGAN-GP as a module: weight * mean_i (||grad_i|| - center)^2 at x_hat = alpha * real
    + (1 - alpha) * fake, alpha ~ U[0, 1) per sample (fastgan.functional.gradient_penalty),
    times `interval` when interval > 1 (lazy regularisation, see due())."""

    def __init__(self, weight: float = 10.0, center: float = 1.0, *, interval: int = 1):
        super().__init__(interval)
        self.weight = weight
        self.center = center

    def forward(self, critic, real, fake, alpha=None, scaler=None):
        return self._lazy(FG.gradient_penalty(critic, real, fake, weight=self.weight, center=self.center,
                                              alpha=alpha, scaler=scaler))

    def extra_repr(self):
        return f"weight={self.weight}, center={self.center}, interval={self.interval}"


class R1Penalty(_LazyRegularizer):
    """R1 as a module: gamma/2 * mean_i ||d critic(real)/d real_i||^2
    (fastgan.functional.r1_penalty), times `interval` when interval > 1 (see due())."""

    def __init__(self, gamma: float = 10.0, *, interval: int = 1):
        super().__init__(interval)
        self.gamma = gamma

    def forward(self, critic, real, scaler=None):
        return self._lazy(FG.r1_penalty(critic, real, gamma=self.gamma, scaler=scaler))

    def extra_repr(self):
        return f"gamma={self.gamma}, interval={self.interval}"


class R2Penalty(_LazyRegularizer):
    """R2 as a module: gamma/2 * mean_i ||d critic(fake)/d fake_i||^2
    (fastgan.functional.r2_penalty), times `interval` when interval > 1 (see due())."""

    def __init__(self, gamma: float = 10.0, *, interval: int = 1):
        super().__init__(interval)
        self.gamma = gamma

    def forward(self, critic, fake, scaler=None):
        return self._lazy(FG.r2_penalty(critic, fake, gamma=self.gamma, scaler=scaler))

    def extra_repr(self):
        return f"gamma={self.gamma}, interval={self.interval}"
