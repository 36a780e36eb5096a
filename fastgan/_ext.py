"""Loads the compiled extension fastgan._C, or records why it is not there.

`C` is the module (its ops live under torch.ops.fastgan_C) or None; `REASON` says why
it is None. Nothing here raises: without the extension fastgan runs on the reference
path, and the backend registry reports REASON for the "cpu" and "cuda" backends.
"""
import os

import torch  # noqa: F401  (the extension's op registrations need torch loaded first)

C = None
REASON = None
HAS_CUDA_KERNELS = False

if os.environ.get("FASTGAN_NO_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
    REASON = "the extension is disabled by FASTGAN_NO_EXT=1"
else:
    try:
        from fastgan import _C as C  # noqa: N811
    except Exception as exc:  # ImportError, or an undefined symbol from a mismatched torch
        C = None
        REASON = (
            f"the compiled extension fastgan._C did not load ({type(exc).__name__}: {exc}); "
            "reinstall with `pip install --no-build-isolation .` against the torch in use"
        )
    else:
        HAS_CUDA_KERNELS = bool(torch.ops.fastgan_C.has_cuda())


def build_info():
    """The facts setup.py recorded (torch version, CUDA or not, flags), or {} if unknown."""
    try:
        from fastgan._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)
