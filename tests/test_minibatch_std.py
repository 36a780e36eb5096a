"""minibatch_std (DESIGN.md 2.2) on every backend.

The reference (fastgan.reference.minibatch_std) is pinned against an independent loop
computation in numpy; every backend is compared with the reference on fresh random
data (odd and prime sizes, strided groups, num_channels > 1, group_size None, group
larger than the batch, a batch of one, tiles/chunks with ragged tails), every dtype;
layouts; gradcheck/gradgradcheck; opcheck of both custom ops; errors; torch.compile.
"""
import math

import numpy as np
import pytest
import torch

import fastgan.functional as FG
import fastgan.layers as L
from fastgan import backends
from fastgan.functional import minibatch_stddev
from fastgan.ops.minibatch_std import minibatch_std_backward_op, minibatch_std_op
from fastgan.reference import minibatch_std as ref

from conftest import backend_params, device_params

OP = "minibatch_std"
BACKENDS = backend_params(OP)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol) against the reference run on the same input dtype. The reference also
# computes in float32 for half types, so differences are ordering and rounding of the
# output (1 ulp of a half type can show up).
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-6, 2e-5),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}

# (shape, group_size, num_channels): the semantics cases of DESIGN.md 2.2.
CASES = [
    ((8, 6, 5, 3), 4, 2),        # strided groups, F > 1, odd spatial
    ((12, 7, 3, 5), 3, 7),       # F = C (c = 1), prime channels
    ((7, 5, 3, 3), None, 1),     # group_size None -> G = N = 7 (prime)
    ((3, 5, 2, 3), 4, 1),        # group larger than the batch -> G = 3
    ((1, 3, 2, 2), 4, 1),        # batch of one -> G = 1: var = 0, std = sqrt(eps)
    ((10, 2, 1, 1), 5, 1),       # 1x1 spatial
    ((4, 3, 13, 17), 2, 1),      # L = 663: several Triton blocks with a ragged tail
]
CPU_ONLY_CASES = [
    ((8, 64, 16, 16), 4, 1),     # L = 16384 > the CPU kernel's chunk: several work items
    ((32, 5, 7, 11), 16, 5),     # G = 16, L = 77: tails inside one tile
]


def _ids(case):
    shape, g, f = case
    return f"{'x'.join(map(str, shape))}-G{g}-F{f}"


def _resolve(N, group_size):
    return N if group_size is None else min(group_size, N)


