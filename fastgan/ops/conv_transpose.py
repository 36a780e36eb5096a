"""fastgan::conv_transpose2d and fastgan::conv_transpose2d_backward: custom ops, autograd,
fake kernels and backend registrations. The math is in fastgan.reference.conv_transpose.

    y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp)

Backends (fastgan.backends):
  reference  F.conv_transpose2d + the epilogue; backward via aten.convolution_backward
  cpu        torch.ops.fastgan_C.conv_transpose_forward / _backward (csrc/cpu/conv_transpose.cpp)
  cuda       torch.ops.fastgan_C.conv_transpose_forward (csrc/cuda/conv_transpose.cu);
             backward through the reference formula (cuDNN convolutions)
  triton     fastgan.kernels.conv_transpose.forward; backward through the reference formula
The kernels cover groups=1, dilation=1 (any stride, padding, output_padding, kernel
size); other configurations run on the reference path, with one warning under auto.

What the backward keeps: the output y (or, with a clamp, the unclamped z = act(pre)*gain,
or for lrelu with a negative slope the pre-activation) -- one tensor of the output's
size, never an extra copy; see fastgan.reference.conv_transpose for the derivative
recovered from it. The backward is an op of its own whose autograd recomputes the
reference graph, so the layer can be differentiated twice (path-length regularisation,
R1 through a generator).
"""
import math
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from fastgan import backends
from fastgan.ops import _common
from fastgan.reference import conv_transpose as ref

OP = "conv_transpose"
_FAST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- backends
def _kernel_config_reason(x, w, stride, padding, output_padding, groups, dilation):
    """Shared limits of the fast kernels (the reference covers everything else)."""
    if groups != 1:
        return f"the fast kernels cover groups=1 only (got groups={groups})"
    if dilation is not None and tuple(dilation) != (1, 1):
        return f"the fast kernels cover dilation=1 only (got dilation={tuple(dilation)})"
    if x is not None and w is not None and x.dtype != w.dtype:
        return f"input and weight dtypes differ ({x.dtype} vs {w.dtype})"
    return None


def _cpu_check(x=None, w=None, stride=None, padding=None, output_padding=None, groups=1, dilation=None):
    reason = _common.cpu_reason(x, _FAST_DTYPES)
    if reason is None and not hasattr(torch.ops.fastgan_C, "conv_transpose_forward"):
        reason = "this build of fastgan._C has no conv_transpose kernel (rebuild the extension)"
    if reason is None:
        reason = _kernel_config_reason(x, w, stride, padding, output_padding, groups, dilation)
    return reason


def _has_cuda_impl():
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("fastgan_C::conv_transpose_forward", "CUDA")
    except Exception:
        return False


def _cuda_check(x=None, w=None, stride=None, padding=None, output_padding=None, groups=1, dilation=None):
    reason = _common.cuda_reason(x, _FAST_DTYPES)
    if reason is None and not _has_cuda_impl():
        reason = "this build of fastgan._C has no CUDA conv_transpose kernel (rebuild with FASTGAN_CUDA=1)"
    if reason is None:
        reason = _kernel_config_reason(x, w, stride, padding, output_padding, groups, dilation)
    return reason


def _triton_module():
    from fastgan.kernels import conv_transpose as k  # imported lazily: triton is optional
    return k


def _triton_check(x=None, w=None, stride=None, padding=None, output_padding=None, groups=1, dilation=None):
    reason = _common.triton_reason(x)
    if reason is not None:
        return reason
    try:
        k = _triton_module()
    except ImportError as exc:
        return f"fastgan.kernels.conv_transpose did not import ({exc})"
    if not hasattr(k, "forward") or not hasattr(k, "supports"):
        return "fastgan.kernels.conv_transpose lacks forward/supports (a mismatched install?)"
    reason = _kernel_config_reason(x, w, stride, padding, output_padding, groups, dilation)
    if reason is None and x is not None:
        reason = k.supports(x, w, tuple(stride), tuple(padding), tuple(output_padding), groups,
                            tuple(dilation))
    return reason


