"""CUDA-only rules (skipped with a reason on machines without a GPU):

- the current-stream rule: work launched while a non-default stream is current runs on
  that stream and gives the reference result (no kernel silently uses the default stream);
- CUDA-graph capture: a forward+backward step through every op can be captured and
  replayed, giving the eager result (no host syncs or allocations the capture forbids).
"""
import pytest
import torch

import fastgan.functional as FG
import fastgan.layers as L
from fastgan import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

GPU_BACKENDS = ["cuda", "triton"]


def _skip_unless(op, name, *args):
    reason = backends.why_not(op, name, *args)
    if reason is not None:
        pytest.skip(f"{name} backend cannot run {op} here: {reason}")


def _step(x, w, b, real_scores_weight):
    """conv_transpose -> minibatch_std -> score, and the gradient-norm penalty of a grad."""
    y = FG.conv_transpose2d(x, w, b, 2, 1, activation="lrelu", gain=2 ** 0.5)
    z = FG.minibatch_stddev(y, 4)
    score = (z * real_scores_weight).flatten(1).sum(1)
    return score.sum() + FG.gradient_norm_penalty(y, 1.0)


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_results_are_right_on_a_non_default_stream(name):
    dev = torch.device("cuda")
    x = torch.randn(8, 16, 9, 9, device=dev, requires_grad=True)
    w = torch.randn(16, 12, 4, 4, device=dev, requires_grad=True)
    b = torch.randn(12, device=dev, requires_grad=True)
    sw = torch.randn(1, 13, 18, 18, device=dev)
    _skip_unless("conv_transpose", name, x, w)
    with backends.use("reference"):
        expected_loss = _step(x, w, b, sw)
        expected = torch.autograd.grad(expected_loss, (x, w, b))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), backends.use(name):
        # Big enough that a kernel on the wrong stream would race with this stream's work.
        loss = _step(x, w, b, sw)
        got = torch.autograd.grad(loss, (x, w, b))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-3, atol=1e-3)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_cuda_graph_capture_of_forward_and_backward(name):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    up = L.ConvTranspose2d(16, 12, 4, 2, 1, activation="lrelu", gain=2 ** 0.5, device=dev)
    mbstd = L.MinibatchStdDev(4)
    head = torch.nn.Conv2d(13, 1, 18, device=dev)
    static_x = torch.randn(8, 16, 9, 9, device=dev)
    _skip_unless("conv_transpose", name, static_x, up.weight)
    params = list(up.parameters()) + list(head.parameters())

    def step():
        y = up(static_x)
        out = head(mbstd(y)).flatten().sum() + FG.gradient_norm_penalty(y, 1.0)
        return torch.autograd.grad(out, params)

    with backends.use(name):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up: Triton autotuning and lazy inits happen outside capture
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_grads = step()
        for _ in range(2):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            torch.cuda.synchronize()
            expected = step()
            for g, e in zip(static_grads, expected):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
