"""fastgan: fused kernels for GAN training in PyTorch.

    import fastgan.layers as L       # drop-in modules
    import fastgan.functional as FG  # the same operations as functions
"""
__version__ = "0.1.0"

from fastgan import backends  # noqa: E402,F401
from fastgan import ops  # noqa: E402,F401  (registers the custom ops and their backends)
