"""Minibatch standard deviation (op "minibatch_std", DESIGN.md 2.2, group_size=4,
num_channels=1): forward alone ("fwd") and forward + backward ("fwdbwd", the gradient
w.r.t. x for a fixed random dy, by torch.autograd.grad).

Shapes: the StyleGAN2 critic blocks (32, 512, 4, 4) and (64, 256, 8, 8), a 32x32 block
(16, 128, 32, 32), and one large shape that streams from memory: on the CPU
(N, 512, 64, 64) float32 with N the smallest multiple of 4 that makes x at least 4x the
last-level cache (this CPU reports a 480 MiB L3 -> N = 240, 1.9 GiB); on CUDA
(256, 512, 32, 32) = 512 MiB float32, over 4x an H200's 60 MB L2 (256 MiB in bfloat16).

Minimal bytes: fwd reads x and writes y = [N, C+1, H, W] once: |x| + |y|; fwdbwd adds
the backward's read of x, read of dy (= |y|) and write of dx (= |x|): 3|x| + 2|y|.

Providers: fastgan (auto backend) and fastgan-<backend>, eager (the plain-PyTorch
reference under autograd), compile (torch.compile of the reference).

    pytest benchmarks/bench_minibatch_std.py --benchmark-disable -q     # runs each once
"""
import pytest
import torch

from bench_ceiling import llc_bytes
from conftest import DEVICE, dtypes, per_device, providers, provider_fn, record, run, torch_dtype

from fastgan.functional import minibatch_stddev
from fastgan.reference.minibatch_std import minibatch_std as reference_minibatch_std

GROUP, CHANNELS, EPS = 4, 1, 1e-8


def _large_cpu_shape():
    per_sample = 512 * 64 * 64 * 4  # float32 bytes of one sample
    n = -(-4 * llc_bytes() // per_sample)
    return (max(GROUP, -(-n // GROUP) * GROUP), 512, 64, 64)


SMALL = [(32, 512, 4, 4), (64, 256, 8, 8), (16, 128, 32, 32)]
SHAPES = per_device(SMALL + [_large_cpu_shape()], SMALL + [(256, 512, 32, 32)],
                    quick=[(32, 512, 4, 4), (64, 256, 8, 8)])


def _fastgan(x):
    return minibatch_stddev(x, GROUP, CHANNELS, EPS)


def _reference(x):
    G = min(GROUP, x.shape[0])
    return reference_minibatch_std(x, G, CHANNELS, EPS)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("provider", providers("minibatch_std"))
def test_minibatch_std(benchmark, provider, mode, dtype, shape):
    dt = torch_dtype(dtype)
    N, C, H, W = shape
    x = torch.randn(shape, device=DEVICE, dtype=dt)
    fn = provider_fn(provider, _fastgan, _reference)
    x_bytes = x.numel() * x.element_size()
    y_bytes = N * (C + CHANNELS) * H * W * x.element_size()
    big = x_bytes >= 2**28  # fewer warm-up calls where one call takes seconds
    if mode == "fwd":
        with torch.no_grad():
            out = run(benchmark, fn, x, warmup=1 if big else 2)
        nbytes = x_bytes + y_bytes
    else:
        x.requires_grad_(True)
        gy = torch.randn(N, C + CHANNELS, H, W, device=DEVICE, dtype=dt)

        def fwdbwd(t):
            return torch.autograd.grad(fn(t), t, gy)[0]

        out = run(benchmark, fwdbwd, x, warmup=1 if big else 2)
        nbytes = 3 * x_bytes + 2 * y_bytes
    assert torch.isfinite(out).all().item()
    record(benchmark, op="minibatch_std", provider=provider, mode=mode, dtype=dtype, shape=shape, bytes=nbytes)
