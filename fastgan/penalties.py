"""Gradient penalties for GAN critics (DESIGN.md section 2.3): WGAN-GP, R1 and R2.

All three share one recipe, made safe by construction:

1. The sample batch x is detached and made a fresh leaf that requires grad, so callers
   may pass tensors that require grad (e.g. fake = G(z)) or not; nothing flows back
   into the caller's tensors or graph.
2. out = critic(x) must be one score per sample: shape [N] or [N, 1] (else ValueError).
3. g = d(sum_i out_i)/dx by torch.autograd.grad(create_graph=True), so the penalty is
   differentiable w.r.t. the critic's parameters (the double backward happens in the
   critic; under torch.no_grad() g is still computed, without the graph, so a logged
   penalty has its true value). With a GradScaler the gradient is taken of scaler.scale(sum out) and divided
   by the scale before the norm: the penalty is the same with and without it (if the
   scaled gradient overflows, the penalty is inf/NaN and the scaler's step() skips the
   update, as for any other scaled loss).
4. The norm is per sample over all non-batch dims, reduced by the fused op
   fastgan.ops.grad_norm.gradient_norm_penalty (one read of g forward, one read + one
   write backward; finite gradient where g_i = 0, never NaN).
5. Every critic parameter that the score depends on receives a gradient, zero where it
   does not affect g (the last layer's bias never does: d out/dx does not contain it).
   DistributedDataParallel needs this when the penalty is backpropagated on its own
   (lazy regularisation): its reducer waits for a gradient of every parameter. This is
   done by adding `_ZeroLink(out)`, a term whose value is exactly 0 and whose gradient
   w.r.t. out is exactly 0 (no 0 * out, which would be NaN for an inf score), so
   backward reaches every parameter on the path to the score at the cost of the last
   layers' backward only (the double backward already walks the rest).

The formulas, with g_i the gradient of sample i and n_i = ||g_i||_2:
    gradient_penalty = weight * 1/N sum_i (n_i - center)^2   at x_hat = alpha*real + (1-alpha)*fake
    r1_penalty       = gamma/2 * 1/N sum_i n_i^2              at real samples
    r2_penalty       = gamma/2 * 1/N sum_i n_i^2              at fake samples
The result is a 0-dim tensor (float32 when the gradient is half/bfloat16).
"""
import torch

from fastgan.ops.grad_norm import gradient_norm_penalty

__all__ = ["gradient_penalty", "r1_penalty", "r2_penalty", "gradient_norm_penalty"]


class _ZeroLink(torch.autograd.Function):
    """value 0 (a 0-dim tensor of `dtype`), gradient 0 w.r.t. `out`: links every
    parameter that out depends on into a loss without changing its value."""

    @staticmethod
    def forward(ctx, out, dtype):
        ctx.meta = (out.shape, out.dtype, out.device)
        return torch.zeros((), dtype=dtype, device=out.device)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.meta
        return torch.zeros(shape, dtype=dtype, device=device), None


def _check_batch(x, what, who):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: {what} must be a floating-point tensor (the penalty differentiates "
                        f"w.r.t. it), got {x.dtype}; convert with .float()")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{who}: {what} must be a batch [N, ...] with at least one sample, "
                         f"got shape {tuple(x.shape)}")


def _check_scores(out, n, who):
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{who}: the critic must return a tensor of scores, got {type(out).__name__}")
    if tuple(out.shape) not in ((n,), (n, 1)):
        raise ValueError(
            f"{who}: the critic must return one score per sample, shape [{n}] or [{n}, 1] for a "
            f"batch of N={n}, got shape {tuple(out.shape)}; end the critic with e.g. Linear(..., 1) "
            "or reduce its output per sample")


def _scale_of(scaler, device):
    """The scaler's current scale as a tensor on `device`, without a host sync
    (scaler.scale(1)); exactly 1 when the scaler is disabled."""
    return scaler.scale(torch.ones((), dtype=torch.float32, device=device))


