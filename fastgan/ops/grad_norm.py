"""fastgan::grad_norm_penalty and fastgan::grad_norm_penalty_backward: custom ops,
autograd, fake kernels and backend registrations. The math is in
fastgan.reference.grad_norm.

    fastgan::grad_norm_penalty(Tensor grad, float center) -> (Tensor penalty, Tensor sumsq)
        penalty = 1/N sum_i (||g_i||_2 - center)^2 (0-dim), sumsq_i = ||g_i||^2 ([N]);
        both float32 for half/bfloat16 grad, else grad's dtype. sumsq is returned (and
        marked non-differentiable) so that the backward need not read g a second time
        to recompute the norms: forward = one read of g, backward = one read + one write.
    fastgan::grad_norm_penalty_backward(Tensor grad_out, Tensor grad, Tensor sumsq,
                                        float center) -> Tensor
        d penalty / d grad = grad_out * 2/N * (1 - center / n_i) * g_i (finite at n_i = 0),
        sumsq must be the forward's. Its own autograd differentiates the reference formula
        (which recomputes the norms from grad, so the path through n_i is included): this
        is what makes gradgradcheck on the penalty pass. In WGAN-GP training only the
        first-order backward runs here; the double backward happens in the critic.

Backends (each a namespace with forward(grad, center) -> (penalty, sumsq) and
backward(grad_out, grad, sumsq, center) -> dgrad): reference (plain PyTorch), cpu / cuda
(torch.ops.fastgan_C.grad_norm_forward / grad_norm_backward), triton (kernels/grad_norm.py).
"""
from types import SimpleNamespace

import torch

from fastgan import backends
from fastgan.ops import _common
from fastgan.reference import grad_norm as ref

OP = "grad_norm"

_TRITON_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- backends
def _cpu_check(grad=None, *rest):
    reason = _common.cpu_reason(grad)
    if reason is None and not hasattr(torch.ops.fastgan_C, "grad_norm_forward"):
        reason = "this build of fastgan._C has no grad_norm kernel (rebuild the extension)"
    return reason


def _cuda_check(grad=None, *rest):
    reason = _common.cuda_reason(grad)
    if reason is None and not hasattr(torch.ops.fastgan_C, "grad_norm_forward"):
        reason = "this build of fastgan._C has no grad_norm kernel (rebuild the extension)"
    return reason


def _triton_check(grad=None, *rest):
    return _common.triton_reason(grad, dtypes=_TRITON_DTYPES)


def _ext_forward(grad, center):
    return torch.ops.fastgan_C.grad_norm_forward(grad, center)


def _ext_backward(grad_out, grad, sumsq, center):
    return torch.ops.fastgan_C.grad_norm_backward(grad_out, grad, sumsq, center)


def _ref_forward(grad, center):
    sumsq = ref.sum_of_squares(grad)
    return ref.penalty_from_sumsq(sumsq, center), sumsq


def _ref_backward(grad_out, grad, sumsq, center):
    coef = ref.backward_coef(grad_out, sumsq, center)
    shape = (grad.shape[0],) + (1,) * (grad.dim() - 1)
    return (coef.reshape(shape) * grad.to(coef.dtype)).to(grad.dtype)


class _LazyTriton:
    """Imports kernels/grad_norm.py on first use: triton is optional."""

    def forward(self, *args):
        from fastgan.kernels import grad_norm as k
        return k.forward(*args)

    def backward(self, *args):
        from fastgan.kernels import grad_norm as k
        return k.backward(*args)


_EXT = SimpleNamespace(forward=_ext_forward, backward=_ext_backward)
backends.register(OP, "reference", SimpleNamespace(forward=_ref_forward, backward=_ref_backward),
                  _common.reference_reason)
backends.register(OP, "cpu", _EXT, _cpu_check)
backends.register(OP, "cuda", _EXT, _cuda_check)
backends.register(OP, "triton", _LazyTriton(), _triton_check)


