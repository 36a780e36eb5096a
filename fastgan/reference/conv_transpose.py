"""Transposed convolution with fused epilogue, in plain PyTorch:

    y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp)

act in None/"linear", "relu", "lrelu" (negative_slope), "tanh", "sigmoid"; clamp=None
means no clamp. With activation=None, gain=1, clamp=None this is F.conv_transpose2d.
"""
from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "linear", "relu", "lrelu", "tanh", "sigmoid")


def activate(y, activation: Optional[str], negative_slope: float, gain: float, clamp: Optional[float]):
    """The epilogue after the bias: act, then gain, then clamp."""
    if activation in (None, "linear"):
        pass
    elif activation == "relu":
        y = torch.relu(y)
    elif activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    elif activation == "tanh":
        y = torch.tanh(y)
    elif activation == "sigmoid":
        y = torch.sigmoid(y)
    else:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, activation=None, negative_slope=0.2, gain=1.0, clamp=None):
    y = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    return activate(y, activation, negative_slope, gain, clamp)
