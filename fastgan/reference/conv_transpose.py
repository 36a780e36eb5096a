"""Transposed convolution with fused epilogue, in plain PyTorch (the truth in tests).

Forward:

    pre = conv_transpose2d(x, w) + b                    (PyTorch's definition)
    z   = act(pre) * gain
    y   = clamp(z, -clamp, clamp)                       (clamp=None: y = z)

act in None/"linear", "relu", "lrelu" (negative_slope), "tanh", "sigmoid". With
activation=None, gain=1, clamp=None this is F.conv_transpose2d.

Backward (what the kernels implement): from one saved tensor t,

    grad_pre = grad_y * act'(pre) * gain * [|z| <= clamp]
    grad_x   = conv2d(grad_pre, w, stride, padding, dilation, groups)   (the adjoint)
    grad_w   = weight gradient of that convolution, grad_b = grad_pre.sum((0, 2, 3))

where act'(pre) is recovered from t without the pre-activation when that is exact
(SAVE_OUTPUT: t = y, no clamp; SAVE_PRECLAMP: t = z, clamp set), with g = gain != 0:

    linear  1
    relu    [t * sign(g) > 0]
    lrelu   [t * sign(g) > 0] ? 1 : negative_slope       (negative_slope >= 0)
    tanh    1 - (t / g)^2
    sigmoid s (1 - s),  s = t / g

(and grad_pre = 0 when g = 0). lrelu with a negative slope is not invertible from t,
so then the pre-activation itself is saved (SAVE_PRE). The clamp mask [|z| <= clamp]
matches torch.clamp's gradient (which passes where -c <= z <= c).
"""
from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "linear", "relu", "lrelu", "tanh", "sigmoid")
# Activation codes shared with the C++/CUDA kernels (csrc/include/conv_transpose.h).
ACT_CODES = {None: 0, "linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}

# What the forward saves for the backward (see the module docstring).
SAVE_OUTPUT, SAVE_PRECLAMP, SAVE_PRE = 0, 1, 2


def save_mode(activation: Optional[str], negative_slope: float, gain: float, clamp: Optional[float]) -> int:
    if activation == "lrelu" and negative_slope < 0:
        return SAVE_PRE
    return SAVE_OUTPUT if clamp is None else SAVE_PRECLAMP


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
    """y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp)."""
    y = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)
    return activate(y, activation, negative_slope, gain, clamp)


def act_grad_from_saved(t, mode: int, activation: Optional[str], negative_slope: float, gain: float,
                        clamp: Optional[float]):
    """d y / d pre as a tensor (or a Python number), from the saved tensor t.

    Written with differentiable ops on t so it can be differentiated again."""
    if mode == SAVE_PRE:
        # t is the pre-activation: the epilogue's derivative directly (explicit formulas:
        # this also runs inside custom-op kernels, where autograd does not record).
        if activation in (None, "linear"):
            d = torch.ones_like(t)
        elif activation == "relu":
            d = (t > 0).to(t.dtype)
        elif activation == "lrelu":
            d = torch.where(t > 0, torch.ones_like(t), torch.full_like(t, negative_slope))
        elif activation == "tanh":
            th = torch.tanh(t)
            d = 1 - th * th
        elif activation == "sigmoid":
            sg = torch.sigmoid(t)
            d = sg * (1 - sg)
        else:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        d = d * gain
        if clamp is not None:
            z = activate(t, activation, negative_slope, gain, None)
            d = d * ((z >= -clamp) & (z <= clamp)).to(t.dtype)
        return d
    if gain == 0:
        return torch.zeros_like(t)
    if activation in (None, "linear"):
        d = torch.full_like(t, gain)
    elif activation == "relu":
        d = ((t * gain) > 0).to(t.dtype) * gain
    elif activation == "lrelu":
        pos = (t * gain) > 0
        d = torch.where(pos, torch.ones_like(t), torch.full_like(t, negative_slope)) * gain
    elif activation == "tanh":
        s = t / gain
        d = (1 - s * s) * gain
    elif activation == "sigmoid":
        s = t / gain
        d = s * (1 - s) * gain
    else:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if mode == SAVE_PRECLAMP:
        d = d * (t.abs() <= clamp).to(t.dtype)
    return d


def conv_transpose2d_backward(grad_y, x, weight, saved, mode: int, stride, padding, output_padding,
                              groups, dilation, activation, negative_slope, gain, clamp, has_bias: bool,
                              output_mask):
    """(grad_x, grad_w, grad_b) from grad_y and the saved tensor; entries not asked for in
    output_mask (and grad_b without a bias) are empty tensors."""
    grad_pre = grad_y * act_grad_from_saved(saved, mode, activation, negative_slope, gain, clamp)
    grad_pre = grad_pre.to(grad_y.dtype)
    mask = [bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]) and has_bias]
    gx = gw = gb = None
    if mask[0] or mask[1]:
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad_pre, x, weight, None, list(stride), list(padding), list(dilation), True,
            list(output_padding), groups, [mask[0], mask[1], False])
    if mask[2]:
        gb = grad_pre.sum((0, 2, 3))
    empty = grad_y.new_empty(0)
    return (gx if gx is not None else empty, gw if gw is not None else empty,
            gb if gb is not None else empty)
