"""fastgan's operations as functions (DESIGN.md section 1). Each dispatches to the best
available backend (see fastgan.backends) and is differentiable twice where a critic
needs it."""
from fastgan.ops.conv_transpose import conv_transpose2d
from fastgan.ops.grad_norm import gradient_norm_penalty
from fastgan.ops.minibatch_std import minibatch_stddev
from fastgan.penalties import gradient_penalty, r1_penalty, r2_penalty

__all__ = [
    "conv_transpose2d",
    "minibatch_stddev",
    "gradient_penalty",
    "r1_penalty",
    "r2_penalty",
    "gradient_norm_penalty",
]
