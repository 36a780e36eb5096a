"""The CPU output pool (csrc/include/output_pool.h): large outputs of the C++ kernels are
reused across calls, reused blocks never leak old values into results, the pool's limit
and clear work, and FASTGAN_CPU_POOL_MB=0 turns it off."""
import os
import subprocess
import sys

import pytest
import torch

import fastgan
import fastgan.functional as FG
from fastgan import backends
from fastgan.reference.minibatch_std import minibatch_std as ref_minibatch_std

pytestmark = pytest.mark.skipif(fastgan.cpu_cache_stats() is None,
                                reason="the extension (and its CPU pool) is not loaded")


def _big():
    return torch.randn(8, 64, 32, 32)  # 2 MiB: above the pool's 1 MiB threshold


def test_outputs_are_reused_and_correct():
    if backends.why_not("minibatch_std", "cpu") is not None:
        pytest.skip(backends.why_not("minibatch_std", "cpu"))
    fastgan.empty_cpu_cache()
    x = _big()
    with backends.use("cpu"):
        first = FG.minibatch_stddev(x, 4)
        first.fill_(float("nan"))  # poison the block before it goes back to the pool
        del first
        before = fastgan.cpu_cache_stats()
        assert before["idle_bytes"] > 0
        x2 = _big()
        again = FG.minibatch_stddev(x2, 4)
    after = fastgan.cpu_cache_stats()
    assert after["hits"] == before["hits"] + 1
    torch.testing.assert_close(again, ref_minibatch_std(x2, 4, 1, 1e-8))
    # an ordinary tensor: it can grow, and it is independent of later outputs
    keep = again.clone()
    again.resize_(2 * again.numel())
    assert torch.equal(again[: keep.numel()], keep.flatten())


def test_grad_norm_backward_uses_pool():
    if backends.why_not("grad_norm", "cpu") is not None:
        pytest.skip(backends.why_not("grad_norm", "cpu"))
    g = torch.randn(16, 3, 128, 128)  # 3 MiB gradient
    gs = torch.ops.fastgan_C.grad_norm_forward(g, 1.0)[1]
    out = torch.ops.fastgan_C.grad_norm_backward(torch.tensor(1.0), g, gs, 1.0)
    del out
    hits = fastgan.cpu_cache_stats()["hits"]
    out = torch.ops.fastgan_C.grad_norm_backward(torch.tensor(1.0), g, gs, 1.0)
    assert fastgan.cpu_cache_stats()["hits"] == hits + 1
    assert torch.isfinite(out).all()


def test_clear_frees_idle_blocks():
    if backends.why_not("minibatch_std", "cpu") is not None:
        pytest.skip(backends.why_not("minibatch_std", "cpu"))
    y = torch.ops.fastgan_C.minibatch_std_forward(_big(), 4, 1, 1e-8)
    del y
    assert fastgan.cpu_cache_stats()["idle_bytes"] > 0
    fastgan.empty_cpu_cache()
    assert fastgan.cpu_cache_stats()["idle_bytes"] == 0


@pytest.mark.parametrize("limit_mb, expect_hits", [("0", False), ("1", False), ("64", True)])
def test_limit_from_environment(limit_mb, expect_hits):
    """0 disables the pool; a limit below the block size keeps nothing idle."""
    code = (
        "import torch, fastgan\n"
        "x = torch.randn(8, 64, 32, 32)\n"
        "for _ in range(3): y = torch.ops.fastgan_C.minibatch_std_forward(x, 4, 1, 1e-8); del y\n"
        "s = fastgan.cpu_cache_stats(); print(s['hits'], s['limit_bytes'])\n"
    )
    env = dict(os.environ, FASTGAN_CPU_POOL_MB=limit_mb)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    hits, limit = map(int, out.stdout.split())
    assert limit == int(limit_mb) << 20
    assert (hits > 0) == expect_hits, out.stdout