def _ext_forward(x, w, b, stride, padding, output_padding, groups, dilation, activation, negative_slope,
                 gain, clamp):
    return torch.ops.fastgan_C.conv_transpose_forward(
        x.contiguous(), w.contiguous(), None if b is None else b.contiguous(), list(stride), list(padding),
        list(output_padding), ref.ACT_CODES[activation], float(negative_slope), float(gain),
        -1.0 if clamp is None else float(clamp))


def _cpu_backward(grad_y, x, w, saved, mode, stride, padding, output_padding, groups, dilation, activation,
                  negative_slope, gain, clamp, has_bias, output_mask):
    return tuple(torch.ops.fastgan_C.conv_transpose_backward(
        grad_y.contiguous(), x.contiguous(), w.contiguous(), saved.contiguous(), mode, list(stride),
        list(padding), list(output_padding), ref.ACT_CODES[activation], float(negative_slope), float(gain),
        -1.0 if clamp is None else float(clamp), has_bias, list(output_mask)))


def _triton_forward(x, w, b, stride, padding, output_padding, groups, dilation, activation, negative_slope,
                    gain, clamp):
    return _triton_module().forward(x, w, b, tuple(stride), tuple(padding), tuple(output_padding),
                                    activation or "linear", float(negative_slope), float(gain), clamp)


backends.register(OP, "reference", SimpleNamespace(forward=ref.conv_transpose2d,
                                                   backward=ref.conv_transpose2d_backward),
                  _common.reference_reason)
backends.register(OP, "cpu", SimpleNamespace(forward=_ext_forward, backward=_cpu_backward), _cpu_check)
backends.register(OP, "cuda", SimpleNamespace(forward=_ext_forward, backward=ref.conv_transpose2d_backward),
                  _cuda_check)
backends.register(OP, "triton", SimpleNamespace(forward=_triton_forward,
                                                backward=ref.conv_transpose2d_backward), _triton_check)


# ---------------------------------------------------------------- layout helpers
def _wants_channels_last(x, w):
    """Eager conv_transpose2d returns channels_last when the input or the weight is."""
    def cl(t):
        return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return cl(x) or cl(w)


def _out_shape(x, w, stride, padding, output_padding, groups, dilation):
    N, _, H, W = x.shape
    k = w.shape[2:]
    size = [(s_in - 1) * st - 2 * p + d * (kk - 1) + op + 1
            for s_in, st, p, d, kk, op in zip((H, W), stride, padding, dilation, k, output_padding)]
    return (N, w.shape[1] * groups, size[0], size[1])


def _to_layout(t, channels_last):
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


