"""fastgan::grad_norm_penalty (placeholder: reference path only until the kernels land)."""
from fastgan.reference.grad_norm import grad_norm_penalty


def gradient_norm_penalty(grad, center=1.0):
    """mean_i (||grad_i||_2 - center)^2 over samples i; finite gradient at grad_i = 0."""
    return grad_norm_penalty(grad, float(center))
