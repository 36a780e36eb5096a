"""The fused gradient-norm reduction (fastgan::grad_norm_penalty and its backward op):
the formula against a hand-written autograd version, every backend against the
reference, zero gradients, reduced precision, gradcheck / gradgradcheck and opcheck."""
import pytest
import torch

from conftest import backend_params
from fastgan import backends
from fastgan.ops import grad_norm as gn
from fastgan.reference import grad_norm as ref

OP = "grad_norm"

# Odd and prime sizes; (3, 5, 67, 71) has 23785 elements per sample, more than one CPU
# chunk (16384), so per-sample partials are combined; (1, 300) and (13,) are the
# one-sample and one-element-per-sample edges.
SHAPES = [(5, 3, 7, 11), (1, 300), (13,), (3, 1, 1, 1), (2, 17, 31), (3, 5, 67, 71)]
SMALL_SHAPES = SHAPES[:5]  # for the Triton interpreter (slow per program)
CENTERS = [0.0, 1.0, 0.7]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.float16: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=1e-5, atol=1e-6)}
# The backward output is rounded to the gradient's dtype: one rounding step apart at most.
OUT_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
           torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4)}


def naive_penalty(g, center):
    """Hand-written: mean_i (||g_i|| - c)^2 with torch's own norm (autograd does the rest)."""
    return (g.reshape(g.shape[0], -1).norm(dim=1) - center).square().mean()


def device_for(backend):
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def shapes_for(backend):
    return SMALL_SHAPES if backend == "triton" and device_for(backend) == "cpu" else SHAPES


def heap_poison(like):
    """Allocate-and-free a NaN tensor of like's size so that an output the kernel
    allocates next tends to reuse NaN-filled memory: unwritten elements would show."""
    torch.full((max(like.numel(), 1),), float("nan"), dtype=like.dtype, device=like.device)


