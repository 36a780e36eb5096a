"""fastgan::minibatch_std and fastgan::minibatch_std_backward: custom ops, autograd,
fake kernels and backend registrations. The math is in fastgan.reference.minibatch_std.

Layers: kernels (csrc/cpu/minibatch_std.cpp, csrc/cuda/minibatch_std.cu,
kernels/minibatch_std.py) -> these ops (dispatch + autograd) -> fastgan.functional /
fastgan.layers. The backward is an op of its own with its own autograd, so R1 and
WGAN-GP can differentiate through the layer twice.
"""
from types import SimpleNamespace
from typing import Optional

import torch

from fastgan import backends
from fastgan.ops import _common
from fastgan.reference import minibatch_std as ref

OP = "minibatch_std"


# ---------------------------------------------------------------- backends
def _cpu_check(x=None, *rest):
    reason = _common.cpu_reason(x)
    if reason is None and not hasattr(torch.ops.fastgan_C, "minibatch_std_forward"):
        reason = "this build of fastgan._C has no minibatch_std kernel"
    return reason


def _cuda_check(x=None, *rest):
    return _common.cuda_reason(x)


def _triton_check(x=None, *rest):
    # float64 too: the kernels accumulate in float64 for it (tests compare in float64).
    return _common.triton_reason(x, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16))


def _ext_forward(x, G, F, eps):
    return torch.ops.fastgan_C.minibatch_std_forward(x.contiguous(), G, F, eps)


def _ext_backward(grad, x, G, F, eps):
    return torch.ops.fastgan_C.minibatch_std_backward(grad.contiguous(), x.contiguous(), G, F, eps)


def _triton_impl():
    from fastgan.kernels import minibatch_std as k  # imported lazily: triton is optional
    return k


class _LazyTriton:
    def forward(self, *args):
        return _triton_impl().forward(*args)

    def backward(self, *args):
        return _triton_impl().backward(*args)


_EXT = SimpleNamespace(forward=_ext_forward, backward=_ext_backward)
backends.register(OP, "reference", SimpleNamespace(forward=ref.minibatch_std, backward=ref.minibatch_std_backward),
                  _common.reference_reason)
backends.register(OP, "cpu", _EXT, _cpu_check)
backends.register(OP, "cuda", _EXT, _cuda_check)
backends.register(OP, "triton", _LazyTriton(), _triton_check)


# ---------------------------------------------------------------- ops
@torch.library.custom_op("fastgan::minibatch_std", mutates_args=())
def minibatch_std_op(x: torch.Tensor, group_size: int, num_channels: int, eps: float) -> torch.Tensor:
    return backends.choose(OP, x).impl.forward(x, group_size, num_channels, eps)


@minibatch_std_op.register_fake
def _(x, group_size, num_channels, eps):
    N, C, H, W = x.shape
    return x.new_empty((N, C + num_channels, H, W))


@torch.library.custom_op("fastgan::minibatch_std_backward", mutates_args=())
def minibatch_std_backward_op(grad: torch.Tensor, x: torch.Tensor, group_size: int,
                              num_channels: int, eps: float) -> torch.Tensor:
    return backends.choose(OP, x).impl.backward(grad, x, group_size, num_channels, eps)


@minibatch_std_backward_op.register_fake
def _(grad, x, group_size, num_channels, eps):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    x, G, F, eps = inputs
    ctx.save_for_backward(x)
    ctx.args = (G, F, eps)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return minibatch_std_backward_op(grad, x, *ctx.args), None, None, None


minibatch_std_op.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    grad, x, G, F, eps = inputs
    ctx.save_for_backward(grad, x)
    ctx.args = (G, F, eps)


def _backward_bwd(ctx, ggx):
    """Double backward: the vector-Jacobian product of the closed-form backward,
    taken through the reference formula (differentiable plain PyTorch ops)."""
    grad, x = ctx.saved_tensors
    with torch.enable_grad():
        grad_ = grad.detach().requires_grad_(ctx.needs_input_grad[0])
        x_ = x.detach().requires_grad_(ctx.needs_input_grad[1])
        gx = ref.minibatch_std_backward(grad_, x_, *ctx.args)
        wrt = [t for t in (grad_, x_) if t.requires_grad]
        got = iter(torch.autograd.grad(gx, wrt, ggx, create_graph=torch.is_grad_enabled()))
    return (next(got) if ctx.needs_input_grad[0] else None,
            next(got) if ctx.needs_input_grad[1] else None, None, None, None)


minibatch_std_backward_op.register_autograd(_backward_bwd, setup_context=_setup_bwd)


class _EagerMinibatchStd(torch.autograd.Function):
    """fastgan::minibatch_std without the custom-op dispatch, for plain eager mode (see
    _common.eager_fast_path): the same backend kernels; the backward calls the kernel
    directly unless a graph is being built (create_graph=True, R1 / WGAN-GP through the
    critic), where it calls the differentiable backward op."""

    @staticmethod
    def forward(ctx, x, G, F, eps):
        ctx.save_for_backward(x)
        ctx.args = (G, F, eps)
        return backends.choose(OP, x).impl.forward(x, G, F, eps)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return minibatch_std_backward_op(grad, x, *ctx.args), None, None, None
        return backends.choose(OP, x).impl.backward(grad, x, *ctx.args), None, None, None


# ---------------------------------------------------------------- public function
def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def check_minibatch_std_args(group_size, num_channels, eps):
    """The arguments that do not depend on the input."""
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0 (it sits inside sqrt(var + eps)), got {eps!r}")


def minibatch_stddev(x: torch.Tensor, group_size: Optional[int] = 4, num_channels: int = 1,
                     eps: float = 1e-8) -> torch.Tensor:
    """Append the per-group mean standard deviation as `num_channels` extra channels.

    x: [N, C, H, W] floating tensor. G = N if group_size is None else min(group_size, N);
    N must be divisible by G and C by num_channels. Returns [N, C + num_channels, H, W].
    See fastgan.reference.minibatch_std for the exact math.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"minibatch_stddev expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"minibatch_stddev expects a 4-D input [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"minibatch_stddev needs a floating-point input (float32, float64, float16 or "
            f"bfloat16), got {x.dtype}; convert with x.float()")
    N, C = x.shape[0], x.shape[1]
    check_minibatch_std_args(group_size, num_channels, eps)
    if N < 1:
        raise ValueError("minibatch_stddev needs a batch of at least one sample, got N=0")
    G = N if group_size is None else min(group_size, N)
    if N % G != 0:
        raise ValueError(
            f"minibatch_stddev: batch size N={N} is not divisible by the group size G={G} "
            f"(group_size={group_size}); group sizes that divide N={N}: {_divisors(N)}, "
            f"or group_size=None to use the whole batch")
    if C % num_channels != 0:
        raise ValueError(
            f"minibatch_stddev: channels C={C} are not divisible by num_channels F={num_channels}; "
            f"values of num_channels that divide C={C}: {_divisors(C)}")
    if _common.eager_fast_path(x):
        return _EagerMinibatchStd.apply(x, G, num_channels, float(eps))
    return minibatch_std_op(x, G, num_channels, float(eps))
