"""Paired (interleaved) measurements of the issue targets, for machines whose speed drifts.

The other bench files time each provider in its own test, minutes apart. On the shared
2-core VMs the speed of the same code drifts by up to 2x over minutes (memory bandwidth
above all), which swamps a 10-30% difference between providers. Here each round runs
the baselines and then fastgan back to back: pytest-benchmark times the fastgan call
(`pedantic`), and the `setup` hook, which pytest-benchmark runs untimed before every
round, times each baseline once with perf_counter. The report's "Paired" table gives
the medians and their ratio, baseline / fastgan (above 1: fastgan faster); a "copy"
baseline copies the case's minimal bytes, so that ratio is the fraction of the copy
bandwidth fastgan reaches.

CPU only (the GPU run measures its own providers). Cases: minibatch_std (64,256,8,8)
and the largest shape, grad_norm (32,3,256,256), the five DCGAN generator layers and
the WGAN-GP critic step at 32 and 64 pixels, forward + backward, and one full training
step of the digits models (bench_train_step.py).
"""
import math
import statistics
import time

import pytest
import torch

import bench_conv_transpose as ct
import bench_critic_step as cs
import bench_grad_norm as gn
import bench_minibatch_std as mb
import bench_train_step as ts
from conftest import DEVICE, QUICK, provider_fn

pytestmark = pytest.mark.skipif(DEVICE != "cpu", reason="paired measurements are for the CPU run")


def _copy_fn(nbytes):
    src = torch.empty(nbytes // 2, dtype=torch.uint8)
    src.fill_(1)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)  # reads nbytes/2 and writes nbytes/2


def _minibatch(shape):
    N, C, H, W = shape
    x = torch.randn(shape, requires_grad=True)
    gy = torch.randn(N, C + 1, H, W)
    nbytes = (3 * x.numel() + 2 * gy.numel()) * 4

    def make(provider):
        fn = provider_fn(provider, mb._fastgan, mb._reference)
        return lambda: torch.autograd.grad(fn(x), x, gy)[0]
    return make, nbytes


def _grad_norm(shape):
    g = torch.randn(shape, requires_grad=True)

    def make(provider):
        fn = provider_fn(provider, gn._fastgan, gn._reference)
        return lambda: torch.autograd.grad(fn(g), g)[0]
    return make, 3 * g.numel() * 4


def _conv(layer):
    name, N, cin, cout, H, k, s, p, act, gain = layer
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, cin, H, H, generator=gen, requires_grad=True)
    w = (torch.randn(cin, cout, k, k, generator=gen) / math.sqrt(cin * k * k / (s * s))).requires_grad_()
    b = (0.1 * torch.randn(cout, generator=gen)).requires_grad_()
    Ho = (H - 1) * s - 2 * p + k
    gy = torch.randn(N, cout, Ho, Ho, generator=gen)

    def make(provider):
        fn = provider_fn(provider, ct._make_fastgan(act, gain, s, p), ct._make_eager(act, gain, s, p))
        return lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), gy)[0]
    return make, None


def _critic(size):
    def make(provider):
        return cs.make_critic_step(provider, size)
    return make, None


def _train_step():
    return ts.make_step, None


# (case id, op, shape, builder, baselines, rounds)
CASES = [
    ("minibatch_std-64x256x8x8", "minibatch_std", (64, 256, 8, 8), lambda: _minibatch((64, 256, 8, 8)),
     ("eager", "compile"), 30),
    ("minibatch_std-largest", "minibatch_std", mb.SHAPES[-1], lambda: _minibatch(mb.SHAPES[-1]),
     ("eager", "compile", "copy"), 7),
    ("grad_norm-32x3x256x256", "grad_norm", (32, 3, 256, 256), lambda: _grad_norm((32, 3, 256, 256)),
     ("eager", "compile", "copy"), 30),
] + [
    (f"conv_transpose-{layer[0]}", "conv_transpose", layer[1:8], (lambda layer=layer: _conv(layer)), ("eager",),
     7) for layer in ct.LAYERS
] + [
    (f"critic_step-{size}", "critic_step", (cs.BATCH, 3, size, size), (lambda size=size: _critic(size)),
     ("eager",), 5) for size in cs.SIZES
] + [
    ("train_step-digits", "train_step", (ts.BATCH, 1, ts.SIZE, ts.SIZE), _train_step, ("eager",), 15),
]
if QUICK:
    CASES = [c for c in CASES if c[0] in ("minibatch_std-64x256x8x8", "grad_norm-32x3x256x256")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_paired(benchmark, case):
    case_id, op, shape, build, baselines, rounds = case
    make, nbytes = build()
    fast = make("fastgan")
    base = {name: (_copy_fn(nbytes) if name == "copy" else make(name)) for name in baselines}
    for fn in (fast, *base.values()):  # warm-up: compilation, autotuning, the allocator
        fn()
        fn()
    times = {name: [] for name in base}

    def setup():
        for name, fn in base.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(fast, setup=setup, rounds=rounds, iterations=1)
    t_fast = benchmark.stats.stats.median
    paired = {name: {"median": statistics.median(ts), "ratio": statistics.median(ts) / t_fast}
              for name, ts in times.items()}
    benchmark.extra_info.update({"op": op, "provider": "fastgan", "mode": "paired", "dtype": "float32",
                                 "shape": "x".join(map(str, shape)), "device": DEVICE, "case": case_id,
                                 "paired": paired})
