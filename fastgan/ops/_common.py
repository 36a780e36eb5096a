"""Availability checks shared by every op's backend registrations.

Each returns None when the backend can run, else a reason a user can act on. Called
with no tensor they answer the static question (is the backend built/installed at all).
"""
import os

import torch

from fastgan import _ext

_triton_reason = None
_triton_checked = False


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_import_reason():
    global _triton_checked, _triton_reason
    if not _triton_checked:
        _triton_checked = True
        try:
            import triton  # noqa: F401
        except Exception as exc:
            _triton_reason = f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"
    return _triton_reason


def cpu_reason(x=None, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)):
    """Can the C++ CPU kernels take x?"""
    if _ext.C is None:
        return _ext.REASON
    if x is not None:
        if x.device.type != "cpu":
            return f"the cpu backend takes CPU tensors, got a tensor on {x.device}"
        if x.dtype not in dtypes:
            return f"the cpu backend supports {', '.join(str(d) for d in dtypes)}, got {x.dtype}"
    return None


def cuda_reason(x=None, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)):
    """Can the CUDA kernels take x?"""
    if _ext.C is None:
        return _ext.REASON
    if not _ext.HAS_CUDA_KERNELS:
        return "fastgan._C was built without CUDA kernels (CPU-only torch or no nvcc at build time)"
    if x is None:
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if x.device.type != "cuda":
        return f"the cuda backend takes CUDA tensors, got a tensor on {x.device}"
    if x.dtype not in dtypes:
        return f"the cuda backend supports {', '.join(str(d) for d in dtypes)}, got {x.dtype}"
    return None


def triton_reason(x=None, dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    """Can the Triton kernels take x? CPU tensors only under TRITON_INTERPRET=1."""
    reason = triton_import_reason()
    if reason is not None:
        return reason
    if x is None:
        if torch.cuda.is_available() or interpreting():
            return None
        return "no CUDA device is available and TRITON_INTERPRET=1 is not set"
    if x.device.type == "cpu" and not interpreting():
        return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"
    if x.device.type not in ("cpu", "cuda"):
        return f"the triton backend takes CUDA tensors, got a tensor on {x.device}"
    if x.dtype not in dtypes:
        return f"the triton backend supports {', '.join(str(d) for d in dtypes)}, got {x.dtype}"
    return None


def reference_reason(*args):
    return None


def eager_fast_path(*tensors) -> bool:
    """Whether a public function may skip the custom-op dispatch and run its kernels
    through a plain torch.autograd.Function (same kernels, same math, same double
    backward). The custom op's Python dispatch costs about 180 us per forward+backward
    on the 2-core VM, which is 5-25% of a penalty or minibatch-stddev call at training
    sizes. Only in plain eager mode: under torch.compile / export tracing, functorch
    transforms (vmap, grad) or a TorchDispatchMode (FakeTensor, ...) the custom op is
    used, since that is what those systems understand; likewise for tensor subclasses."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if torch._C._len_torch_dispatch_stack() > 0:
        return False
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)