# ---------------------------------------------------------------- ops
@torch.library.custom_op("fastgan::conv_transpose2d", mutates_args=())
def conv_transpose2d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                        dilation: List[int], activation: str, negative_slope: float, gain: float,
                        clamp: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, saved): saved is what the backward needs besides y (empty when y is
    enough; see fastgan.reference.conv_transpose.save_mode)."""
    mode = ref.save_mode(activation, negative_slope, gain, clamp)
    be = backends.choose(OP, x, weight, stride, padding, output_padding, groups, dilation)
    args = (x, weight, bias, stride, padding, output_padding, groups, dilation)
    if mode == ref.SAVE_OUTPUT:
        y = be.impl.forward(*args, activation, negative_slope, gain, None)
        saved = x.new_empty(0)
    elif mode == ref.SAVE_PRECLAMP:
        saved = be.impl.forward(*args, activation, negative_slope, gain, None)
        y = saved.clamp(-clamp, clamp)
    else:
        saved = be.impl.forward(*args, "linear", 0.0, 1.0, None)
        y = ref.activate(saved, activation, negative_slope, gain, clamp)
    cl = _wants_channels_last(x, weight)
    y = _to_layout(y, cl)
    if saved.numel() > 0 or mode != ref.SAVE_OUTPUT:
        saved = _to_layout(saved, cl)
    return y, saved


@conv_transpose2d_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, groups, dilation, activation, negative_slope, gain,
      clamp):
    shape = _out_shape(x, weight, stride, padding, output_padding, groups, dilation)
    fmt = torch.channels_last if _wants_channels_last(x, weight) else torch.contiguous_format
    y = x.new_empty(shape).contiguous(memory_format=fmt)
    if ref.save_mode(activation, negative_slope, gain, clamp) == ref.SAVE_OUTPUT:
        return y, x.new_empty(0)
    return y, x.new_empty(shape).contiguous(memory_format=fmt)


@torch.library.custom_op("fastgan::conv_transpose2d_backward", mutates_args=())
def conv_transpose2d_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                 bias: Optional[torch.Tensor], saved: torch.Tensor, mode: int,
                                 stride: List[int], padding: List[int], output_padding: List[int],
                                 groups: int, dilation: List[int], activation: str, negative_slope: float,
                                 gain: float, clamp: Optional[float], output_mask: List[bool]
                                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_w, grad_b); an entry not asked for in output_mask (or grad_b without a
    bias) is an empty tensor. `saved` is y (mode 0), z (mode 1) or pre (mode 2)."""
    be = backends.choose(OP, x, weight, stride, padding, output_padding, groups, dilation)
    gx, gw, gb = be.impl.backward(grad_y, x, weight, saved, mode, stride, padding, output_padding, groups,
                                  dilation, activation, negative_slope, gain, clamp, bias is not None,
                                  output_mask)
    # Fresh tensors: a custom op may not return views of its inputs.
    return tuple(t.contiguous() if t.numel() == 0 or t._base is None else t.clone() for t in (gx, gw, gb))


@conv_transpose2d_backward_op.register_fake
def _(grad_y, x, weight, bias, saved, mode, stride, padding, output_padding, groups, dilation, activation,
      negative_slope, gain, clamp, output_mask):
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty(0)
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else x.new_empty(0)
    gb = x.new_empty(bias.shape) if (output_mask[2] and bias is not None) else x.new_empty(0)
    return gx, gw, gb


def _setup(ctx, inputs, output):
    x, weight, bias, stride, padding, output_padding, groups, dilation, activation, slope, gain, clamp = inputs
    y, saved = output
    ctx.mode = ref.save_mode(activation, slope, gain, clamp)
    ctx.args = (stride, padding, output_padding, groups, dilation, activation, slope, gain, clamp)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(saved)
    # A linear epilogue without clamp has the constant derivative `gain`: keep nothing of
    # the output, so later in-place ops on y (nn.ReLU(inplace=True), y.add_) stay legal,
    # as they are after nn.ConvTranspose2d.
    ctx.output_free = activation in (None, "linear") and clamp is None and ctx.mode == ref.SAVE_OUTPUT
    ctx.save_for_backward(x, weight, bias,
                          None if ctx.output_free else (y if ctx.mode == ref.SAVE_OUTPUT else saved))


def _backward(ctx, grad_y, _grad_saved):
    x, weight, bias, t = ctx.saved_tensors
    if ctx.output_free:
        t = grad_y  # any tensor of y's shape: the linear derivative does not read it
    stride, padding, output_padding, groups, dilation, activation, slope, gain, clamp = ctx.args
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
    gx, gw, gb = conv_transpose2d_backward_op(grad_y, x, weight, bias, t, ctx.mode, stride, padding,
                                              output_padding, groups, dilation, activation, slope, gain,
                                              clamp, mask)
    return ((gx if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None),
            None, None, None, None, None, None, None, None, None)


conv_transpose2d_op.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    (grad_y, x, weight, bias, saved, mode, stride, padding, output_padding, groups, dilation, activation,
     slope, gain, clamp, output_mask) = inputs
    ctx.args = (stride, padding, output_padding, groups, dilation, activation, slope, gain, clamp)
    ctx.output_mask = list(output_mask)
    ctx.save_for_backward(grad_y, x, weight, bias)


