"""Transposed convolution with fused epilogue (op "conv_transpose", DESIGN.md 2.1):
forward alone ("fwd") and forward + backward ("fwdbwd": gradients of input, weight and
bias for a fixed random dy, by torch.autograd.grad).

Layers (name: N, C_in -> C_out, H_in -> H_out, kernel/stride/padding, activation):
  dcgan1  64, 100 -> 512, 1 -> 4,   k4 s1 p0, relu      (the nz projection)
  dcgan2  64, 512 -> 256, 4 -> 8,   k4 s2 p1, relu
  dcgan3  64, 256 -> 128, 8 -> 16,  k4 s2 p1, relu
  dcgan4  64, 128 -> 64,  16 -> 32, k4 s2 p1, relu
  dcgan5  64, 64 -> 3,    32 -> 64, k4 s2 p1, tanh      (the RGB output)
  style   4 (CPU) / 32 (CUDA), 512 -> 512, 16 -> 32, k4 s2 p1, lrelu(0.2) * sqrt(2)

Providers: fastgan (auto backend) and fastgan-<backend>; eager = F.conv_transpose2d
followed by the activation (and gain) as separate PyTorch ops; compile = torch.compile
of that eager function.

Work: flops = 2 N C_in C_out H_in W_in k^2 for fwd (every useful multiply-add once),
3x that for fwdbwd (grad_input and grad_weight are each as large as the forward).

    pytest benchmarks/bench_conv_transpose.py --benchmark-disable -q     # runs each once
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, dtypes, pick, providers, provider_fn, record, run, torch_dtype

import fastgan
import fastgan.functional as FG

# name, N, C_in, C_out, H_in, k, s, p, activation, gain
LAYERS = [
    ("dcgan1", 64, 100, 512, 1, 4, 1, 0, "relu", 1.0),
    ("dcgan2", 64, 512, 256, 4, 4, 2, 1, "relu", 1.0),
    ("dcgan3", 64, 256, 128, 8, 4, 2, 1, "relu", 1.0),
    ("dcgan4", 64, 128, 64, 16, 4, 2, 1, "relu", 1.0),
    ("dcgan5", 64, 64, 3, 32, 4, 2, 1, "tanh", 1.0),
    ("style", 4 if DEVICE == "cpu" else 32, 512, 512, 16, 4, 2, 1, "lrelu", math.sqrt(2)),
]
LAYERS = pick(LAYERS, [LAYERS[1], LAYERS[4]])

_ACT = {"relu": torch.relu, "tanh": torch.tanh, "lrelu": lambda t: F.leaky_relu(t, 0.2)}


def _make_eager(act, gain, stride, padding):
    a = _ACT[act]

    def eager(x, w, b):
        y = a(F.conv_transpose2d(x, w, b, stride, padding))
        return y * gain if gain != 1.0 else y
    return eager


def _make_fastgan(act, gain, stride, padding):
    def fastgan(x, w, b):
        return FG.conv_transpose2d(x, w, b, stride, padding, activation=act, gain=gain)
    return fastgan


@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: l[0])
@pytest.mark.parametrize("dtype", dtypes())
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("provider", providers("conv_transpose"))
def test_conv_transpose(benchmark, provider, mode, dtype, layer):
    name, N, cin, cout, H, k, s, p, act, gain = layer
    dt = torch_dtype(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, cin, H, H, generator=g).to(DEVICE, dt)
    w = (torch.randn(cin, cout, k, k, generator=g) / math.sqrt(cin * k * k / (s * s))).to(DEVICE, dt)
    b = (0.1 * torch.randn(cout, generator=g)).to(DEVICE, dt)
    fn = provider_fn(provider, _make_fastgan(act, gain, s, p), _make_eager(act, gain, s, p))
    flops = 2 * N * cin * cout * H * H * k * k
    if mode == "fwd":
        with torch.no_grad():
            out = run(benchmark, fn, x, w, b)
    else:
        for t in (x, w, b):
            t.requires_grad_(True)
        Ho = (H - 1) * s - 2 * p + k
        gy = torch.randn(N, cout, Ho, Ho, generator=g).to(DEVICE, dt)

        def fwdbwd(x, w, b):
            return torch.autograd.grad(fn(x, w, b), (x, w, b), gy)

        out = run(benchmark, fwdbwd, x, w, b)[0]
        flops *= 3
    assert torch.isfinite(out).all().item()
    # The CPU kernel's timed path choices for this layer (fastgan.conv_transpose_choices):
    # kept in the JSON, so a surprising time can be traced to the path that ran.
    compute = "Double" if dt == torch.float64 else "Float"  # half/bfloat16 layers run in float32
    geometry = f" {compute} N={N} Cin={cin} Cout={cout} in={H}x{H} "
    choices = [c for c in fastgan.conv_transpose_choices() if geometry in c] if provider.startswith("fastgan") else []
    record(benchmark, op="conv_transpose", provider=provider, mode=mode, dtype=dtype,
           shape=(N, cin, cout, H, H, k, s, p), flops=flops, layer=name, activation=act, path_choices=choices)