def _critic_grad(critic, x, scaler, who):
    """(g, link): g = d(sum critic(x))/dx with create_graph (unscaled), link = _ZeroLink
    term (or None when the score depends on nothing that requires grad)."""
    # g needs autograd even under torch.no_grad() (e.g. logging the penalty): the graph
    # is built regardless, and kept for the double backward only when grad mode is on.
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        out = critic(x)
        _check_scores(out, x.shape[0], who)
        # A half/bfloat16 score (autocast) is summed in float32: the sum cannot overflow.
        score = out.sum(dtype=torch.float32) if out.dtype in (torch.float16, torch.bfloat16) else out.sum()
        if not score.requires_grad:
            # The critic ignores x and has no trainable parameters: g = 0 exactly.
            return torch.zeros_like(x), None
        scaled = score if scaler is None else scaler.scale(score)
        (grad,) = torch.autograd.grad(scaled, x, create_graph=keep_graph, allow_unused=True)
    if not keep_graph:
        out = None
    if grad is None:  # the score does not depend on x (e.g. a constant critic)
        grad = torch.zeros_like(x)
    elif scaler is not None:
        grad = grad / _scale_of(scaler, grad.device).to(grad.dtype)
    return grad, out


def _penalty(grad, out, center, factor):
    pen = gradient_norm_penalty(grad, center) * factor
    if out is not None:
        pen = pen + _ZeroLink.apply(out, pen.dtype)
    return pen


def _leaf(x):
    return x.detach().requires_grad_(True)


def gradient_penalty(critic, real, fake, *, weight=10.0, center=1.0, alpha=None, scaler=None):
    """WGAN-GP (Gulrajani et al. 2017):

        x_hat   = alpha * real + (1 - alpha) * fake       (real, fake detached)
        g       = d(sum_i critic(x_hat)_i) / d x_hat
        penalty = weight * 1/N sum_i (||g_i||_2 - center)^2

    alpha is drawn per sample from U[0, 1) with shape [N, 1, ..., 1] unless given (shape
    [N] or [N, 1, ..., 1]). real and fake must have the same shape, dtype and device.
    scaler: an optional torch.amp.GradScaler (see the module docstring). Returns a
    0-dim tensor; backpropagating it gives every critic parameter a gradient.
    """
    who = "gradient_penalty"
    _check_batch(real, "real", who)
    _check_batch(fake, "fake", who)
    if real.shape != fake.shape:
        raise ValueError(f"{who}: real and fake must have the same shape (x_hat interpolates them "
                         f"element by element), got real {tuple(real.shape)} and fake {tuple(fake.shape)}")
    if real.dtype != fake.dtype or real.device != fake.device:
        raise ValueError(f"{who}: real and fake must have the same dtype and device, got real "
                         f"{real.dtype} on {real.device} and fake {fake.dtype} on {fake.device}")
    n = real.shape[0]
    per_sample = (n,) + (1,) * (real.dim() - 1)
    if alpha is None:
        alpha = torch.rand(per_sample, device=real.device, dtype=real.dtype)
    else:
        if not isinstance(alpha, torch.Tensor):
            raise TypeError(f"{who}: alpha must be a tensor of shape {list(per_sample)}, got "
                            f"{type(alpha).__name__}")
        if tuple(alpha.shape) not in (per_sample, (n,)):
            raise ValueError(f"{who}: alpha must hold one value per sample, shape {list(per_sample)} "
                             f"(or [{n}]), got {tuple(alpha.shape)}")
        alpha = alpha.detach().reshape(per_sample).to(device=real.device, dtype=real.dtype)
    real, fake = real.detach(), fake.detach()
    x_hat = _leaf(alpha * real + (1 - alpha) * fake)
    grad, out = _critic_grad(critic, x_hat, scaler, who)
    return _penalty(grad, out, center, weight)


def r1_penalty(critic, real, *, gamma=10.0, scaler=None):
    """R1 (Mescheder et al. 2018): gamma/2 * 1/N sum_i ||d(sum critic(real))/d real_i||^2
    on real samples. See gradient_penalty for scaler and the guarantees."""
    _check_batch(real, "real", "r1_penalty")
    grad, out = _critic_grad(critic, _leaf(real), scaler, "r1_penalty")
    return _penalty(grad, out, 0.0, gamma / 2)


def r2_penalty(critic, fake, *, gamma=10.0, scaler=None):
    """R2: gamma/2 * 1/N sum_i ||d(sum critic(fake))/d fake_i||^2 on fake samples."""
    _check_batch(fake, "fake", "r2_penalty")
    grad, out = _critic_grad(critic, _leaf(fake), scaler, "r2_penalty")
    return _penalty(grad, out, 0.0, gamma / 2)
