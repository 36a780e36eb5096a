"""fastgan ConvTranspose2d / conv_transpose2d: drop-in conformance with nn.ConvTranspose2d,
the fused epilogue, gradients (first and second order), every backend against the
reference, dtypes, layouts, autocast and the errors."""
import math
import random
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.functional as FG
import fastgan.layers as L
from fastgan import backends
from fastgan.ops import conv_transpose as ops
from fastgan.reference import conv_transpose as ref

from conftest import backend_params

OP = "conv_transpose"
ACTS = [None, "linear", "relu", "lrelu", "tanh", "sigmoid"]


def _dtype_for(backend):
    """float64 where the backend takes it (reference-exact), else float32."""
    probe = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    w = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    if backends.why_not(OP, backend, probe, w, [1, 1], [0, 0], [0, 0], 1, [1, 1]) is None:
        return torch.float64
    return torch.float32


def _tol(dtype):
    return {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-4),
            torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}[dtype]


def _random_config(rng, general=0.4):
    """A random valid nn.ConvTranspose2d configuration (non-square kernels, strides,
    paddings, output paddings < max(stride, dilation), dilations, groups); with probability
    1 - general it is in the fast kernels' domain (groups = 1, dilation = 1)."""
    fast = rng.random() >= general
    while True:
        groups = 1 if fast else rng.choice([1, 2, 3])
        cin = groups * rng.randint(1, 3)
        cout = groups * rng.randint(1, 3)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (1, 1) if fast else (rng.choice([1, 1, 2]), rng.choice([1, 1, 3]))
        p = (rng.randint(0, 2), rng.randint(0, 2))
        op = (rng.randint(0, max(s[0], d[0]) - 1), rng.randint(0, max(s[1], d[1]) - 1))
        H, W = rng.randint(1, 6), rng.randint(1, 7)
        Ho = (H - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + op[0] + 1
        Wo = (W - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + op[1] + 1
        if Ho > 0 and Wo > 0:
            return dict(cin=cin, cout=cout, k=k, s=s, d=d, p=p, op=op, groups=groups, H=H, W=W,
                        N=rng.choice([0, 1, 2, 3]) if rng.random() < 0.9 else 0, bias=rng.random() < 0.8,
                        unbatched=rng.random() < 0.2, use_output_size=rng.random() < 0.3)


def _pair_of_modules(cfg, dtype, **epi):
    kw = dict(stride=cfg["s"], padding=cfg["p"], output_padding=cfg["op"], groups=cfg["groups"],
              bias=cfg["bias"], dilation=cfg["d"], dtype=dtype)
    ours = L.ConvTranspose2d(cfg["cin"], cfg["cout"], cfg["k"], **kw, **epi)
    theirs = nn.ConvTranspose2d(cfg["cin"], cfg["cout"], cfg["k"], **kw)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _grads(y, tensors, g):
    return torch.autograd.grad(y, tensors, g, allow_unused=True)


# ---------------------------------------------------------------- conformance sweep
@pytest.mark.parametrize("backend", backend_params(OP))
def test_conformance_sweep(backend):
    """Random valid configurations against nn.ConvTranspose2d: outputs and the gradients
    of input, weight and bias. Configurations a forced backend does not cover must raise
    BackendUnavailable naming the reason, and run under auto (reference fallback)."""
    rng = random.Random(5)
    dtype = _dtype_for(backend)
    n_cases = 40 if backend in ("reference", "cpu") else 8
    covered = 0
    for _ in range(n_cases):
        cfg = _random_config(rng, general=0.6 if backend == "reference" else 0.25)
        N = max(cfg["N"], 1) if cfg["unbatched"] else cfg["N"]
        ours, theirs = _pair_of_modules(cfg, dtype)
        shape = (cfg["cin"], cfg["H"], cfg["W"]) if cfg["unbatched"] else (N, cfg["cin"], cfg["H"], cfg["W"])
        x = torch.randn(shape, dtype=dtype, requires_grad=True)
        output_size = None
        if cfg["use_output_size"]:
            # a size inside the module's valid range [min, min + stride - 1]
            Ho = ((cfg["H"] - 1) * cfg["s"][0] - 2 * cfg["p"][0] + cfg["d"][0] * (cfg["k"][0] - 1) + 1
                  + min(cfg["op"][0], cfg["s"][0] - 1))
            Wo = ((cfg["W"] - 1) * cfg["s"][1] - 2 * cfg["p"][1] + cfg["d"][1] * (cfg["k"][1] - 1) + 1
                  + min(cfg["op"][1], cfg["s"][1] - 1))
            output_size = [Ho, Wo]
            theirs.output_padding = ours.output_padding = (0, 0)
        x4 = x.unsqueeze(0) if cfg["unbatched"] else x
        reason = backends.why_not(OP, backend, x4, ours.weight, list(cfg["s"]), list(cfg["p"]),
                                  list(cfg["op"]), cfg["groups"], list(cfg["d"]))
        if reason is not None:
            with backends.use(backend), pytest.raises(backends.BackendUnavailable, match=re.escape(reason)):
                ours(x, output_size=output_size)
            continue
        covered += 1
        with backends.use(backend):
            y = ours(x, output_size=output_size)
        ye = theirs(x, output_size=output_size)
        assert y.shape == ye.shape and y.dtype == ye.dtype
        torch.testing.assert_close(y, ye, **_tol(dtype))
        if y.numel() == 0:
            continue
        g = torch.randn_like(ye)
        params = [x, ours.weight] + ([ours.bias] if cfg["bias"] else [])
        params_e = [x, theirs.weight] + ([theirs.bias] if cfg["bias"] else [])
        with backends.use(backend):
            got = _grads(y, params, g)
        want = _grads(ye, params_e, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **_tol(dtype))
    assert covered >= (n_cases // 3), f"only {covered} of {n_cases} configurations ran on {backend}"


@pytest.mark.parametrize("backend", backend_params(OP))
def test_dcgan_shapes_and_chunking(backend):
    """k=4 s=2 p=1 and k=4 s=1 p=0 from a 1x1 input (the DCGAN layers), with batches that
    span several internal chunks of the CPU kernel, odd channel counts."""
    dtype = _dtype_for(backend)
    cases = [(9, 5, 64, 8, 4, 2, 1, "relu"), (7, 3, 5, 16, 4, 2, 1, "tanh"), (5, 7, 13, 1, 4, 1, 0, "lrelu"),
             (3, 4, 3, 5, 3, 2, 1, "sigmoid")]
    if backend not in ("reference", "cpu"):
        # smaller under the Triton interpreter (and quick on a GPU)
        cases = [(2, 5, 7, 4, 4, 2, 1, "relu"), (2, 3, 3, 6, 4, 2, 1, "tanh"), (3, 7, 13, 1, 4, 1, 0, "lrelu")]
    for (N, cin, cout, H, k, s, p, act) in cases:
        x = torch.randn(N, cin, H, H, dtype=dtype, requires_grad=True)
        w = (torch.randn(cin, cout, k, k, dtype=dtype) / math.sqrt(cin * k)).requires_grad_()
        b = torch.randn(cout, dtype=dtype, requires_grad=True)
        with backends.use(backend):
            y = FG.conv_transpose2d(x, w, b, s, p, activation=act)
        ye = ref.conv_transpose2d(x, w, b, s, p, activation=act)
        torch.testing.assert_close(y, ye, **_tol(dtype))
        g = torch.randn_like(ye)
        with backends.use(backend):
            got = _grads(y, [x, w, b], g)
        for a, e in zip(got, _grads(ye, [x, w, b], g)):
            torch.testing.assert_close(a, e, **_tol(dtype))


# ---------------------------------------------------------------- epilogue
EPILOGUES = [(act, gain, clamp, slope)
             for act in ACTS
             for gain, clamp in [(1.0, None), (math.sqrt(2), None), (1.7, 0.4), (-0.6, None), (0.0, None),
                                 (-1.3, 0.5)]
             for slope in ([0.2, 0.0, -0.3] if act == "lrelu" else [0.2])]


@pytest.mark.parametrize("backend", backend_params(OP))
def test_epilogue_all_activations(backend):
    """Every activation x gain (including negative and zero) x clamp against the reference,
    output and all three gradients; lrelu also with slope 0 and a negative slope (where the
    backward saves the pre-activation)."""
    dtype = _dtype_for(backend)
    # every case on the reference and the C++ kernel; every 5th under the Triton interpreter
    cases = EPILOGUES if backend in ("reference", "cpu") else EPILOGUES[::5]
    for act, gain, clamp, slope in cases:
        x = torch.randn(2, 3, 5, 4, dtype=dtype, requires_grad=True)
        w = torch.randn(3, 4, 3, 4, dtype=dtype, requires_grad=True)
        b = torch.randn(4, dtype=dtype, requires_grad=True)
        kw = dict(activation=act, negative_slope=slope, gain=gain, clamp=clamp)
        with backends.use(backend):
            y = FG.conv_transpose2d(x, w, b, 2, 1, 1, **kw)
        ye = ref.conv_transpose2d(x, w, b, 2, 1, 1, **kw)
        msg = f"{act} gain={gain} clamp={clamp} slope={slope}"
        torch.testing.assert_close(y, ye, **_tol(dtype), msg=msg)
        if clamp is not None:
            assert y.abs().max() <= clamp
        g = torch.randn_like(ye)
        with backends.use(backend):
            got = _grads(y, [x, w, b], g)
        for a, e in zip(got, _grads(ye, [x, w, b], g)):
            torch.testing.assert_close(a, e, **_tol(dtype), msg=msg)


def test_default_epilogue_equals_conv_transpose2d():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    torch.testing.assert_close(FG.conv_transpose2d(x, w, b, 2, 1, 1), F.conv_transpose2d(x, w, b, 2, 1, 1),
                               rtol=1e-12, atol=1e-12)


def test_clamp_gradient_matches_torch_clamp_everywhere():
    """Where the clamp is active the gradient is zero; the saved tensor is the unclamped
    output, so values exactly at the bound keep torch.clamp's gradient."""
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    kw = dict(activation="lrelu", gain=math.sqrt(2), clamp=1.0)
    y = FG.conv_transpose2d(x, w, None, 2, 1, **kw)
    assert (y.abs() == 1.0).float().mean() > 0.2  # the clamp is really active
    g = torch.randn_like(y)
    for a, e in zip(_grads(y, [x, w], g), _grads(ref.conv_transpose2d(x, w, None, 2, 1, **kw), [x, w], g)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- gradcheck / gradgradcheck
# Tiny shapes: gradgradcheck perturbs every element. The full (slow-mode) check runs on
# the first case; the others use gradcheck's fast mode (random projections).
GRADCHECK_CASES = [
    dict(stride=2, padding=1, output_padding=1, activation="tanh", gain=1.3, clamp=0.7),
    dict(stride=(2, 1), padding=(1, 0), activation="lrelu", negative_slope=0.2, gain=math.sqrt(2)),
    dict(stride=1, padding=0, activation="sigmoid", gain=-0.8),
    dict(stride=3, padding=1, output_padding=2, activation="relu"),
    dict(stride=2, padding=1, activation="lrelu", negative_slope=-0.4, clamp=0.9),
    dict(stride=2, padding=0, groups=2, dilation=2, activation="tanh"),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradcheck_and_gradgradcheck(case):
    torch.manual_seed(3)
    groups = case.get("groups", 1)
    x = torch.randn(2, groups, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(groups, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2 * groups, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return FG.conv_transpose2d(x, w, b, **case)

    fast = case is not GRADCHECK_CASES[0]
    assert torch.autograd.gradcheck(f, (x, w, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=fast)


def test_gradgradcheck_input_and_weight_only():
    """Double backward with respect to input and weight alone (bias frozen / absent)."""
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64)

    def f(x, w):
        return FG.conv_transpose2d(x, w, b, 2, 1, activation="tanh", gain=2.0)

    assert torch.autograd.gradgradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: FG.conv_transpose2d(x, w, None, 2, 1), (x, w),
                                        fast_mode=True)


def test_partial_gradients():
    """Only the gradients asked for are computed; each equals the reference."""
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = FG.conv_transpose2d(x, w, b, 2, 1, activation="relu")
    ye = ref.conv_transpose2d(x, w, b, 2, 1, activation="relu")
    g = torch.randn_like(y)
    for t, te in [(x, x), (w, w), (b, b)]:
        (a,) = torch.autograd.grad(y, [t], g, retain_graph=True)
        (e,) = torch.autograd.grad(ye, [te], g, retain_graph=True)
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- opcheck
def test_opcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for act, gain, clamp, slope in [("tanh", 1.5, None, 0.2), ("lrelu", math.sqrt(2), 0.8, 0.2),
                                    ("lrelu", 1.0, None, -0.2), ("linear", 1.0, None, 0.2)]:
        args = (x, w, b, [2, 2], [1, 1], [1, 0], 1, [1, 1], act, slope, gain, clamp)
        torch.library.opcheck(ops.conv_transpose2d_op, args)
        y, saved = ops.conv_transpose2d_op(*args)
        mode = ref.save_mode(act, slope, gain, clamp)
        t = y.detach() if mode == ref.SAVE_OUTPUT else saved
        gy = torch.randn_like(y, requires_grad=True)
        bargs = (gy, x, w, b, t, mode, [2, 2], [1, 1], [1, 0], 1, [1, 1], act, slope, gain, clamp,
                 [True, True, True])
        torch.library.opcheck(ops.conv_transpose2d_backward_op, bargs)
    # channels_last input (output layout must match the fake)
    xc = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(ops.conv_transpose2d_op, (xc, w, b, [2, 2], [1, 1], [0, 0], 1, [1, 1], "relu", 0.2,
                                                    1.0, None))


# ---------------------------------------------------------------- module drop-in
def test_state_dict_round_trip_and_same_init():
    torch.manual_seed(11)
    ours = L.ConvTranspose2d(6, 4, (3, 5), stride=2, padding=(1, 2), groups=2, activation="lrelu",
                             gain=math.sqrt(2))
    torch.manual_seed(11)
    theirs = nn.ConvTranspose2d(6, 4, (3, 5), stride=2, padding=(1, 2), groups=2)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)  # same seed -> same initialisation
    fresh = nn.ConvTranspose2d(6, 4, (3, 5), stride=2, padding=(1, 2), groups=2)
    fresh.load_state_dict(ours.state_dict())
    back = L.ConvTranspose2d(6, 4, (3, 5), stride=2, padding=(1, 2), groups=2)
    back.load_state_dict(theirs.state_dict())
    assert torch.equal(fresh.weight, ours.weight) and torch.equal(back.bias, theirs.bias)
    assert isinstance(ours, nn.ConvTranspose2d)
    assert "activation='lrelu'" in repr(ours) and "gain=" in repr(ours)


def test_constructor_arguments_like_pytorch():
    m = L.ConvTranspose2d(4, 6, 3, stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, bias=False,
                          dilation=(1, 2), dtype=torch.float64)
    e = nn.ConvTranspose2d(4, 6, 3, stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, bias=False,
                           dilation=(1, 2), dtype=torch.float64)
    assert m.weight.shape == e.weight.shape and m.bias is None and m.weight.dtype == torch.float64
    for bad in [dict(groups=4), dict(padding_mode="nope")]:
        with pytest.raises(ValueError) as ours_err:
            L.ConvTranspose2d(4, 6, 3, **bad)
        with pytest.raises(ValueError) as their_err:
            nn.ConvTranspose2d(4, 6, 3, **bad)
        assert str(ours_err.value) == str(their_err.value)


def test_output_size_range_error_names_range():
    m = L.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    e = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 5, 5)
    for size in [(9, 9), (10, 10)]:
        assert m(x, output_size=size).shape[-2:] == torch.Size(size)
    with pytest.raises(ValueError) as ours:
        m(x, output_size=(12, 9))
    with pytest.raises(ValueError) as theirs:
        e(x, output_size=(12, 9))
    assert str(ours.value) == str(theirs.value)
    assert "9" in str(ours.value) and "10" in str(ours.value)  # names the valid range


def test_padding_mode_error_like_pytorch():
    m = L.ConvTranspose2d(3, 2, 3)
    m.padding_mode = "reflect"
    e = nn.ConvTranspose2d(3, 2, 3)
    e.padding_mode = "reflect"
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError) as ours:
        m(x)
    with pytest.raises(ValueError) as theirs:
        e(x)
    assert str(ours.value) == str(theirs.value)


def test_errors():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        FG.conv_transpose2d(x, w, activation="swish")
    with pytest.raises(ValueError, match="clamp must be a non-negative"):
        FG.conv_transpose2d(x, w, clamp=-1.0)
    with pytest.raises(ValueError, match="gain must be a finite"):
        FG.conv_transpose2d(x, w, gain=float("nan"))
    # PyTorch's own messages for shapes and argument ranges
    for args, kwargs in [((torch.randn(1, 5, 4, 4), w), {}), ((torch.randn(4, 4), w), {}),
                         ((x, w, torch.randn(5)), {}), ((x, w), dict(stride=2, output_padding=2)),
                         ((x, w), dict(stride=0))]:
        with pytest.raises(RuntimeError) as ours:
            FG.conv_transpose2d(*args, **kwargs)
        with pytest.raises(RuntimeError) as theirs:
            F.conv_transpose2d(*args, **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_cpu_kernel_errors():
    pytest.importorskip("fastgan._C")
    if not hasattr(torch.ops.fastgan_C, "conv_transpose_forward"):
        pytest.skip("the extension has no conv_transpose kernel")
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(3, 3, 3, 3)
    with pytest.raises(RuntimeError, match="expects input with 3 channels"):
        torch.ops.fastgan_C.conv_transpose_forward(x, w, None, [1, 1], [0, 0], [0, 0], 0, 0.2, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="act code must be 0..4"):
        torch.ops.fastgan_C.conv_transpose_forward(x, torch.randn(4, 3, 3, 3), None, [1, 1], [0, 0], [0, 0], 7,
                                                   0.2, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="output_padding must be smaller than stride"):
        torch.ops.fastgan_C.conv_transpose_forward(x, torch.randn(4, 3, 3, 3), None, [2, 2], [0, 0], [2, 0], 0,
                                                   0.2, 1.0, -1.0)


def test_auto_falls_back_with_one_warning():
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable: nothing to fall back from")
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    backends._warned.discard((OP, "cpu", "the fast kernels cover groups=1 only (got groups=2)"))
    with pytest.warns(RuntimeWarning, match="groups=1 only"):
        y = FG.conv_transpose2d(x, w, groups=2)
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, groups=2))
    with backends.use("cpu"), pytest.raises(backends.BackendUnavailable, match="groups=1 only"):
        FG.conv_transpose2d(x, w, groups=2)


def test_backends_report_reason_when_missing():
    for name in ("cuda", "triton"):
        reason = backends.why_not(OP, name)
        assert reason is None or isinstance(reason, str) and reason


# ---------------------------------------------------------------- dtypes, layout, autocast
@pytest.mark.parametrize("backend", backend_params(OP))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_float64(backend, dtype):
    x64 = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    w64 = torch.randn(8, 5, 4, 4, dtype=torch.float64) / 8
    b64 = torch.randn(5, dtype=torch.float64)
    x, w, b = (t.to(dtype).requires_grad_() for t in (x64, w64, b64))
    if backends.why_not(OP, backend, x, w, [2, 2], [1, 1], [0, 0], 1, [1, 1]) is not None:
        pytest.skip(f"{backend} does not take {dtype}")
    kw = dict(activation="tanh", gain=1.5)
    with backends.use(backend):
        y = FG.conv_transpose2d(x, w, b, 2, 1, **kw)
    assert y.dtype == dtype
    xr, wr, br = (t.detach().to(torch.float64).requires_grad_() for t in (x, w, b))
    ye = ref.conv_transpose2d(xr, wr, br, 2, 1, **kw)
    torch.testing.assert_close(y.to(torch.float64), ye, **_tol(dtype))
    g = torch.randn_like(ye)
    with backends.use(backend):
        got = _grads(y, [x, w, b], g.to(dtype))
    for a, e in zip(got, _grads(ye, [xr, wr, br], g)):
        assert a.dtype == dtype
        scale = e.abs().max().item()
        torch.testing.assert_close(a.to(torch.float64) / scale, e / scale, **_tol(dtype))


def test_cpu_kernel_writes_every_element():
    """The kernel allocates its output: fill freed memory with NaN first so that an
    unwritten element would show up."""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    x = torch.randn(3, 5, 7, 6)
    w = torch.randn(5, 4, 4, 4)
    for _ in range(3):
        junk = torch.full((3, 4, 14, 12), float("nan"))
        del junk
        y = torch.ops.fastgan_C.conv_transpose_forward(x, w, None, [2, 2], [1, 1], [0, 0], 0, 0.2, 1.0, -1.0)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, F.conv_transpose2d(x, w, None, 2, 1), rtol=1e-4, atol=1e-4)


def test_channels_last_layout_like_eager():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    for xx, ww in [(x, w), (x.contiguous(), w.contiguous(memory_format=torch.channels_last))]:
        y = FG.conv_transpose2d(xx, ww, None, 2, 1, activation="relu")
        ye = torch.relu(F.conv_transpose2d(xx, ww, None, 2, 1))
        assert y.is_contiguous(memory_format=torch.channels_last) == ye.is_contiguous(
            memory_format=torch.channels_last)
        assert y.is_contiguous() == ye.is_contiguous()
        torch.testing.assert_close(y, ye, rtol=1e-10, atol=1e-10)
    y = FG.conv_transpose2d(x.contiguous(), w, None, 2, 1)
    assert y.is_contiguous()


def test_autocast_like_nn_conv_transpose():
    m = L.ConvTranspose2d(4, 3, 4, stride=2, padding=1)
    e = nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1)
    e.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        ye = e(x)
    assert y.dtype == ye.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ye.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and m.weight.grad.dtype == torch.float32
    # float64 input stays float64 under autocast, like eager
    x64 = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    m64 = L.ConvTranspose2d(4, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m64(x64).dtype == torch.float64


def test_unbatched_input():
    m = L.ConvTranspose2d(3, 2, 3, stride=2, activation="sigmoid", dtype=torch.float64)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 9, 11)
    torch.testing.assert_close(y, m(x.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("chunk_kb", ["1", "24"])
def test_cpu_kernel_chunking_paths(monkeypatch, chunk_kb):
    """Tiny chunk budgets force many chunks (run in parallel on several threads, with
    per-thread accumulators): sample chunks (channel-major and per-sample products) and
    output-channel chunks, each against the reference, gradients included."""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    monkeypatch.setenv("FASTGAN_CT_CHUNK_KB", chunk_kb)
    cases = [(13, 3, 4, 6, 4, 2, 1, "relu"),     # N*HW >= C_out*k*k: sample chunks, channel-major
             (5, 3, 2, 16, 4, 2, 1, "tanh"),     # H*W >= 256: per-sample products
             (3, 4, 17, 2, 4, 2, 1, "lrelu")]    # N*HW < C_out*k*k: output-channel chunks
    for N, cin, cout, H, k, s, p, act in cases:
        x = torch.randn(N, cin, H, H + 1, dtype=torch.float64, requires_grad=True)
        w = torch.randn(cin, cout, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
        with backends.use("cpu"):
            y = FG.conv_transpose2d(x, w, b, s, p, activation=act)
        ye = ref.conv_transpose2d(x, w, b, s, p, activation=act)
        torch.testing.assert_close(y, ye, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(ye)
        with backends.use("cpu"):
            got = _grads(y, [x, w, b], g)
        for a, e in zip(got, _grads(ye, [x, w, b], g)):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def _cpu_fwd_bwd_against_reference(x, w, b, tol, **kw):
    """fastgan's CPU backend vs the reference: output and the gradients of x, w, b."""
    with backends.use("cpu"):
        y = FG.conv_transpose2d(x, w, b, **kw)
    ye = ref.conv_transpose2d(x, w, b, **kw)
    torch.testing.assert_close(y, ye, **tol)
    g = torch.randn_like(ye)
    with backends.use("cpu"):
        got = _grads(y, [x, w, b], g)
    for a, e in zip(got, _grads(ye, [x, w, b], g)):
        torch.testing.assert_close(a, e, **tol)
    return y.detach(), [t.detach() for t in got]


@pytest.mark.parametrize("act, gain, clamp", [("linear", 1.0, None), ("relu", 1.0, None),
                                              ("lrelu", 2 ** 0.5, 0.7), ("tanh", 1.5, None),
                                              ("sigmoid", 1.0, 0.4), ("linear", 0.5, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpu_library_forward_path(monkeypatch, act, gain, clamp, dtype):
    """Wide mid-sized layers (C_in, C_out >= 16, N*H*W >= 256) run oneDNN's transposed
    convolution on channels-last copies and apply the epilogue while transposing back
    (use_library_forward; float32 takes the 8x8 AVX2 transposes, with channel and pixel
    counts that are not multiples of 8); odd sizes, a non-square kernel and
    output_padding, against the reference."""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    monkeypatch.delenv("FASTGAN_CT_FWD", raising=False)  # the size rule, not a forced path
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    x = torch.randn(3, 16, 9, 11, dtype=dtype, requires_grad=True)
    w = (torch.randn(16, 17, 4, 3, dtype=dtype) / 8).requires_grad_()
    b = torch.randn(17, dtype=dtype, requires_grad=True)
    _cpu_fwd_bwd_against_reference(x, w, b, tol, stride=(2, 3), padding=(1, 1), output_padding=(1, 2),
                                   activation=act, negative_slope=0.2, gain=gain, clamp=clamp)


@pytest.mark.parametrize("path", ["gemm", "dnn", "nchw", "direct"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cpu_every_product_path(monkeypatch, path, dtype):
    """Each way the CPU kernel computes a direction's products (our GEMM + gather, oneDNN
    on channels-last copies, oneDNN on NCHW; for the forward with at most 8 output
    channels also the direct kernel), forced, on odd sizes with a non-square kernel,
    output_padding and an epilogue with gain and clamp, against the reference; also with
    only some gradients needed. (A path that does not apply, like "direct" for 9 output
    channels or for the backward, falls back to the usual choice.)"""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    monkeypatch.setenv("FASTGAN_CT_FWD", path)
    monkeypatch.setenv("FASTGAN_CT_BWD", path)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), activation="lrelu", negative_slope=0.2,
              gain=1.5, clamp=0.8)
    index = ["gemm", "dnn", "nchw", "direct"].index(path)
    for N, cin, cout, H, W in [(3, 5, 7, 6, 5), (2, 17, 3, 9, 4), (2, 3, 1, 1, 7), (1, 4, 9, 5, 3)]:
        x = torch.randn(N, cin, H, W, dtype=dtype, requires_grad=True)
        w = (torch.randn(cin, cout, 4, 3, dtype=dtype) / 4).requires_grad_()
        b = torch.randn(cout, dtype=dtype, requires_grad=True)
        before = torch.ops.fastgan_C.conv_transpose_path_runs()
        _cpu_fwd_bwd_against_reference(x, w, b, tol, **kw)
        after = torch.ops.fastgan_C.conv_transpose_path_runs()
        # the forced path is the one that ran (where it applies)
        if path != "direct" or cout <= 8:
            assert after[index] > before[index], (path, before, after)
        if path != "direct":
            assert after[4 + index] > before[4 + index], (path, before, after)
        for need in ([x], [w], [x, b]):  # partial output masks
            with backends.use("cpu"):
                y = FG.conv_transpose2d(x, w, b, **kw)
            ye = ref.conv_transpose2d(x, w, b, **kw)
            g = torch.randn_like(ye)
            with backends.use("cpu"):
                got = _grads(y, need, g)
            for a, e in zip(got, _grads(ye, need, g)):
                torch.testing.assert_close(a, e, **tol)


def test_cpu_direct_forward_non_finite_like_reference(monkeypatch):
    """The direct kernel reads zero borders and zero runs for missing taps: an infinite
    input gives inf (or NaN where +inf and -inf meet) exactly where the reference does, and
    an infinite weight (which would meet the zero borders) makes it use the GEMM path."""
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    monkeypatch.setenv("FASTGAN_CT_FWD", "direct")
    kw = dict(stride=2, padding=1)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    x[0, 1, 2, 3] = math.inf
    x[1, 4, 0, 6] = -math.inf
    w = torch.rand(5, 3, 3, 3, dtype=torch.float64) + 0.1  # positive: no inf - inf from x; k=3: groups of 1, 2 taps
    b = torch.randn(3, dtype=torch.float64)
    for weight in (w, w.clone().index_put_((torch.tensor([2]), torch.tensor([1]), torch.tensor([0]),
                                            torch.tensor([2])), torch.tensor(math.inf, dtype=torch.float64))):
        with backends.use("cpu"):
            y = FG.conv_transpose2d(x, weight, b, **kw)
        ye = ref.conv_transpose2d(x, weight, b, **kw)
        assert torch.equal(torch.isnan(y), torch.isnan(ye)) and torch.equal(torch.isinf(y), torch.isinf(ye))
        torch.testing.assert_close(y, ye, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert torch.isinf(ye).any()


@pytest.mark.parametrize("backend", backend_params(OP))
def test_nan_and_inf_inputs_propagate_like_the_reference(backend):
    """A NaN or an infinity in the input reaches the output as it does in eager PyTorch:
    relu and the clamp keep NaN (a max(v, 0) written as v > 0 ? v : 0 would turn it into
    0 and hide a diverging run), every activation with and without a clamp."""
    dtype = _dtype_for(backend)
    x = torch.randn(2, 3, 4, 5, dtype=dtype)
    x[0, 1, 2, 3] = math.nan
    x[1, 0, 0, 4] = math.inf
    x[1, 2, 3, 0] = -math.inf
    w = torch.randn(3, 4, 4, 4, dtype=dtype)
    b = torch.randn(4, dtype=dtype)
    for act in ACTS:
        for clamp in (None, 0.7):
            kw = dict(activation=act, gain=1.3, clamp=clamp)
            with backends.use(backend):
                y = FG.conv_transpose2d(x, w, b, 2, 1, **kw)
            ye = ref.conv_transpose2d(x, w, b, 2, 1, **kw)
            assert torch.isnan(ye).any(), "the case must reach the output"
            assert torch.equal(torch.isnan(y), torch.isnan(ye)), f"{act} clamp={clamp}"
            torch.testing.assert_close(y, ye, **_tol(dtype), equal_nan=True, msg=f"{act} clamp={clamp}")


def test_cpu_path_choice_is_timed_once_and_kept(monkeypatch):
    """With the size threshold at 0 every layer's first call times the three paths per
    direction and records the fastest (fastgan.conv_transpose_choices); the result is
    right, and later calls reuse the choice, so they give bitwise the same result."""
    import fastgan
    if backends.why_not(OP, "cpu") is not None:
        pytest.skip("cpu backend unavailable")
    for var in ("FASTGAN_CT_FWD", "FASTGAN_CT_BWD", "FASTGAN_CT_TUNE", "FASTGAN_CT_TUNE_MIN_MFLOP"):
        monkeypatch.delenv(var, raising=False)  # the reset below re-reads the environment
    fastgan.reset_conv_transpose_choices(min_mflop=0)
    try:
        x = torch.randn(3, 6, 5, 7, requires_grad=True)
        w = (torch.randn(6, 5, 4, 4) / 4).requires_grad_()
        b = torch.randn(5, requires_grad=True)
        tol = dict(rtol=1e-4, atol=1e-4)
        torch.manual_seed(1)
        first = _cpu_fwd_bwd_against_reference(x, w, b, tol, stride=2, padding=1, activation="tanh")
        lines = fastgan.conv_transpose_choices()
        geometry = "N=3 Cin=6 Cout=5 in=5x7 out=10x14 k=4x4 s=2x2 p=1x1"
        for direction in ("fwd", "bwd"):
            mine = [line for line in lines if line.startswith(direction) and geometry in line]
            assert len(mine) == 1, lines
            chosen, timings = re.match(r".*: (\w+) \((.*)\)$", mine[0]).groups()
            times = dict(t.rsplit(" ", 2)[:2] for t in timings.split(", "))
            candidates = {"gemm", "dnn", "nchw", "direct"} if direction == "fwd" else {"gemm", "dnn", "nchw"}
            assert set(times) == candidates and chosen in times, mine[0]
            assert float(times[chosen]) == min(float(v) for v in times.values()), mine[0]
        torch.manual_seed(1)
        again = _cpu_fwd_bwd_against_reference(x, w, b, tol, stride=2, padding=1, activation="tanh")
        assert fastgan.conv_transpose_choices() == lines  # nothing timed again
        assert torch.equal(first[0], again[0])
        assert all(torch.equal(a, e) for a, e in zip(first[1], again[1]))
        fastgan.reset_conv_transpose_choices()
        assert fastgan.conv_transpose_choices() == []
        # below the default threshold (50 MFLOP) the fixed rules decide: nothing is timed
        _cpu_fwd_bwd_against_reference(x, w, b, tol, stride=2, padding=1, activation="tanh")
        assert fastgan.conv_transpose_choices() == []
    finally:
        fastgan.reset_conv_transpose_choices()


def test_in_place_ops_on_linear_output_are_legal_like_nn():
    """nn.ConvTranspose2d keeps nothing of its output, so nn.ReLU(inplace=True) or y.add_
    after it are legal; the linear epilogue must not save y either."""
    torch.manual_seed(0)
    ours = L.ConvTranspose2d(3, 4, 3, 2, 1, dtype=torch.float64)
    theirs = torch.nn.ConvTranspose2d(3, 4, 3, 2, 1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    for after in (lambda y: torch.nn.ReLU(inplace=True)(y), lambda y: y.mul_(2).add_(1)):
        grads = []
        for m in (ours, theirs):
            m.zero_grad()
            after(m(x)).square().sum().backward()
            grads.append(m.weight.grad.clone())
        torch.testing.assert_close(grads[0], grads[1])


def test_bad_epilogue_fails_at_construction():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        L.ConvTranspose2d(2, 2, 3, activation="gelu")
    with pytest.raises(ValueError, match="clamp must be a non-negative"):
        L.ConvTranspose2d(2, 2, 3, clamp=-1.0)


@pytest.mark.slow
def test_compile_dynamic_shapes_and_changing_gain():
    """torch.compile(dynamic=True) traces the epilogue's floats symbolically: no graph break."""
    torch._dynamo.reset()
    m = L.ConvTranspose2d(3, 4, 3, 2, 1, activation="lrelu", gain=2 ** 0.5)
    compiled = torch.compile(m, fullgraph=True, dynamic=True)
    for n, size in ((2, 5), (3, 7)):
        x = torch.randn(n, 3, size, size)
        torch.testing.assert_close(compiled(x), m(x))
    f = torch.compile(lambda x, w, g: FG.conv_transpose2d(x, w, gain=g), fullgraph=True)
    x, w = torch.randn(2, 3, 5, 5), torch.randn(3, 4, 3, 3)
    for g in (1.0, 2.0):
        torch.testing.assert_close(f(x, w, g), FG.conv_transpose2d(x, w, gain=g))