def _poison_allocator(nbytes, device):
    """Best effort: leave NaN in freed memory of the size about to be allocated, so that
    output elements a kernel forgets to write show up as NaN (the kernels allocate
    their outputs with empty())."""
    t = torch.full((max(nbytes // 4, 1),), float("nan"), dtype=torch.float32, device=device)
    del t


def _skip_unless_runs(backend, x):
    reason = backends.why_not(OP, backend, x)
    if reason is not None:
        pytest.skip(f"{backend} backend cannot take this input: {reason}")


def _fwd_bwd(x, group_size, num_channels, eps, gy):
    x = x.detach().requires_grad_(True)
    _poison_allocator(gy.numel() * gy.element_size(), x.device)
    y = minibatch_stddev(x, group_size, num_channels, eps)
    _poison_allocator(x.numel() * x.element_size(), x.device)
    (gx,) = torch.autograd.grad(y, x, gy)
    return y, gx


# ---------------------------------------------------------------- the reference itself
def _loop_reference(x, G, F, eps):
    """DESIGN.md 2.2 written out with loops over samples (independent of the reshape
    trick of the reference): member g of group m is sample g * M + m."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    M, c = N // G, C // F
    y = np.zeros((N, C + F, H, W))
    y[:, :C] = x
    for m in range(M):
        members = [g * M + m for g in range(G)]
        for f in range(F):
            total = 0.0
            for k in range(f * c, (f + 1) * c):
                for h in range(H):
                    for w in range(W):
                        vals = [x[n, k, h, w] for n in members]
                        mu = sum(vals) / G
                        var = sum((v - mu) ** 2 for v in vals) / G
                        total += math.sqrt(var + eps)
            for n in members:
                y[n, C + f] = total / (c * H * W)
    return y


@pytest.mark.parametrize("shape,G,F", [((6, 4, 2, 3), 3, 2), ((4, 3, 3, 1), 2, 1), ((5, 2, 1, 2), 1, 1)])
def test_reference_matches_loops(shape, G, F):
    x = torch.randn(shape, dtype=torch.float64)
    eps = 1e-3  # large enough that a misplaced eps (outside the root) would show
    got = ref.minibatch_std(x, G, F, eps).numpy()
    np.testing.assert_allclose(got, _loop_reference(x.numpy(), G, F, eps), rtol=1e-12, atol=1e-14)


def test_reference_backward_is_the_gradient_of_the_forward():
    x = torch.randn(6, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(6, 6, 3, 2, dtype=torch.float64)
    (auto,) = torch.autograd.grad(ref.minibatch_std(x, 3, 2, 1e-4), x, gy)
    torch.testing.assert_close(ref.minibatch_std_backward(gy, x.detach(), 3, 2, 1e-4), auto,
                               rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------- every backend vs reference
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference(backend, case, dtype):
    _check_case("cpu", backend, case, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CPU_ONLY_CASES, ids=_ids)
def test_cpu_kernel_chunks_and_tails(case, dtype):
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip(f"cpu backend unavailable: {backends.why_not(OP, 'cpu')}")
    _check_case("cpu", "cpu", case, dtype)


@pytest.mark.parametrize("case", CASES[:3] + CASES[-1:], ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", device_params())
def test_backend_on_device(device, backend, case):
    """The same comparison with tensors on each device: on a CUDA machine the cuda and
    triton backends run on CUDA tensors (float32 and bfloat16)."""
    if backend in ("cuda",) and device == "cpu":
        pytest.skip("the cuda backend takes CUDA tensors")
    if backend == "cpu" and device == "cuda":
        pytest.skip("the cpu backend takes CPU tensors")
    for dtype in (torch.float32, torch.bfloat16):
        _check_case(device, backend, case, dtype)


def _check_case(device, backend, case, dtype):
    shape, group_size, F = case
    eps = 1e-5
    x = (torch.randn(shape, dtype=torch.float64) * 1.7 + 0.3).to(device=device, dtype=dtype)
    G = _resolve(shape[0], group_size)
    _skip_unless_runs(backend, x)
    N, C, H, W = shape
    gy = torch.randn(N, C + F, H, W, dtype=torch.float64).to(device=device, dtype=dtype)
    with backends.use(backend):
        y, gx = _fwd_bwd(x, group_size, F, eps, gy)
    y_ref = ref.minibatch_std(x, G, F, eps)
    gx_ref = ref.minibatch_std_backward(gy, x, G, F, eps)
    assert y.shape == (N, C + F, H, W) and y.dtype == dtype and gx.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(gx).all()
    assert torch.equal(y[:, :C], x), "the first C channels must be x unchanged"
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.double(), y_ref.double(), atol=atol, rtol=rtol)
    # dx = dy + (small term): compare with a tolerance scaled to dy's size
    torch.testing.assert_close(gx.double(), gx_ref.double(), atol=atol * 4, rtol=rtol * 4)
    # the stat channels are constant over (h, w) and equal within a group
    stat = y[:, C:].double()
    assert torch.equal(stat, stat[:, :, :1, :1].expand_as(stat))
    M = N // G
    per_group = stat[:, :, 0, 0].reshape(G, M, F)
    assert torch.equal(per_group, per_group[:1].expand_as(per_group))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one_gives_sqrt_eps(backend):
    x = torch.randn(1, 5, 3, 3)
    _skip_unless_runs(backend, x)
    with backends.use(backend):
        y = minibatch_stddev(x, group_size=4, num_channels=1, eps=0.25)
    torch.testing.assert_close(y[:, 5:], torch.full((1, 1, 3, 3), 0.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_is_inside_the_root(backend):
    """Members that agree everywhere: std = sqrt(0 + eps), not 0 + eps."""
    base = torch.randn(1, 4, 2, 3)
    x = base.expand(4, 4, 2, 3).contiguous()
    _skip_unless_runs(backend, x)
    with backends.use(backend):
        y = minibatch_stddev(x, group_size=4, num_channels=2, eps=1e-2)
    torch.testing.assert_close(y[:, 4:], torch.full((4, 2, 2, 3), 0.1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_inputs_give_nan_statistics_like_the_reference(backend):
    """A NaN or an infinity in a group makes that group's statistic NaN, as in the
    reference; the other groups stay finite. (Clamping a rounded-negative variance must not
    turn NaN into 0: that would hide a diverging run behind a finite statistic.)"""
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(8, 5, 3, 4, dtype=torch.float64 if backend != "triton" else torch.float32)
        _skip_unless_runs(backend, x)
        x[1, 2, 1, 3] = bad  # group size 4, 2 groups: sample 1 is in group 1 (members 1, 3, 5, 7)
        with backends.use(backend):
            y = minibatch_stddev(x, 4, 1, 1e-8)
        ye = ref.minibatch_std(x, 4, 1, 1e-8)
        assert torch.isnan(ye[1::2, 5]).all() and torch.isfinite(ye[0::2, 5]).all()
        torch.testing.assert_close(y, ye, equal_nan=True, msg=f"input {bad}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_give_the_contiguous_result(backend):
    x = torch.randn(6, 10, 5, 7)
    _skip_unless_runs(backend, x)
    gy = torch.randn(6, 12, 5, 7)
    with backends.use(backend):
        y0, g0 = _fwd_bwd(x, 3, 2, 1e-8, gy)
        y1, g1 = _fwd_bwd(x.to(memory_format=torch.channels_last), 3, 2, 1e-8,
                          gy.to(memory_format=torch.channels_last))
        wide = torch.randn(6, 10, 5, 14)[..., ::2]          # a strided view
        wide.copy_(x)
        y2, g2 = _fwd_bwd(wide, 3, 2, 1e-8, gy)
        y3, g3 = _fwd_bwd(x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3), 3, 2, 1e-8, gy)
    for y, g in ((y1, g1), (y2, g2), (y3, g3)):
        assert torch.equal(y, y0)
        assert torch.equal(g, g0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cpu_streaming_store_path(monkeypatch, dtype):
    """In the tile passes (G > 8, or half/bfloat16), outputs >= FASTGAN_STREAM_MIN_BYTES
    (128 MiB by default) are written with streaming stores; 0 forces that path here, on
    sizes whose member spans start at unaligned addresses (odd H*W) and aligned ones.
    (G <= 8 in float32/float64 takes the fused register path, which never streams.)"""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip(f"cpu backend unavailable: {backends.why_not(OP, 'cpu')}")
    monkeypatch.setenv("FASTGAN_STREAM_MIN_BYTES", "0")
    for case in (((8, 6, 5, 3), 4, 2), ((8, 64, 16, 16), 4, 1), ((6, 7, 13, 17), 3, 7), ((32, 5, 7, 11), 16, 5)):
        _check_case("cpu", "cpu", case, dtype)


def test_cpu_result_does_not_depend_on_thread_count():
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip(f"cpu backend unavailable: {backends.why_not(OP, 'cpu')}")
    x = torch.randn(16, 32, 16, 16)
    gy = torch.randn(16, 33, 16, 16)
    threads = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out.append((torch.ops.fastgan_C.minibatch_std_forward(x, 4, 1, 1e-8),
                        torch.ops.fastgan_C.minibatch_std_backward(gy, x, 4, 1, 1e-8)))
    finally:
        torch.set_num_threads(threads)
    for y, g in out[1:]:
        assert torch.equal(y, out[0][0]) and torch.equal(g, out[0][1])


# ---------------------------------------------------------------- derivatives
GRAD_BACKENDS = [p for p in BACKENDS if p.id in ("reference", "cpu")]


@pytest.mark.parametrize("shape,group_size,F", [((4, 3, 2, 3), 2, 1), ((6, 4, 3, 1), 3, 2), ((3, 2, 1, 2), None, 2)])
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_gradcheck_and_gradgradcheck(backend, shape, group_size, F):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    _skip_unless_runs(backend, x)

    def fn(t):
        return minibatch_stddev(t, group_size, F, 1e-3)

    with backends.use(backend):
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8)
        assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id in ("triton", "cuda")])
def test_gradcheck_other_backends(backend):
    """First derivative of the GPU backends in float64 (small: the Triton interpreter is
    slow); their double backward routes through the reference formula."""
    x = torch.randn(4, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    _skip_unless_runs(backend, x)
    with backends.use(backend):
        assert torch.autograd.gradcheck(lambda t: minibatch_stddev(t, 2, 2, 1e-3), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id in ("reference", "cpu")])
def test_gradgradcheck_backward_op_in_both_inputs(backend):
    """The backward op is differentiable in dy and in x (R1 / WGAN-GP need both)."""
    x = torch.randn(4, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    with backends.use(backend):
        assert torch.autograd.gradcheck(lambda g, t: minibatch_std_backward_op(g, t, 2, 1, 1e-3), (gy, x),
                                        eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id in ("reference", "cpu")])
def test_r1_through_a_critic_matches_reference(backend):
    """Second-order use: R1 penalty gradient w.r.t. the critic's weights."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    head = torch.nn.Linear(5 * 5 * 5, 1, dtype=torch.float64)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)

    def r1_grads(name):
        with backends.use(name):
            xr = x.clone().requires_grad_(True)
            h = minibatch_stddev(torch.nn.functional.leaky_relu(conv(xr), 0.2), 3)
            out = head(h.flatten(1)).sum()
            (g,) = torch.autograd.grad(out, xr, create_graph=True)
            # (head.bias does not affect d out / d x, so it is left out)
            return torch.autograd.grad(g.square().sum(), list(conv.parameters()) + [head.weight])

    for a, b in zip(r1_grads(backend), r1_grads("reference")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- custom-op contract
@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id in ("reference", "cpu")])
def test_opcheck(backend):
    x = torch.randn(6, 4, 3, 2, requires_grad=True)
    gy = torch.randn(6, 6, 3, 2)
    with backends.use(backend):
        torch.library.opcheck(minibatch_std_op, (x, 3, 2, 1e-8))
        torch.library.opcheck(minibatch_std_backward_op, (gy, x.detach(), 3, 2, 1e-8))
        torch.library.opcheck(minibatch_std_backward_op,
                              (gy.requires_grad_(True), x.detach().requires_grad_(True), 3, 2, 1e-8))


# ---------------------------------------------------------------- errors
def test_batch_not_divisible_names_sizes_and_options():
    with pytest.raises(ValueError, match=r"N=6.*G=4.*\[1, 2, 3, 6\]"):
        minibatch_stddev(torch.randn(6, 3, 2, 2), group_size=4)


def test_channels_not_divisible_names_sizes_and_options():
    with pytest.raises(ValueError, match=r"C=6.*F=4.*\[1, 2, 3, 6\]"):
        minibatch_stddev(torch.randn(4, 6, 2, 2), group_size=2, num_channels=4)


def test_not_4d():
    with pytest.raises(ValueError, match=r"4-D.*\(4, 6, 2\)"):
        minibatch_stddev(torch.randn(4, 6, 2), group_size=2)


def test_integer_tensor():
    with pytest.raises(TypeError, match=r"floating-point.*torch.int64"):
        minibatch_stddev(torch.arange(16).reshape(2, 2, 2, 2), group_size=2)


def test_bad_arguments():
    x = torch.randn(4, 2, 2, 2)
    with pytest.raises(ValueError, match="group_size"):
        minibatch_stddev(x, group_size=0)
    with pytest.raises(ValueError, match="num_channels"):
        minibatch_stddev(x, group_size=2, num_channels=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        minibatch_stddev(np.zeros((4, 2, 2, 2)), group_size=2)


def test_cpu_kernel_checks_its_arguments():
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip(f"cpu backend unavailable: {backends.why_not(OP, 'cpu')}")
    with pytest.raises(RuntimeError, match="divide the batch N=6"):
        torch.ops.fastgan_C.minibatch_std_forward(torch.randn(6, 2, 2, 2), 4, 1, 1e-8)
    with pytest.raises(RuntimeError, match=r"grad must have shape .* = \[6, 3, 2, 2\], got \[6, 2, 2, 2\]"):
        torch.ops.fastgan_C.minibatch_std_backward(torch.randn(6, 2, 2, 2), torch.randn(6, 2, 2, 2), 3, 1, 1e-8)


# ---------------------------------------------------------------- torch.compile
def test_compiled_critic_matches_eager():
    torch.manual_seed(3)
    critic = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LeakyReLU(0.2),
        L.MinibatchStdDev(group_size=2, num_channels=1),
        torch.nn.Conv2d(9, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 1))
    x = torch.randn(4, 3, 5, 5)

    def loss_and_grads(model):
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        grads = torch.autograd.grad(out.sum(), [xr] + list(critic.parameters()))
        return out, grads

    torch._dynamo.reset()
    compiled = torch.compile(critic, fullgraph=True)
    out_c, grads_c = loss_and_grads(compiled)
    out_e, grads_e = loss_and_grads(critic)
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("eps", [-1.0, float("nan"), float("inf")])
def test_bad_eps_is_rejected(eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        L.MinibatchStdDev(2, eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        FG.minibatch_stddev(torch.randn(4, 2, 3, 3), 2, eps=eps)
