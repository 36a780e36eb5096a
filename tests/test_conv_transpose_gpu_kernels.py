"""The GPU kernels of the transposed convolution (Triton: kernels/conv_transpose.py; CUDA:
csrc/cuda/conv_transpose.cu) against fastgan.reference.conv_transpose in float64.

Triton runs here on CPU tensors under the interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 when there is no CUDA device), at tiny odd sizes because the
interpreter is slow. The CUDA op and Triton on CUDA tensors run only with a CUDA device.
A subprocess compiles two Triton specialisations ahead of time for sm_90 (no GPU needed)
and checks for tensor-core instructions and the absence of register spills.
"""
import importlib.util
import os
import random
import subprocess
import sys

import pytest
import torch

from fastgan.reference.conv_transpose import conv_transpose2d as reference

HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DEVICES = (["cpu"] if INTERPRET else []) + (["cuda"] if torch.cuda.is_available() and not INTERPRET else [])

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid"]


def _kernels():
    from fastgan.kernels import conv_transpose as k
    return k


def _draw_cases(n, seed):
    """Random valid configurations: strides 1..3, paddings 0..k-1, output_padding < stride,
    kernel sizes 1..5 (non-square), odd sizes, every activation, gain, clamp, bias or not."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        sh, sw = rng.randint(1, 3), rng.randint(1, 3)
        ph, pw = rng.randint(0, kh - 1), rng.randint(0, kw - 1)
        oph, opw = rng.randint(0, sh - 1), rng.randint(0, sw - 1)
        N, C_in, C_out = rng.randint(1, 2), rng.choice([1, 3, 5]), rng.choice([1, 2, 3, 7])
        H, W = rng.randint(1, 5), rng.randint(1, 5)
        H_out = (H - 1) * sh - 2 * ph + kh + oph
        W_out = (W - 1) * sw - 2 * pw + kw + opw
        if H_out < 1 or W_out < 1:
            continue
        act = ACTS[len(cases) % len(ACTS)]
        cases.append(dict(shape=(N, C_in, H, W), w_shape=(C_in, C_out, kh, kw), stride=(sh, sw),
                          padding=(ph, pw), output_padding=(oph, opw), activation=act,
                          negative_slope=rng.choice([0.2, 0.01]), gain=rng.choice([1.0, 2 ** 0.5, 0.7]),
                          clamp=rng.choice([None, 0.8, 2.0]), bias=rng.random() < 0.7))
    return cases


# Hand-picked cases that must be covered whatever the random draw gives: DCGAN's k=4 s=2
# p=1; s=1 p=0 on a 1x1 input (DCGAN's first layer); k=1 < s=3 (phases without any tap:
# bias-only outputs); k=5 s=3 p=4 with output padding; non-square everything.
FIXED = [
    dict(shape=(2, 5, 3, 4), w_shape=(5, 7, 4, 4), stride=(2, 2), padding=(1, 1), output_padding=(0, 0),
         activation="relu", negative_slope=0.2, gain=1.0, clamp=None, bias=True),
    dict(shape=(3, 5, 1, 1), w_shape=(5, 3, 4, 4), stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
         activation="tanh", negative_slope=0.2, gain=1.0, clamp=None, bias=False),
    dict(shape=(1, 3, 3, 2), w_shape=(3, 2, 1, 1), stride=(3, 3), padding=(0, 0), output_padding=(2, 1),
         activation="lrelu", negative_slope=0.2, gain=2 ** 0.5, clamp=0.5, bias=True),
    dict(shape=(1, 2, 4, 3), w_shape=(2, 3, 5, 2), stride=(3, 2), padding=(4, 1), output_padding=(1, 0),
         activation="sigmoid", negative_slope=0.2, gain=1.3, clamp=None, bias=True),
]
CASES = FIXED + _draw_cases(10, seed=5)


def _case_id(c):
    return (f"x{'x'.join(map(str, c['shape']))}-k{c['w_shape'][2]}{c['w_shape'][3]}-s{c['stride'][0]}{c['stride'][1]}"
            f"-p{c['padding'][0]}{c['padding'][1]}-op{c['output_padding'][0]}{c['output_padding'][1]}"
            f"-{c['activation']}{'-clamp' if c['clamp'] else ''}{'-b' if c['bias'] else ''}")


def _inputs(c, dtype, device):
    x = torch.randn(c["shape"], dtype=torch.float64).to(dtype)
    w = (torch.randn(c["w_shape"], dtype=torch.float64) / (c["w_shape"][0] * 2) ** 0.5).to(dtype)
    b = torch.randn(c["w_shape"][1], dtype=torch.float64).to(dtype) if c["bias"] else None
    return x.to(device), w.to(device), (b.to(device) if b is not None else None)


def _expected(c, x, w, b):
    """float64 reference on exactly the (possibly rounded) inputs the kernel gets."""
    d = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    return reference(d(x), d(w), d(b), c["stride"], c["padding"], c["output_padding"],
                     activation=c["activation"], negative_slope=c["negative_slope"],
                     gain=c["gain"], clamp=c["clamp"])


def _call(k, c, x, w, b, **kw):
    return k.forward(x, w, b, c["stride"], c["padding"], c["output_padding"], c["activation"],
                     c["negative_slope"], c["gain"], c["clamp"], **kw)


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-2, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=1e-2)}


# ---------------------------------------------------------------- Triton vs the reference
@pytest.mark.parametrize("device", TRITON_DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1"))])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_triton_float32_matches_reference(case, device):
    k = _kernels()
    x, w, b = _inputs(case, torch.float32, device)
    assert k.supports(x, w, case["stride"], case["padding"], case["output_padding"], 1, 1) is None
    # Poisoned output buffer: any element the kernel fails to write stays NaN.
    out = torch.full(_expected(case, x, w, b).shape, float("nan"), dtype=torch.float32, device=device)
    y = _call(k, case, x, w, b, out=out)
    assert y is out
    torch.testing.assert_close(y.double().cpu(), _expected(case, x, w, b), **TOL[torch.float32])


@pytest.mark.parametrize("device", TRITON_DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1"))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", FIXED + CASES[len(FIXED)::3], ids=_case_id)
def test_triton_half_matches_reference(case, dtype, device):
    """Tensor-core dtypes: float32 accumulation, one rounding at the store."""
    k = _kernels()
    x, w, b = _inputs(case, dtype, device)
    y = _call(k, case, x, w, b)
    assert y.dtype == dtype and not torch.isnan(y).any()
    torch.testing.assert_close(y.double().cpu(), _expected(case, x, w, b), **TOL[dtype])


@pytest.mark.parametrize("device", TRITON_DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1"))])
def test_triton_layouts(device):
    """Channels-last in -> channels-last out (as eager); a strided (non-contiguous) input;
    a poisoned channels-last output buffer; DCGAN-like channel counts divisible by 8 (the
    vector-load hints K_ALIGN/N_ALIGN take their largest value)."""
    k = _kernels()
    c = dict(FIXED[0], shape=(2, 16, 3, 3), w_shape=(16, 24, 4, 4), activation="lrelu", clamp=1.0)
    x, w, b = _inputs(c, torch.float32, device)
    want = _expected(c, x, w, b)
    xcl = x.contiguous(memory_format=torch.channels_last)
    y = _call(k, c, xcl, w, b)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double().cpu(), want, **TOL[torch.float32])
    xs = torch.randn(2, 32, 3, 5, device=device)[:, ::2, :, 1:4]  # non-contiguous view
    y = _call(k, c, xs, w, b)
    assert y.is_contiguous()
    torch.testing.assert_close(y.double().cpu(), _expected(c, xs, w, b), **TOL[torch.float32])
    out = torch.full(want.shape, float("nan"), device=device).contiguous(memory_format=torch.channels_last)
    _call(k, c, x, w, b, out=out)
    torch.testing.assert_close(out.double().cpu(), want, **TOL[torch.float32])


@pytest.mark.parametrize("device", TRITON_DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1"))])
def test_triton_tf32_flag(device, monkeypatch):
    """FASTGAN_ALLOW_TF32=1 switches float32 to the tensor-core launcher with TF32 inputs
    (about 3 significant digits); without it float32 stays exact IEEE (tested above)."""
    k = _kernels()
    monkeypatch.delenv("FASTGAN_ALLOW_TF32", raising=False)
    assert k._tf32_allowed() is bool(torch.backends.cuda.matmul.allow_tf32)  # default: False
    monkeypatch.setenv("FASTGAN_ALLOW_TF32", "1")
    assert k._tf32_allowed() is True
    c = FIXED[0]
    x, w, b = _inputs(c, torch.float32, device)
    y = _call(k, c, x, w, b)
    torch.testing.assert_close(y.double().cpu(), _expected(c, x, w, b), rtol=5e-3, atol=5e-3)


def _expected_grad_input(c, g, w):
    """d/dx of <conv_transpose2d(x, w), g> in float64, by autograd through F.conv_transpose2d."""
    import torch.nn.functional as F
    x = torch.zeros(c["shape"], dtype=torch.float64, requires_grad=True)
    y = F.conv_transpose2d(x, w.detach().double().cpu(), None, c["stride"], c["padding"], c["output_padding"])
    return torch.autograd.grad(y, x, g.detach().double().cpu())[0]


@pytest.mark.parametrize("device", TRITON_DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="Triton needs a CUDA device or TRITON_INTERPRET=1"))])
@pytest.mark.parametrize("case,dtype", [(c, torch.float32) for c in FIXED + CASES[len(FIXED)::2]]
                         + [(c, torch.bfloat16) for c in FIXED],  # bf16: fixed cases (slow interpreter)
                         ids=lambda v: str(v) if isinstance(v, torch.dtype) else _case_id(v))
def test_triton_grad_input_matches_autograd(case, dtype, device):
    """grad_input(g, w) = conv2d(g, w, stride, padding): the input gradient of the
    transposed convolution, into a poisoned buffer."""
    k = _kernels()
    x, w, _ = _inputs(case, dtype, device)
    (sh, sw), (ph, pw), (oph, opw) = case["stride"], case["padding"], case["output_padding"]
    H_out = (case["shape"][2] - 1) * sh - 2 * ph + case["w_shape"][2] + oph
    W_out = (case["shape"][3] - 1) * sw - 2 * pw + case["w_shape"][3] + opw
    g = torch.randn(case["shape"][0], case["w_shape"][1], H_out, W_out, dtype=torch.float64).to(dtype).to(device)
    out = torch.full(case["shape"], float("nan"), dtype=dtype, device=device)
    dx = k.grad_input(g, w, case["stride"], case["padding"], x.shape, out=out)
    assert dx is out
    torch.testing.assert_close(dx.double().cpu(), _expected_grad_input(case, g, w), **TOL[dtype])
    if case is FIXED[0]:  # channels-last gradient in -> channels-last result
        dxc = k.grad_input(g.contiguous(memory_format=torch.channels_last), w, case["stride"], case["padding"], x.shape)
        assert dxc.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(dxc.double().cpu(), _expected_grad_input(case, g, w), **TOL[dtype])


def test_pack_weight_definition():
    """wp[r_h, r_w, t, u, ci, co] == w[ci, co, r_h + s_h*t, r_w + s_w*u], zero past the kernel."""
    k = _kernels()
    w = torch.randn(3, 2, 5, 4)
    wp, th, tw = k.pack_weight(w, (3, 2))
    assert (th, tw) == (2, 2) and wp.shape == (3, 2, 2, 2, 3, 2)
    for rh in range(3):
        for rw in range(2):
            for t in range(th):
                for u in range(tw):
                    kh, kw = rh + 3 * t, rw + 2 * u
                    want = w[:, :, kh, kw] if (kh < 5 and kw < 4) else torch.zeros(3, 2)
                    assert torch.equal(wp[rh, rw, t, u], want)


def test_phase_math_covers_every_output_once():
    """The phase formulas of the kernels (module docstring of kernels/conv_transpose.py and
    csrc/include/conv_transpose_phase.h), evaluated in Python: over random configurations the
    (phase, i) pairs tile [0, H_out) exactly once, and the taps (t, ih) of each output row
    are exactly the (kh, ih) pairs with oh = ih*s - p + kh."""
    rng = random.Random(0)
    for _ in range(300):
        k_, s = rng.randint(1, 6), rng.randint(1, 4)
        p, op = rng.randint(0, k_ + 2), rng.randint(0, s - 1)
        H = rng.randint(1, 6)
        H_out = (H - 1) * s - 2 * p + k_ + op
        if H_out < 1:
            continue
        seen = []
        for ph in range(s):
            r, q = (ph + p) % s, (ph + p) // s
            T = (k_ - r + s - 1) // s
            H_ph = (H_out - ph + s - 1) // s
            for i in range(H_ph):
                oh = ph + s * i
                seen.append(oh)
                got = {(r + s * t, i + q - t) for t in range(T) if 0 <= i + q - t < H}
                want = {(kh, ih) for kh in range(k_) for ih in range(H) if ih * s - p + kh == oh}
                assert got == want, (k_, s, p, op, H, oh)
        assert sorted(seen) == list(range(H_out))


def test_supports_reasons():
    k = _kernels()
    dev = TRITON_DEVICES[0] if TRITON_DEVICES else "cpu"
    x = torch.randn(1, 4, 3, 3, device=dev)
    w = torch.randn(4, 2, 3, 3, device=dev)
    if TRITON_DEVICES:
        assert k.supports(x, w, 2, 1, 1, 1, 1) is None
    assert "groups=1" in k.supports(x, w, 1, 0, 0, 2, 1)
    assert "dilation=1" in k.supports(x, w, 1, 0, 0, 1, 2)
    assert "float64" in k.supports(x.double(), w.double(), 1, 0, 0, 1, 1)
    assert "dtype" in k.supports(x, w.half(), 1, 0, 0, 1, 1)
    assert "4-D" in k.supports(x[0], w, 1, 0, 0, 1, 1)
    assert "channels" in k.supports(x, torch.randn(3, 2, 3, 3, device=dev), 1, 0, 0, 1, 1)
    assert "output size" in k.supports(torch.randn(1, 4, 1, 1, device=dev), w, 1, 2, 0, 1, 1)
    if not INTERPRET:
        assert "CUDA" in k.supports(x.cpu(), w.cpu(), 1, 0, 0, 1, 1)
    # forward() rejects what it cannot run, with the reason.
    with pytest.raises(ValueError, match="unknown activation"):
        k.forward(x, w, None, 1, 0, 0, "bogus", 0.2, 1.0, None)
    with pytest.raises(ValueError, match="float64"):
        k.forward(x.double(), w.double(), None, 1, 0, 0)
    with pytest.raises(ValueError, match="out must be"):
        k.forward(x, w, None, 1, 0, 0, out=torch.empty(1, 2, 3, 3, device=dev))


# ---------------------------------------------------------------- ahead-of-time compile (sm_90)
_AOT_SCRIPT = r"""
import os, re, subprocess, sys, tempfile
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
import triton
from fastgan.kernels import conv_transpose as k
names = sys.argv[1:]
for s in k.aot_specs():
    if s["name"] not in names:
        continue
    src = triton.compiler.ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"], attrs=s["attrs"])
    cc = triton.compile(src, target=triton.backends.compiler.GPUTarget("cuda", 90, 32),
                        options={"num_warps": s["num_warps"], "num_stages": s["num_stages"]})
    ptx = cc.asm["ptx"]
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cc.asm["cubin"]); f.flush()
        usage = subprocess.run([os.path.join(bindir, "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    print("SPEC", s["name"], "regs", m[1], "stack", m[2], "local", m[3],
          "wgmma", ptx.count("wgmma.mma_async"), "mma", ptx.count("mma.sync"), flush=True)
"""


def test_triton_compiles_for_sm90_with_tensor_cores_and_no_spills():
    """Compile (no GPU needed) the bf16 and TF32 forward specialisations of the biggest tile
    and the bf16 grad_input for sm_90: the PTX must contain wgmma (or mma.sync) and the
    cubin no stack (spills)."""
    k = _kernels()
    names = [s["name"] for s in k.aot_specs()]
    pick = [next(n for n in names if n.startswith("conv_transpose_phase_bf16_relu_ieee_m128n128")),
            next(n for n in names if n.startswith("conv_transpose_phase_fp32_relu_tf32")),
            next(n for n in names if n.startswith("conv_transpose_grad_input_bf16"))]
    env = {kk: v for kk, v in os.environ.items() if kk != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, *pick], capture_output=True, text=True, env=env,
                       timeout=300)
    if r.returncode != 0 and ("ptxas" in r.stderr or "cuobjdump" in r.stderr) and "No such file" in r.stderr:
        pytest.skip(f"Triton's bundled CUDA tools are missing: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line.split() for line in r.stdout.splitlines() if line.startswith("SPEC")]
    assert len(lines) == len(pick), r.stdout
    for f in lines:
        stats = dict(zip(f[2::2], map(int, f[3::2])))
        assert stats["wgmma"] + stats["mma"] > 0, f"{f[1]}: no tensor-core instruction in the PTX"
        assert stats["stack"] == 0 and stats["local"] == 0, f"{f[1]} spills: {stats}"
        assert stats["regs"] <= 255


# ---------------------------------------------------------------- CUDA kernels, emulated on the CPU
# tests/conv_transpose_cuda_emu/ compiles the exact device code of
# csrc/cuda/conv_transpose_kernels.cuh with g++ against a small CUDA emulation (one OS
# thread per CUDA thread, std::barrier for __syncthreads, scalar wmma fragments), so the
# kernels' index math, tiling, masking, double buffering and epilogue are checked here
# without a GPU. The host side of conv_transpose.cu (ATen packing, dispatch) is mirrored
# in the harness, not run.
EMU_DIR = os.path.join(os.path.dirname(__file__), "conv_transpose_cuda_emu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cuda_emulator(tmp_path_factory):
    import shutil
    from torch.utils import cpp_extension
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the CUDA-kernel emulation")
    exe = str(tmp_path_factory.mktemp("cuda_emu") / "emulate")
    cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-fno-strict-aliasing",
           *[f"-I{p}" for p in cpp_extension.include_paths()],
           f"-I{os.path.join(ROOT, 'csrc', 'include')}", f"-I{os.path.join(ROOT, 'csrc', 'cuda')}", f"-I{EMU_DIR}",
           os.path.join(EMU_DIR, "emulate.cpp"), "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "barrier" in r.stderr and "No such file" in r.stderr:
        pytest.skip(f"the C++ compiler lacks C++20 <barrier>: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-4000:]
    return exe


EMU_DTYPES = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EMU_CASES = [  # (kernel, dtype, case): every FIXED case through both kernels, then wider ones
    *[("simt", "f64", c) for c in FIXED], *[("wmma", "bf16", c) for c in FIXED],
    ("simt", "f32", CASES[len(FIXED)]), ("wmma", "f16", CASES[len(FIXED) + 1]),
    ("simt", "f16", CASES[len(FIXED) + 2]),  # the half-type SIMT path (GPUs below sm_80)
    # C_in = 40 (two K chunks of the wmma tile, 16-byte loads), C_out = 70 (two N tiles,
    # ragged), output padding, clamp: exercises the double buffering and the masks.
    ("wmma", "f16", dict(FIXED[0], shape=(2, 40, 5, 5), w_shape=(40, 70, 4, 4), output_padding=(1, 1),
                         activation="lrelu", gain=2 ** 0.5, clamp=0.5)),
    ("wmma", "bf16", dict(FIXED[1], shape=(2, 64, 2, 3), w_shape=(64, 16, 3, 5), stride=(2, 3), padding=(1, 2))),
    ("simt", "f64", dict(FIXED[2], shape=(1, 70, 3, 3), w_shape=(70, 66, 3, 3), activation="tanh", clamp=0.9)),
]


@pytest.mark.parametrize("kernel,dtype,case", EMU_CASES,
                         ids=[f"{k}-{d}-{_case_id(c)}" for k, d, c in EMU_CASES])
def test_cuda_kernels_emulated_match_reference(cuda_emulator, kernel, dtype, case, tmp_path):
    import numpy as np
    tdt = EMU_DTYPES[dtype]
    x, w, b = _inputs(case, tdt, "cpu")
    x.double().numpy().tofile(tmp_path / "x.bin")
    w.double().numpy().tofile(tmp_path / "w.bin")
    if b is not None:
        b.double().numpy().tofile(tmp_path / "b.bin")
    codes = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}
    args = [cuda_emulator, kernel, dtype, *case["shape"], case["w_shape"][1], *case["w_shape"][2:],
            *case["stride"], *case["padding"], *case["output_padding"], codes[case["activation"]],
            repr(case["negative_slope"]), repr(case["gain"]), repr(-1.0 if case["clamp"] is None else case["clamp"]),
            int(b is not None), str(tmp_path)]
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = _expected(case, x, w, b)
    y = torch.from_numpy(np.fromfile(tmp_path / "y.bin", dtype=np.float64)).reshape(want.shape)
    assert not torch.isnan(y).any(), "the kernel left output elements unwritten (NaN-poisoned buffer)"
    tol = dict(rtol=1e-12, atol=1e-12) if tdt == torch.float64 else TOL[tdt]
    torch.testing.assert_close(y, want, **tol)


# ---------------------------------------------------------------- CUDA device
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _cuda_op():
    import fastgan._ext as ext  # noqa: F401  (loads the extension)
    if not hasattr(torch.ops.fastgan_C, "conv_transpose_forward") or not ext.HAS_CUDA_KERNELS:
        pytest.skip("this build of fastgan._C has no CUDA conv_transpose kernel")
    return torch.ops.fastgan_C.conv_transpose_forward


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", FIXED + CASES[len(FIXED)::2], ids=_case_id)
def test_cuda_op_matches_reference(case, dtype):
    op = _cuda_op()
    x, w, b = _inputs(case, dtype, "cuda")
    codes = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}
    y = op(x, w, b, list(case["stride"]), list(case["padding"]), list(case["output_padding"]),
           codes[case["activation"]], case["negative_slope"], case["gain"],
           -1.0 if case["clamp"] is None else case["clamp"])
    assert y.dtype == dtype and not torch.isnan(y).any()
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else TOL[dtype]
    torch.testing.assert_close(y.double().cpu(), _expected(case, x, w, b), **tol)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_op_dcgan_layer(dtype):
    """A DCGAN-sized layer (k=4, s=2, p=1, 64 -> 32 channels) through both GPU kernels."""
    op = _cuda_op()
    c = dict(FIXED[0], shape=(4, 64, 8, 8), w_shape=(64, 32, 4, 4))
    x, w, b = _inputs(c, dtype, "cuda")
    want = _expected(c, x, w, b)
    y = op(x, w, b, [2, 2], [1, 1], [0, 0], 1, 0.2, 1.0, -1.0)
    torch.testing.assert_close(y.double().cpu(), want, **TOL[dtype])
    if HAVE_TRITON and not INTERPRET:
        torch.testing.assert_close(_call(_kernels(), c, x, w, b).double().cpu(), want, **TOL[dtype])
