"""fastgan: fused kernels for GAN training in PyTorch.

    import fastgan.layers as L       # drop-in modules
    import fastgan.functional as FG  # the same operations as functions
"""
__version__ = "0.1.0"

from fastgan import backends  # noqa: E402,F401
from fastgan import ops  # noqa: E402,F401  (registers the custom ops and their backends)



def _pool_ops():
    """torch.ops.fastgan_C when the extension (with its CPU output pool) is loaded."""
    import torch
    from fastgan import _ext
    ops_ = torch.ops.fastgan_C if _ext.C is not None else None
    return ops_ if ops_ is not None and hasattr(ops_, "cpu_pool_stats") else None


def empty_cpu_cache():
    """Free the idle blocks of the CPU output pool (see cpu_cache_stats)."""
    if _pool_ops() is not None:
        _pool_ops().cpu_pool_clear()


def cpu_cache_stats():
    """The CPU output pool as {"idle_bytes", "limit_bytes", "hits", "misses"}, or None
    without the extension.

    fastgan's C++ CPU kernels take outputs of 1 MiB and more from a pool that keeps freed
    blocks for the next call of the same shape, so a training loop does not pay
    first-touch page faults every step (csrc/include/output_pool.h). At most
    FASTGAN_CPU_POOL_MB MiB (default 2048) sit idle there; FASTGAN_CPU_POOL_MB=0 turns
    the pool off."""
    if _pool_ops() is None:
        return None
    idle, limit, hits, misses = _pool_ops().cpu_pool_stats()
    return {"idle_bytes": idle, "limit_bytes": limit, "hits": hits, "misses": misses}