# ---------------------------------------------------------------- ops
@torch.library.custom_op("fastgan::grad_norm_penalty", mutates_args=())
def grad_norm_penalty_op(grad: torch.Tensor, center: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad = grad.contiguous()
    penalty, sumsq = backends.choose(OP, grad).impl.forward(grad, center)
    return penalty, sumsq


@grad_norm_penalty_op.register_fake
def _(grad, center):
    acc = ref.acc_dtype(grad.dtype)
    return grad.new_empty((), dtype=acc), grad.new_empty((grad.shape[0],), dtype=acc)


@torch.library.custom_op("fastgan::grad_norm_penalty_backward", mutates_args=())
def grad_norm_penalty_backward_op(grad_out: torch.Tensor, grad: torch.Tensor, sumsq: torch.Tensor,
                                  center: float) -> torch.Tensor:
    grad = grad.contiguous()
    out = backends.choose(OP, grad).impl.backward(grad_out.contiguous(), grad, sumsq.contiguous(), center)
    return out.contiguous()


@grad_norm_penalty_backward_op.register_fake
def _(grad_out, grad, sumsq, center):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    grad, center = inputs
    _, sumsq = output
    ctx.mark_non_differentiable(sumsq)  # a by-product for the backward, not a result
    ctx.save_for_backward(grad, sumsq)
    ctx.center = center


def _backward(ctx, grad_penalty, _grad_sumsq):
    grad, sumsq = ctx.saved_tensors
    return grad_norm_penalty_backward_op(grad_penalty, grad, sumsq, ctx.center), None


grad_norm_penalty_op.register_autograd(_backward, setup_context=_setup)


def _setup_bwd(ctx, inputs, output):
    grad_out, grad, _sumsq, center = inputs
    ctx.save_for_backward(grad_out, grad)
    ctx.center = center


def _backward_bwd(ctx, ggrad):
    """Double backward: the vector-Jacobian product of the closed-form backward, taken
    through the reference formula (differentiable plain PyTorch, norms recomputed from
    grad). sumsq is a cache of grad's norms, not an independent input: no gradient."""
    grad_out, grad = ctx.saved_tensors
    want_go, want_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (want_go or want_g):
        return None, None, None, None
    with torch.enable_grad():
        go_ = grad_out.detach().requires_grad_(want_go)
        g_ = grad.detach().requires_grad_(want_g)
        dg = ref.grad_norm_penalty_backward(go_, g_, ctx.center)
        wrt = [t for t in (go_, g_) if t.requires_grad]
        got = iter(torch.autograd.grad(dg, wrt, ggrad, create_graph=torch.is_grad_enabled()))
    return (next(got) if want_go else None, next(got) if want_g else None, None, None)


grad_norm_penalty_backward_op.register_autograd(_backward_bwd, setup_context=_setup_bwd)


class _EagerGradNormPenalty(torch.autograd.Function):
    """fastgan::grad_norm_penalty without the custom-op dispatch, for plain eager mode
    (see _common.eager_fast_path): the same backend kernels; the backward calls the
    kernel directly unless a graph is being built (create_graph=True, as WGAN-GP and R1
    do through the critic), where it calls the differentiable backward op."""

    @staticmethod
    def forward(ctx, grad, center):
        grad = grad.contiguous()
        penalty, sumsq = backends.choose(OP, grad).impl.forward(grad, center)
        ctx.mark_non_differentiable(sumsq)
        ctx.save_for_backward(grad, sumsq)
        ctx.center = center
        return penalty, sumsq

    @staticmethod
    def backward(ctx, grad_penalty, _grad_sumsq):
        grad, sumsq = ctx.saved_tensors
        if torch.is_grad_enabled():
            return grad_norm_penalty_backward_op(grad_penalty, grad, sumsq, ctx.center), None
        impl = backends.choose(OP, grad).impl
        return impl.backward(grad_penalty.contiguous(), grad, sumsq, ctx.center).contiguous(), None


# ---------------------------------------------------------------- public function
def gradient_norm_penalty(grad: torch.Tensor, center: float = 1.0) -> torch.Tensor:
    """The fused reduction of every gradient penalty:

        penalty = 1/N sum_i (||grad_i||_2 - center)^2

    with the norm per sample i over all non-batch dimensions of grad ([N, ...]).
    center=0 gives 1/N sum_i ||grad_i||^2 (R1/R2). Returns a 0-dim tensor, float32 for
    float16/bfloat16 grad (accumulated in float32), else grad's dtype. Differentiable
    twice; at grad_i = 0 the gradient is finite (the subgradient 0 for center != 0).
    """
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"gradient_norm_penalty expects a torch.Tensor, got {type(grad).__name__}")
    if grad.dim() < 1 or grad.shape[0] < 1:
        raise ValueError(
            "gradient_norm_penalty expects a gradient of shape [N, ...] with at least one "
            f"sample (the norm is taken per sample over the other dims), got shape {tuple(grad.shape)}")
    if not grad.is_floating_point():
        raise TypeError(
            f"gradient_norm_penalty needs a floating-point gradient (float32, float64, float16 "
            f"or bfloat16), got {grad.dtype}")
    try:
        center = float(center)
    except (TypeError, ValueError):
        raise TypeError(f"center must be a number, got {center!r}") from None
    if _common.eager_fast_path(grad):
        penalty, _ = _EagerGradNormPenalty.apply(grad, center)
    else:
        penalty, _ = grad_norm_penalty_op(grad, center)
    return penalty