def _backward_bwd(ctx, ggx, ggw, ggb):
    """Double backward: the vector-Jacobian product of the first-order gradients, taken
    through the reference graph recomputed from x, w, b (plain differentiable PyTorch ops),
    so it is exactly PyTorch's second derivative."""
    grad_y, x, weight, bias = ctx.saved_tensors
    stride, padding, output_padding, groups, dilation, activation, slope, gain, clamp = ctx.args
    with torch.enable_grad():
        gy_ = grad_y.detach().requires_grad_(True)
        x_ = x.detach().requires_grad_(True)
        w_ = weight.detach().requires_grad_(True)
        b_ = None if bias is None else bias.detach().requires_grad_(True)
        y_ = ref.conv_transpose2d(x_, w_, b_, stride, padding, output_padding, groups, dilation, activation,
                                  slope, gain, clamp)
        leaves = [x_, w_] + ([b_] if b_ is not None else [])
        first = torch.autograd.grad(y_, leaves, gy_, create_graph=True, allow_unused=True)
        outs, cotangents = [], []
        for i, (g, gg) in enumerate(zip(first, (ggx, ggw, ggb))):
            if i < 3 and ctx.output_mask[i] and g is not None and gg is not None and gg.numel() > 0:
                outs.append(g)
                cotangents.append(gg)
        wrt = [gy_, x_, w_] + ([b_] if b_ is not None else [])
        if outs:
            got = torch.autograd.grad(outs, wrt, cotangents, create_graph=torch.is_grad_enabled(),
                                      allow_unused=True)
        else:
            got = [None] * len(wrt)
    g_gy, g_x, g_w = got[0], got[1], got[2]
    g_b = got[3] if b_ is not None else None
    need = ctx.needs_input_grad

    def keep(g, i, like):
        if not need[i]:
            return None
        return torch.zeros_like(like) if g is None else g

    return (keep(g_gy, 0, grad_y), keep(g_x, 1, x), keep(g_w, 2, weight),
            (keep(g_b, 3, bias) if bias is not None else None),
            None, None, None, None, None, None, None, None, None, None, None, None)


conv_transpose2d_backward_op.register_autograd(_backward_bwd, setup_context=_setup_bwd)


# ---------------------------------------------------------------- public function
def _check_number(name, value, allow_none=False, nonneg=False):
    if value is None and allow_none:
        return None
    if torch.compiler.is_compiling():
        # dynamic=True traces floats symbolically: math.isfinite would break the graph; the
        # eager call (and the module's constructor) check the same values.
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number{' or None' if allow_none else ''}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (nonneg and value < 0):
        what = "a non-negative finite number" if nonneg else "a finite number"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_epilogue(activation, negative_slope, gain, clamp):
    """Validate the epilogue's arguments; returns (negative_slope, gain, clamp) as floats."""
    if activation not in ref.ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{', '.join(repr(a) for a in ref.ACTIVATIONS)}")
    return (_check_number("negative_slope", negative_slope), _check_number("gain", gain),
            _check_number("clamp", clamp, allow_none=True, nonneg=True))


def _autocast(x, weight, bias):
    """Cast like torch.autocast does for conv_transpose2d (a lower-precision op)."""
    dev = x.device.type
    if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)

        def cast(t):
            # autocast casts eligible floating tensors (float64 is left alone)
            return t.to(dt) if (t is not None and t.is_floating_point() and t.dtype != torch.float64) else t
        x, weight, bias = cast(x), cast(weight), cast(bias)
    return x, weight, bias


