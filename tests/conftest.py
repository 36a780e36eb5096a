"""Shared test setup.

Triton kernels run on the CPU under the Triton interpreter in tests: TRITON_INTERPRET=1
must be set before triton is imported, so it is set here, first, unless a CUDA device
is present (then Triton compiles for real).
"""
import os

if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch as _torch
        _has_cuda = _torch.cuda.is_available()
    except Exception:
        _has_cuda = False
    if not _has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from fastgan import backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op):
    """pytest params: every backend of `op`, skipped with the reason when it cannot run here."""
    import fastgan.ops  # noqa: F401  (registers the ops)
    params = []
    for name in backends.BACKENDS:
        reason = backends.why_not(op, name)
        marks = [pytest.mark.skip(reason=f"{name} backend unavailable: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def device_params():
    """pytest params for 'cpu' and 'cuda' (the latter skipped with a reason when absent)."""
    cuda_mark = [] if torch.cuda.is_available() else [pytest.mark.skip(reason="no CUDA device on this machine")]
    return [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=cuda_mark, id="cuda")]


def poisoned_like(t):
    """A tensor of t's shape/dtype full of NaN, for checking that a kernel writes every element."""
    return torch.full_like(t, float("nan"))


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    # Fresh random data per test, but reproducible from the test's name.
    import zlib
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
