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


def conv_transpose_choices():
    """The CPU transposed convolution's recorded path choices, one line per layer and
    direction: "fwd|bwd <dtype> <geometry>: <chosen> (gemm t ms, dnn t ms, nchw t ms[,
    direct t ms])"; [] without the extension.

    For every layer of at least FASTGAN_CT_TUNE_MIN_MFLOP (default 50) MFLOP, the first
    call times our GEMM path, the library's (oneDNN) convolution on NHWC and on NCHW
    tensors and, for a forward with at most 8 output channels, our direct kernel, and
    keeps the fastest, as torch.backends.cudnn.benchmark does on the GPU;
    FASTGAN_CT_TUNE=0 uses fixed rules instead (bitwise-reproducible choices)."""
    ops_ = _pool_ops()
    if ops_ is None or not hasattr(ops_, "conv_transpose_tuning_report"):
        return []
    return [line for line in ops_.conv_transpose_tuning_report().splitlines() if line]


def reset_conv_transpose_choices(min_mflop=None):
    """Forget the recorded choices (see conv_transpose_choices); with min_mflop, time every
    layer of at least that many MFLOP from now on (None: FASTGAN_CT_TUNE_MIN_MFLOP or 50)."""
    ops_ = _pool_ops()
    if ops_ is not None and hasattr(ops_, "conv_transpose_tuning_reset"):
        ops_.conv_transpose_tuning_reset(-1.0 if min_mflop is None else float(min_mflop))