# ---------------------------------------------------------------- the formula
@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("shape", [(5, 3, 7, 11), (13,), (2, 17, 31)])
def test_reference_pins_the_formula(shape, center):
    g = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    want = naive_penalty(g, center)
    got = ref.grad_norm_penalty(g, center)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    go = torch.tensor(1.37, dtype=torch.float64)
    (want_dg,) = torch.autograd.grad(want, g, go, create_graph=True)
    got_dg = ref.grad_norm_penalty_backward(go, g, center)
    torch.testing.assert_close(got_dg, want_dg, rtol=1e-13, atol=1e-13)
    # Second order: the double backward that WGAN-GP sends through the critic.
    v = torch.randn_like(g)
    (want_h,) = torch.autograd.grad(want_dg, g, v)
    (got_h,) = torch.autograd.grad(got_dg, g, v)
    torch.testing.assert_close(got_h, want_h, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("center", CENTERS)
def test_public_function_pins_the_formula(center):
    g = torch.randn(6, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    want = naive_penalty(g, center)
    got = gn.gradient_norm_penalty(g, center)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    (want_dg,) = torch.autograd.grad(want, g, create_graph=True)
    (got_dg,) = torch.autograd.grad(got, g, create_graph=True)
    torch.testing.assert_close(got_dg, want_dg, rtol=1e-13, atol=1e-13)
    v = torch.randn_like(g)
    torch.testing.assert_close(torch.autograd.grad(got_dg, g, v)[0], torch.autograd.grad(want_dg, g, v)[0],
                               rtol=1e-11, atol=1e-11)


def test_center_default_is_one():
    g = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(gn.gradient_norm_penalty(g), naive_penalty(g, 1.0))


# ---------------------------------------------------------------- every backend
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("center", CENTERS)
@pytest.mark.parametrize("backend", backend_params(OP))
def test_backend_matches_reference(backend, center, dtype):
    device = device_for(backend)
    for shape in shapes_for(backend):
        g = torch.randn(shape, dtype=dtype, device=device)
        if shape[0] > 2:
            g[1] = 0  # a zero sample among ordinary ones
        want_pen = ref.grad_norm_penalty(g, center)
        gr = g.clone().requires_grad_(True)
        heap_poison(g)
        with backends.use(backend):
            pen = gn.gradient_norm_penalty(gr, center)
            heap_poison(g)
            (dg,) = torch.autograd.grad(pen, gr, torch.tensor(1.7, dtype=pen.dtype, device=device))
        assert pen.dtype == ref.acc_dtype(dtype) and pen.shape == ()
        assert dg.dtype == dtype and dg.shape == g.shape
        torch.testing.assert_close(pen, want_pen, **TOL[dtype], msg=lambda m: f"{shape}: {m}")
        want_dg = ref.grad_norm_penalty_backward(torch.tensor(1.7, dtype=pen.dtype, device=device), g, center)
        torch.testing.assert_close(dg, want_dg, **OUT_TOL[dtype], msg=lambda m: f"{shape}: {m}")


@pytest.mark.parametrize("backend", backend_params(OP))
def test_backend_kernels_with_poisoned_buffers(backend):
    """The kernels' own entry points: sums of squares per sample, and the backward's
    output (for Triton written into a NaN-filled buffer we pass, and with chunks small
    enough that every sample is cut into several)."""
    device = device_for(backend)
    impl = backends._registry[OP][backend].impl
    g = torch.randn(4, 3, 37, 29, device=device)
    with backends.use(backend):
        pen, sumsq = impl.forward(g, 1.0)
    torch.testing.assert_close(sumsq, ref.sum_of_squares(g), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pen, ref.grad_norm_penalty(g, 1.0), rtol=1e-5, atol=1e-6)
    go = torch.tensor(0.9, device=device)
    want = ref.grad_norm_penalty_backward(go, g, 1.0)
    if backend == "triton":
        from fastgan.kernels import grad_norm as k
        # chunk = 2 blocks: each 3219-element sample spans many programs, each looping twice.
        pen2, sumsq2 = k.forward(g, 1.0, block=64, chunk=128)
        torch.testing.assert_close(sumsq2, ref.sum_of_squares(g), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pen2, pen, rtol=1e-5, atol=1e-6)
        out = torch.full_like(g, float("nan"))
        got = k.backward(go, g, sumsq2, 1.0, block=64, chunk=128, out=out)
        assert got.data_ptr() == out.data_ptr()
    else:
        heap_poison(g)
        got = impl.backward(go, g, sumsq, 1.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params(OP))
def test_non_contiguous_and_zero_size(backend):
    device = device_for(backend)
    base = torch.randn(7, 6, 5, device=device)
    g = base.transpose(1, 2)  # [7, 5, 6], not contiguous
    with backends.use(backend):
        pen = gn.gradient_norm_penalty(g, 1.0)
        empty = gn.gradient_norm_penalty(torch.randn(3, 0, device=device), 0.5)
    torch.testing.assert_close(pen, naive_penalty(g, 1.0), rtol=1e-5, atol=1e-6)
    # No elements per sample: every norm is 0, penalty = center^2.
    torch.testing.assert_close(empty, torch.tensor(0.25, device=device))


# ---------------------------------------------------------------- zero gradients
@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("backend", backend_params(OP))
def test_zero_gradient_is_finite(backend, center):
    """sqrt has no derivative at 0: with g_i = 0 the penalty, its gradient and its
    second derivative stay finite (the subgradient 0), never NaN."""
    device = device_for(backend)
    g = torch.randn(4, 3, 5, dtype=torch.float64 if backend != "triton" or device == "cpu" else torch.float32,
                    device=device)
    g[0] = 0
    for grad in (g, torch.zeros_like(g)):
        grad = grad.clone().requires_grad_(True)
        with backends.use(backend):
            pen = gn.gradient_norm_penalty(grad, center)
            (dg,) = torch.autograd.grad(pen, grad, create_graph=True)
            (h,) = torch.autograd.grad(dg.square().sum(), grad)
        assert torch.isfinite(pen) and torch.isfinite(dg).all() and torch.isfinite(h).all()
        assert (dg[0] == 0).all()
        expect = ref.grad_norm_penalty(grad.detach(), center)
        torch.testing.assert_close(pen, expect)


# ---------------------------------------------------------------- reduced precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params(OP))
def test_half_accumulates_in_float32(backend, dtype):
    """Squares that overflow float16 (100^2 * 4099 > 65504) and ones that underflow it
    (1e-4^2 < 6e-8) both come out right: the sum is kept in float32."""
    device = device_for(backend)
    big = torch.full((3, 4099), 100.0, dtype=dtype, device=device) * (1 + 0.01 * torch.rand(3, 4099, device=device)).to(dtype)
    tiny = (1e-4 * (1 + torch.rand(2, 4099, device=device))).to(dtype)
    for g in (big, tiny):
        with backends.use(backend):
            pen = gn.gradient_norm_penalty(g, 0.0)
        assert pen.dtype == torch.float32 and torch.isfinite(pen) and pen > 0
        want = g.double().square().sum(1).mean()
        torch.testing.assert_close(pen.double(), want, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- autograd checks
def _gradcheck_input(backend):
    device = device_for(backend)
    # float64 everywhere (Triton too: its fp64 path), a prime-ish shape.
    return torch.randn(4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)


@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("backend", backend_params(OP))
def test_gradcheck_and_gradgradcheck(backend, center):
    g = _gradcheck_input(backend)
    with backends.use(backend):
        fn = lambda x: gn.gradient_norm_penalty(x, center)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (g,))
        assert torch.autograd.gradgradcheck(fn, (g,))


@pytest.mark.parametrize("backend", backend_params(OP))
def test_opcheck_both_ops(backend):
    device = device_for(backend)
    g = torch.randn(5, 3, 4, device=device, requires_grad=True)
    with backends.use(backend):
        for center in (0.0, 1.0):
            torch.library.opcheck(gn.grad_norm_penalty_op, (g, center))
            _, sumsq = gn.grad_norm_penalty_op(g.detach(), center)
            go = torch.tensor(1.3, device=device, requires_grad=True)
            torch.library.opcheck(gn.grad_norm_penalty_backward_op, (go, g, sumsq, center))


def test_sumsq_output_is_not_differentiable():
    g = torch.randn(3, 4, requires_grad=True)
    pen, sumsq = gn.grad_norm_penalty_op(g, 1.0)
    assert pen.requires_grad and not sumsq.requires_grad


# ---------------------------------------------------------------- determinism, errors
@pytest.mark.parametrize("backend", [p for p in backend_params(OP) if p.id == "cpu"])
def test_cpu_result_does_not_depend_on_threads(backend):
    g = torch.randn(3, 5, 67, 71)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with backends.use("cpu"):
            one = gn.grad_norm_penalty_op(g, 1.0)
        torch.set_num_threads(max(2, threads))
        with backends.use("cpu"):
            many = gn.grad_norm_penalty_op(g, 1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_clear_errors():
    with pytest.raises(ValueError, match="at least one sample"):
        gn.gradient_norm_penalty(torch.tensor(3.0))
    with pytest.raises(ValueError, match="at least one sample"):
        gn.gradient_norm_penalty(torch.randn(0, 4))
    with pytest.raises(TypeError, match="floating-point"):
        gn.gradient_norm_penalty(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        gn.gradient_norm_penalty([1.0, 2.0])
    with pytest.raises(TypeError, match="center must be a number"):
        gn.gradient_norm_penalty(torch.randn(3, 4), center="one")


@pytest.mark.parametrize("backend", [p for p in backend_params(OP) if p.id == "cpu"])
def test_cpu_kernel_rejects_a_wrong_sumsq(backend):
    g = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="sumsq must be the forward's"):
        torch.ops.fastgan_C.grad_norm_backward(torch.tensor(1.0), g, torch.ones(4), 1.0)
    with pytest.raises(RuntimeError, match="sumsq must be the forward's"):
        torch.ops.fastgan_C.grad_norm_backward(torch.tensor(1.0), g, torch.ones(3, dtype=torch.float64), 1.0)


def test_triton_aot_specs_describe_the_kernels():
    triton = pytest.importorskip("triton")  # noqa: F841
    from fastgan.kernels import grad_norm as k
    specs = k.aot_specs()
    names = [s["name"] for s in specs]
    assert len(names) == len(set(names))
    kernels = {s["fn"] for s in specs}
    assert kernels == {k._grad_norm_sumsq_kernel, k._grad_norm_finalize_kernel, k._grad_norm_scale_kernel}
    for s in specs:
        assert list(s["signature"]) == list(s["fn"].arg_names)
        for arg, ty in s["signature"].items():
            assert (ty == "constexpr") == (arg in s["constexprs"])
    dtypes = {s["signature"]["g_ptr"] for s in specs if s["fn"] is k._grad_norm_sumsq_kernel}
    assert dtypes == {"*fp32", "*fp16", "*bf16", "*fp64"}


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", [p for p in backend_params(OP) if p.id == "cpu"])
def test_cpu_backward_store_paths(backend, dtype, stream, monkeypatch):
    """The CPU backward writes large outputs with streaming (non-temporal) stores; force
    each path on a small input whose samples start unaligned (D odd) so the scalar head,
    the 32-byte body and the tail all run."""
    monkeypatch.setenv("FASTGAN_CPU_STREAM_STORES", stream)
    g = torch.randn(5, 3, 67, 71, dtype=dtype)  # D = 14271: odd, one chunk per sample
    g2 = torch.randn(3, 5, 67, 71, dtype=dtype)  # D = 23785: two chunks per sample
    for x in (g, g2):
        _, sumsq = torch.ops.fastgan_C.grad_norm_forward(x, 0.7)
        go = torch.tensor(1.1, dtype=sumsq.dtype)
        heap_poison(x)
        got = torch.ops.fastgan_C.grad_norm_backward(go, x, sumsq, 0.7)
        torch.testing.assert_close(got, ref.grad_norm_penalty_backward(go, x, 0.7), **OUT_TOL[dtype])
