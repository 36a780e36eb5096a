"""The fused gradient-norm reduction (op "grad_norm"): penalty = mean_i (||g_i|| - 1)^2,
forward alone ("fwd") and forward + backward d penalty / d g ("fwdbwd").

Shapes: the gradient of a 64x64 RGB batch (64, 3, 64, 64), of a 256x256 batch
(32, 3, 256, 256) (issue 4's target shape), and (64, 3, 1024, 1024) = 805 MB float32,
larger than the last-level cache of the CPUs and GPUs we run on (this CPU's L3 is 480
MiB), so it streams from memory.

Minimal bytes: fwd reads g once; fwdbwd reads g once forward, then once more and writes
dg once backward: 3 * g.nbytes (the norms are per-sample scalars, negligible).

Providers: fastgan (auto backend) and fastgan-<backend>, eager (the plain-PyTorch
reference under autograd), compile (torch.compile of the reference forward; its
backward is the compiled AOT backward).

    pytest benchmarks/bench_grad_norm.py --benchmark-disable -q     # runs each once
"""
import pytest
import torch

from conftest import DEVICE, dtypes, pick, providers, provider_fn, record, run, torch_dtype

from fastgan.ops.grad_norm import gradient_norm_penalty
from fastgan.reference.grad_norm import grad_norm_penalty as reference_penalty

CENTER = 1.0
SHAPES = pick([(64, 3, 64, 64), (32, 3, 256, 256), (64, 3, 1024, 1024)],
              [(64, 3, 64, 64), (32, 3, 256, 256)])


def _fastgan(g):
    return gradient_norm_penalty(g, CENTER)


def _reference(g):
    return reference_penalty(g, CENTER)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("provider", providers("grad_norm"))
def test_grad_norm(benchmark, provider, mode, dtype, shape):
    dt = torch_dtype(dtype)
    g = torch.randn(shape, device=DEVICE, dtype=dt)
    penalty = provider_fn(provider, _fastgan, _reference)
    if mode == "fwd":
        with torch.no_grad():
            out = run(benchmark, penalty, g)
        nbytes = g.numel() * g.element_size()
    else:
        g.requires_grad_(True)

        def fwdbwd(x):
            return torch.autograd.grad(penalty(x), x)[0]

        out = run(benchmark, fwdbwd, g)
        nbytes = 3 * g.numel() * g.element_size()
    assert torch.isfinite(out).all().item()
    record(benchmark, op="grad_norm", provider=provider, mode=mode, dtype=dtype, shape=shape, bytes=nbytes)
