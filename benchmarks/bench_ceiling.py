"""Ceilings measured in the same run as the ops, so "% of ceiling" compares like with like.

- copy: dst.copy_(src) over a buffer at least 4x the last-level cache (so it streams
  from memory); bytes = bytes read + bytes written = 2 * nbytes. Memory-bound ops are
  compared with this bandwidth.
- mm:   the library matrix product (torch.mm) at a large square size: flops = 2*M*N*K.
- conv: the library convolution (F.conv2d, 3x3, stride 1, padding 1) at a large size:
  flops = 2 * N * K * C * 9 * H * W. Compute-bound ops are compared with the better of
  mm and conv in the same dtype.
All records carry op="ceiling" and provider="library"; "kind" says which ceiling.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import DEVICE, QUICK, dtypes, record, run, torch_dtype


def _llc_bytes():
    """Last-level cache size in bytes (CPU from sysfs; CUDA from the device's L2)."""
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        return int(getattr(props, "L2_cache_size", 0) or 60 * 2**20)
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    text = f.read().strip()
            except OSError:
                continue
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
    except OSError:
        pass
    return best or 32 * 2**20


llc_bytes = _llc_bytes  # public name for other bench files (they size "4x LLC" shapes with it)


def _available_bytes():
    if DEVICE == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def copy_nbytes():
    """Buffer size for the copy: >= 4x LLC (at least 256 MiB, 1 GiB on CUDA), capped so
    that both buffers take at most a quarter of the free memory (and at 512 MiB on the
    CPU under --quick: a big virtual machine's "L3" is shared with other guests)."""
    want = max(4 * _llc_bytes(), (2**30 if DEVICE == "cuda" else 2**28))
    cap = _available_bytes() // 8
    if QUICK and DEVICE == "cpu":
        cap = min(cap, 2**29)
    return int(min(want, cap)) // 4096 * 4096


def test_copy(benchmark):
    n = copy_nbytes() // 4
    src = torch.empty(n, device=DEVICE).uniform_(-1, 1)  # not zeros: real data
    dst = torch.empty_like(src)
    run(benchmark, dst.copy_, src, warmup=1)
    assert torch.equal(dst[:1000], src[:1000])
    record(benchmark, op="ceiling", kind="copy", provider="library", mode="fwd", dtype="float32",
           shape=(n,), bytes=2 * src.numel() * src.element_size())


def _mm_sizes():
    if DEVICE == "cuda":
        return [8192]
    return [1024] if QUICK else [2048]


def _ceiling_dtypes():
    names = dtypes()
    if DEVICE == "cuda" and "bfloat16" not in names:
        names.append("bfloat16")  # the compute ceiling on the GPU is the bf16 tensor core rate
    return names


@pytest.mark.parametrize("size", _mm_sizes())
@pytest.mark.parametrize("dtype", _ceiling_dtypes())
def test_mm(benchmark, dtype, size):
    dt = torch_dtype(dtype)
    a = torch.randn(size, size, device=DEVICE, dtype=dt)
    b = torch.randn(size, size, device=DEVICE, dtype=dt)
    out = torch.empty(size, size, device=DEVICE, dtype=dt)
    run(benchmark, torch.mm, a, b, out=out, warmup=1)
    record(benchmark, op="ceiling", kind="mm", provider="library", mode="fwd", dtype=dtype,
           shape=(size, size, size), flops=2 * size**3)


def _conv_shapes():
    # N, C, K, H(=W): large enough to keep the library's best algorithm busy.
    if DEVICE == "cuda":
        return [(64, 512, 512, 64)]
    return [(8, 128, 128, 32)] if QUICK else [(16, 256, 256, 32)]


@pytest.mark.parametrize("shape", _conv_shapes(), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", _ceiling_dtypes())
def test_conv(benchmark, dtype, shape):
    N, C, K, H = shape
    dt = torch_dtype(dtype)
    x = torch.randn(N, C, H, H, device=DEVICE, dtype=dt)
    w = torch.randn(K, C, 3, 3, device=DEVICE, dtype=dt) / (3 * C**0.5)
    with torch.no_grad():
        run(benchmark, F.conv2d, x, w, None, 1, 1, warmup=1)
    record(benchmark, op="ceiling", kind="conv", provider="library", mode="fwd", dtype=dtype,
           shape=(N, C, H, H, K, 3, 3), flops=2 * N * K * C * 9 * H * H)