def _validate(x, w, b, stride, padding, output_padding, groups, dilation):
    """nn.ConvTranspose2d's argument checks, with PyTorch's messages."""
    if x.dim() not in (3, 4):
        raise RuntimeError("Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input "
                           f"of size: {list(x.shape)}")
    if w.dim() != 4:
        raise RuntimeError(f"conv_transpose2d expects a 4-D weight [C_in, C_out/groups, kH, kW], got weight of "
                           f"size {list(w.shape)}")
    if any(s <= 0 for s in stride):
        raise RuntimeError("non-positive stride is not supported")
    if any(p < 0 for p in padding):
        raise RuntimeError("negative padding is not supported")
    if any(op < 0 for op in output_padding):
        raise RuntimeError("negative output_padding is not supported")
    if any(d <= 0 for d in dilation):
        raise RuntimeError("dilation should be greater than zero, but got dilation_height: "
                           f"{dilation[0]}, dilation_width: {dilation[1]}")
    if not isinstance(groups, int) or groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError(
            "output padding must be smaller than either stride or dilation, but got output_padding_height: "
            f"{output_padding[0]} output_padding_width: {output_padding[1]} stride_height: {stride[0]} "
            f"stride_width: {stride[1]} dilation_height: {dilation[0]} dilation_width: {dilation[1]}")
    if w.shape[0] % groups != 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size [{list(w.shape)}] instead")
    x4 = list(x.shape) if x.dim() == 4 else [1] + list(x.shape)
    if x4[1] != w.shape[0]:
        raise RuntimeError(f"Given transposed=1, weight of size {list(w.shape)}, expected input{x4} to have "
                           f"{w.shape[0]} channels, but got {x4[1]} channels instead")
    if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[1] * groups):
        raise RuntimeError(f"Given transposed=1, weight of size {list(w.shape)}, expected bias to be 1-dimensional "
                           f"with {w.shape[1] * groups} elements, but got bias of size {list(b.shape)} instead")
    size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1
            for n, s, p, d, k, op in zip(x4[2:], stride, padding, dilation, w.shape[2:], output_padding)]
    if size[0] <= 0 or size[1] <= 0:
        raise RuntimeError(f"Given input size per channel: ({x4[2]} x {x4[3]}). Calculated output size per "
                           f"channel: ({size[0]} x {size[1]}). Output size is too small")
    if x.dtype != w.dtype or (b is not None and b.dtype != x.dtype):
        raise RuntimeError(f"conv_transpose2d: input, weight and bias must have the same dtype, got {x.dtype}, "
                           f"{w.dtype}{'' if b is None else ', ' + str(b.dtype)}")
    if not x.is_floating_point():
        raise RuntimeError(f"conv_transpose2d needs floating-point tensors, got {x.dtype}")
    if x.device != w.device or (b is not None and b.device != x.device):
        raise RuntimeError("conv_transpose2d: input, weight and bias must be on the same device, got "
                           f"{x.device}, {w.device}{'' if b is None else ', ' + str(b.device)}")


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     activation: Optional[str] = None, negative_slope: float = 0.2, gain: float = 1.0,
                     clamp: Optional[float] = None) -> torch.Tensor:
    """y = clamp(act(conv_transpose2d(input, weight) + bias) * gain, -clamp, clamp).

    Arguments as torch.nn.functional.conv_transpose2d (input [N, C_in, H, W] or unbatched
    [C_in, H, W], weight [C_in, C_out/groups, kH, kW]); activation in None/"linear", "relu",
    "lrelu" (slope negative_slope), "tanh", "sigmoid"; clamp None (no clamp) or >= 0.
    H_out = (H-1)*stride - 2*padding + dilation*(kH-1) + output_padding + 1 (same for W).
    """
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv_transpose2d expects tensors for input and weight, got "
                        f"{type(input).__name__} and {type(weight).__name__}")
    negative_slope, gain, clamp = check_epilogue(activation, negative_slope, gain, clamp)
    stride, padding, output_padding, dilation = (list(_pair(v)) for v in (stride, padding, output_padding,
                                                                         dilation))
    input, weight, bias = _autocast(input, weight, bias)
    if not torch.compiler.is_compiling():
        _validate(input, weight, bias, stride, padding, output_padding, groups, dilation)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    y, _ = conv_transpose2d_op(x, weight, bias, stride, padding, output_padding, int(groups), dilation,
                               activation or "linear", negative_slope, gain, clamp)
    return y.squeeze(0) if unbatched else y
