"""Triton kernel of the transposed convolution with a fused epilogue (groups=1, dilation=1).

Math (per spatial axis; the same holds for the width with its own s, p, k):

    y[n, co, oh, ow] = sum_{ci, kh, kw : oh = ih*s - p + kh, ow = iw*s - p + kw}
                           x[n, ci, ih, iw] * w[ci, co, kh, kw]
    H_out = (H - 1)*s - 2p + (k - 1) + output_padding + 1

Phase decomposition. Write the output row as oh = ph + s*i with the phase ph in [0, s).
A tap kh contributes to it iff oh + p - kh is a multiple of s and ih = (oh + p - kh)/s is
in [0, H). With r = (ph + p) mod s and q = (ph + p) div s (floor; ph + p >= 0):

    kh = r + s*t,  t = 0 .. T-1,  T = ceil((k - r)/s)    (T = 0 when r >= k)
    ih = i + q - t
    rows of phase ph: i = 0 .. H_ph - 1,  H_ph = ceil((H_out - ph)/s)  (0 when ph >= H_out)

So each of the s_h*s_w phases (ph, pw) is a dense correlation of x with the sub-kernel
w[:, :, r_h::s_h, r_w::s_w], an implicit GEMM with

    M = N*H_ph*W_ph (rows (n, i, j)),  N = C_out,  K = C_in*T_h*T_w (taps (t, u), then ci)
    A[m, (t, u, ci)] = x[n, ci, i + q_h - t, j + q_w - u]   (0 outside the input)
    B[(t, u, ci), co] = w[ci, co, r_h + s_h*t, r_w + s_w*u]

and the epilogue y = clamp(act(acc + b[co]) * gain, -clamp, clamp) is stored once at
y[n, co, ph + s_h*i, pw + s_w*j]. Every output element belongs to exactly one phase and
one (i, j), so every element is written exactly once: no scatter, no zero insertion, no
atomics, no pre-zeroed buffer. A phase with T = 0 (k < s) gets just the epilogue of the
bias. The same formulas are used by the CUDA kernel (csrc/include/conv_transpose_phase.h).

The weight is repacked once per call (a tiny tensor) as wp[r_h, r_w, t, u, ci, co] so that
B tiles are contiguous along co. One launch covers all phases (grid axis 2 = phase);
programs whose M tile lies past their phase's M (the phases differ by at most one row or
column) exit at once.

Precision: fp16/bf16 use tensor cores with float32 accumulation; float32 is exact IEEE
unless FASTGAN_ALLOW_TF32=1 or torch.backends.cuda.matmul.allow_tf32 is set.
"""
import os

import torch
import triton
import triton.language as tl

ACTIVATIONS = {"linear": 0, None: 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). BLOCK_N=16 and 32
# serve the small-C_out layers (DCGAN's last layer has C_out=3). Under the interpreter a
# single small config: autotuning there would only multiply the (slow) runs.
_TUNE_TC = [  # tensor cores: fp16, bf16, and float32 with TF32 allowed
    (128, 128, 32, 8, 3),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (128, 32, 64, 4, 4),
    (128, 16, 64, 4, 4),
]
_TUNE_FMA = [  # exact float32: tl.dot becomes FMAs, so smaller tiles per thread
    (64, 64, 16, 4, 3),
    (128, 64, 16, 8, 3),
    (64, 128, 16, 8, 3),
    (128, 128, 16, 8, 2),
    (128, 16, 32, 8, 3),  # 8 warps: with 4 the sm_80 build spilled 16 bytes
]
_INTERP_TUNE = [(32, 16, 16, 1, 1)]
# The Triton 3.9 interpreter's tl.dot multiplies the raw bit patterns of bfloat16 operands
# (garbage results); under the interpreter bf16 tiles are widened to float32 before the dot,
# which is exact (bf16 -> fp32 is lossless and bf16*bf16 products fit in fp32), so the
# result matches tensor-core math up to the order of the float32 accumulation. Compiled
# kernels never take this branch.


def _configs(table):
    table = _INTERP_TUNE if _INTERPRET else table
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=ns)
            for bm, bn, bk, nw, ns in table]


@triton.jit
def _epilogue(v, ACT: tl.constexpr, negative_slope, gain, clamp, HAS_CLAMP: tl.constexpr):
    """act(v) * gain, then clamp to [-clamp, clamp]; v is float32 (acc + bias)."""
    if ACT == 1:  # relu
        v = tl.where(v < 0.0, 0.0, v)  # NaN stays NaN, as torch.relu (tl.maximum may drop it)
    elif ACT == 2:  # leaky relu
        v = tl.where(v >= 0.0, v, v * negative_slope)
    elif ACT == 3:  # tanh = sign(v) * (1 - e) / (1 + e), e = exp(-2|v|): no overflow
        e = tl.exp(-2.0 * tl.abs(v))
        t = (1.0 - e) / (1.0 + e)
        v = tl.where(v >= 0.0, t, -t)
    elif ACT == 4:  # sigmoid, split by sign so exp never overflows
        e = tl.exp(-tl.abs(v))
        v = tl.where(v >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))
    v = v * gain
    if HAS_CLAMP:
        v = tl.where(v < -clamp, -clamp, tl.where(v > clamp, clamp, v))  # NaN stays NaN
    return v


@triton.jit
def _store_tile(y_ptr, out, y_row, offs_n, mask_m, mask_n, stride_yc, N_ALIGN: tl.constexpr,
                Y_CHANNELS_LAST: tl.constexpr):
    """Store the [BLOCK_M, BLOCK_N] tile `out` at y_ptr + y_row[m] + offs_n[c]*stride_yc."""
    if Y_CHANNELS_LAST:
        # Channels are contiguous in y (every row offset is a multiple of the channel
        # count): store the tile as [BLOCK_M, BLOCK_N], vectorised along the channels.
        y_ptrs = y_ptr + (tl.multiple_of(y_row, N_ALIGN)[:, None] + offs_n[None, :] * stride_yc)
        tl.store(y_ptrs, out.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    else:
        # NCHW: neighbouring rows m are neighbours (stride s_w) in y, so store the
        # transposed tile [BLOCK_N, BLOCK_M]; the compiler then spreads the threads along
        # m, which coalesces the stores and computes each row's address once per thread.
        y_ptrs = y_ptr + (offs_n[:, None] * stride_yc + y_row[None, :])
        tl.store(y_ptrs, tl.trans(out.to(y_ptr.dtype.element_ty)), mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _conv_transpose_phase_kernel(
    x_ptr, wp_ptr, b_ptr, y_ptr,
    N, C_in, H, W, C_out, H_out, W_out,
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    SH, SW, PH, PW, KH, KW, TMAX_H, TMAX_W,
    negative_slope, gain, clamp,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, K_ALIGN: tl.constexpr, N_ALIGN: tl.constexpr,
    Y_CHANNELS_LAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)

    # Phase geometry (module docstring). All operands are >= 0, so Triton's truncating
    # division is floor division here.
    ph = phase // SW
    pw = phase % SW
    rh = (ph + PH) % SH
    qh = (ph + PH) // SH
    rw = (pw + PW) % SW
    qw = (pw + PW) // SW
    th = (KH - rh + SH - 1) // SH
    tw = (KW - rw + SW - 1) // SW
    h_ph = (H_out - ph + SH - 1) // SH
    w_ph = (W_out - pw + SW - 1) // SW
    hw_ph = h_ph * w_ph
    m_total = N * hw_ph
    if pid_m * BLOCK_M >= m_total:
        return  # this phase has fewer rows than the largest one

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < m_total
    mask_n = offs_n < C_out
    # (n, i, j) of each row; remainders by multiply-subtract (one division each).
    n_img = offs_m // hw_ph
    rem = offs_m - n_img * hw_ph
    i = rem // w_ph
    j = rem - i * w_ph

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_img = n_img * stride_xn  # [BLOCK_M] int32 offsets of each row's image
    # Taps outside, channel chunks inside: the row offsets and the validity mask of a tap
    # are [BLOCK_M] vectors computed once per tap, and the inner loop (the one the
    # software pipeliner overlaps) only adds the channel offsets.
    for tap in range(0, th * tw):
        t = tap // tw
        u = tap % tw
        ih = i + qh - t
        iw = j + qw - u
        ok_m = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        # K_ALIGN / N_ALIGN (powers of two dividing C_in / C_out, given by the host) let
        # the compiler use vector loads along the channels (x is channels-last here).
        x_off = tl.multiple_of(x_img + ih * stride_xh + iw * stride_xw, K_ALIGN)
        # wp[rh, rw, t, u, ci, co], shape [SH, SW, TMAX_H, TMAX_W, C_in, C_out]
        w_tap = (((rh * SW + rw) * TMAX_H + t) * TMAX_W + u) * C_in * C_out
        for c0 in range(0, C_in, BLOCK_K):
            ci = c0 + offs_k
            ok_k = ci < C_in
            a = tl.load(x_ptr + (x_off[:, None] + ci[None, :] * stride_xc),
                        mask=ok_m[:, None] & ok_k[None, :], other=0.0)
            b = tl.load(wp_ptr + (tl.multiple_of(w_tap + ci * C_out, N_ALIGN)[:, None] + offs_n[None, :]),
                        mask=ok_k[:, None] & mask_n[None, :], other=0.0)
            if UPCAST_DOT:  # interpreter only: see _UPCAST_DOT
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    out = _epilogue(acc, ACT, negative_slope, gain, clamp, HAS_CLAMP)

    oh = ph + SH * i
    ow = pw + SW * j
    y_row = n_img * stride_yn + oh * stride_yh + ow * stride_yw  # [BLOCK_M]
    _store_tile(y_ptr, out, y_row, offs_n, mask_m, mask_n, stride_yc, N_ALIGN, Y_CHANNELS_LAST)


_TUNE_KEY = ["N", "C_in", "H", "W", "C_out", "SH", "SW", "KH", "KW", "stride_yc"]
# Two autotuned launchers over the same kernel: tensor-core tiles and FMA (exact fp32) tiles.
_conv_transpose_phase_tc = triton.autotune(configs=_configs(_TUNE_TC), key=_TUNE_KEY)(_conv_transpose_phase_kernel)
_conv_transpose_phase_fma = triton.autotune(configs=_configs(_TUNE_FMA), key=_TUNE_KEY)(_conv_transpose_phase_kernel)


@triton.jit
def _conv_transpose_grad_input_kernel(
    g_ptr, wg_ptr, dx_ptr,
    N, C_in, H, W, C_out, H_out, W_out,
    stride_gn, stride_gc, stride_gh, stride_gw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    SH, SW, PH, PW, KH, KW,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, K_ALIGN: tl.constexpr, N_ALIGN: tl.constexpr,
    Y_CHANNELS_LAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx = conv2d(g, w, stride, padding): the input gradient of the transposed convolution,
    an ordinary strided convolution, as an implicit GEMM with

        M = N*H*W rows (n, ih, iw),  N = C_in,  K = KH*KW taps x C_out channels
        A[m, (kh, kw, co)] = g[n, co, ih*s_h - p_h + kh, iw*s_w - p_w + kw]  (0 outside)
        B[(kh, kw, co), ci] = wg[kh, kw, co, ci] = w[ci, co, kh, kw]

    g is read channels-last (K_ALIGN divides C_out), wg is packed by the host."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    hw = H * W
    m_total = N * hw
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < m_total
    mask_n = offs_n < C_in
    n_img = offs_m // hw
    rem = offs_m - n_img * hw
    ih = rem // W
    iw = rem - ih * W

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g_img = n_img * stride_gn
    for tap in range(0, KH * KW):
        kh = tap // KW
        kw = tap - kh * KW
        oh = ih * SH - PH + kh
        ow = iw * SW - PW + kw
        ok_m = mask_m & (oh >= 0) & (oh < H_out) & (ow >= 0) & (ow < W_out)
        g_off = tl.multiple_of(g_img + oh * stride_gh + ow * stride_gw, K_ALIGN)
        w_tap = tap * C_out * C_in
        for c0 in range(0, C_out, BLOCK_K):
            co = c0 + offs_k
            ok_k = co < C_out
            a = tl.load(g_ptr + (g_off[:, None] + co[None, :] * stride_gc),
                        mask=ok_m[:, None] & ok_k[None, :], other=0.0)
            b = tl.load(wg_ptr + (tl.multiple_of(w_tap + co * C_in, N_ALIGN)[:, None] + offs_n[None, :]),
                        mask=ok_k[:, None] & mask_n[None, :], other=0.0)
            if UPCAST_DOT:  # interpreter only: see _UPCAST_DOT
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    d_row = n_img * stride_dn + ih * stride_dh + iw * stride_dw
    _store_tile(dx_ptr, acc, d_row, offs_n, mask_m, mask_n, stride_dc, N_ALIGN, Y_CHANNELS_LAST)


_GRAD_KEY = ["N", "C_in", "H", "W", "C_out", "SH", "SW", "KH", "KW", "stride_dc"]
_grad_input_tc = triton.autotune(configs=_configs(_TUNE_TC), key=_GRAD_KEY)(_conv_transpose_grad_input_kernel)
_grad_input_fma = triton.autotune(configs=_configs(_TUNE_FMA), key=_GRAD_KEY)(_conv_transpose_grad_input_kernel)


# ---------------------------------------------------------------- host side
def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(e) for e in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def _pow2_divisor(n, cap=8):
    """The largest power of two <= cap that divides n (a vector-width guarantee)."""
    d = 1
    while d < cap and n % (2 * d) == 0:
        d *= 2
    return d


def _tf32_allowed() -> bool:
    if os.environ.get("FASTGAN_ALLOW_TF32", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except Exception:
        return False


def output_size(H, W, kh, kw, stride, padding, output_padding):
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    return (H - 1) * sh - 2 * ph + kh - 1 + oph + 1, (W - 1) * sw - 2 * pw + kw - 1 + opw + 1


def _tensor_reason(x, w):
    """Device, dtype and rank requirements shared by forward() and grad_input()."""
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        return "the Triton kernel needs tensor arguments"
    if x.device.type != "cuda" and not (_INTERPRET and x.device.type == "cpu"):
        return (f"the Triton kernel runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
                f"got a tensor on {x.device}")
    if w.device != x.device:
        return f"input is on {x.device} but weight is on {w.device}"
    if x.dtype not in _DTYPES:
        return (f"the Triton kernel computes float32, float16 and bfloat16, got {x.dtype}; "
                "float64 runs on the cpu, cuda or reference backends")
    if w.dtype != x.dtype:
        return f"input dtype {x.dtype} differs from weight dtype {w.dtype}"
    if x.dim() != 4 or w.dim() != 4:
        return (f"the Triton kernel takes a 4-D input [N, C_in, H, W] and 4-D weight "
                f"[C_in, C_out, kh, kw], got {tuple(x.shape)} and {tuple(w.shape)}")
    return None


def supports(x, w, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """None if forward() can compute this call, else the reason it cannot."""
    reason = _tensor_reason(x, w)
    if reason is not None:
        return reason
    if groups != 1:
        return f"the Triton kernel covers groups=1 only, got groups={groups}"
    if _pair(dilation, "dilation") != (1, 1):
        return f"the Triton kernel covers dilation=1 only, got dilation={dilation}"
    if x.shape[1] != w.shape[0]:
        return f"input has {x.shape[1]} channels but the weight expects {w.shape[0]}"
    s, p, op = _pair(stride, "stride"), _pair(padding, "padding"), _pair(output_padding, "output_padding")
    if min(s) < 1 or min(p) < 0 or min(op) < 0:
        return f"needs stride >= 1, padding >= 0, output_padding >= 0; got {s}, {p}, {op}"
    H_out, W_out = output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], s, p, op)
    if H_out < 1 or W_out < 1:
        return f"the output size would be {H_out}x{W_out}"
    if min(x.shape) == 0 or min(w.shape) == 0:
        return "empty input or weight"
    if max(x.numel(), x.shape[0] * w.shape[1] * H_out * W_out, w.numel()) >= 2**31:
        return "tensors of 2**31 or more elements need 64-bit indexing, which this kernel does not use"
    return None


def pack_weight(w, stride):
    """wp[r_h, r_w, t, u, ci, co] = w[ci, co, r_h + s_h*t, r_w + s_w*u] (0 past the kernel)."""
    C_in, C_out, KH, KW = w.shape
    sh, sw = stride
    th, tw = -(-KH // sh), -(-KW // sw)
    wpad = torch.nn.functional.pad(w, (0, tw * sw - KW, 0, th * sh - KH))
    wpad = wpad.reshape(C_in, C_out, th, sh, tw, sw)  # kh = t*sh + r
    return wpad.permute(3, 5, 2, 4, 0, 1).contiguous(), th, tw


def forward(x, w, b, stride, padding, output_padding, activation="linear", negative_slope=0.2,
            gain=1.0, clamp=None, out=None):
    """y = clamp(act(conv_transpose2d(x, w) + b) * gain, -clamp, clamp), groups=1, dilation=1.

    x [N, C_in, H, W] (any strides; channels_last input gives channels_last output, as in
    eager), w [C_in, C_out, kh, kw], b [C_out] or None. Returns a new tensor, or writes
    every element of `out` (any strides, right shape/dtype/device) and returns it.
    """
    stride, padding, output_padding = (_pair(stride, "stride"), _pair(padding, "padding"),
                                       _pair(output_padding, "output_padding"))
    reason = supports(x, w, stride, padding, output_padding, 1, 1)
    if reason is not None:
        raise ValueError(f"fastgan Triton conv_transpose cannot run this call: {reason}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of "
                         f"{[a for a in ACTIVATIONS if a is not None]} or None")
    if b is not None and (b.shape != (w.shape[1],) or b.device != x.device):
        raise ValueError(f"bias must have shape ({w.shape[1]},) on {x.device}, got "
                         f"{tuple(b.shape)} on {b.device}")
    N, C_in, H, W = x.shape
    _, C_out, KH, KW = w.shape
    H_out, W_out = output_size(H, W, KH, KW, stride, padding, output_padding)
    # Output layout as eager gives it: channels-last in, channels-last out.
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if out is None:
        y = torch.empty((N, C_out, H_out, W_out), device=x.device, dtype=x.dtype,
                        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    else:
        if out.shape != (N, C_out, H_out, W_out) or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"out must be {(N, C_out, H_out, W_out)} {x.dtype} on {x.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        y = out
    # The GEMM reads x channels-last (K = channels contiguous, so tiles load as vectors);
    # an NCHW input is converted once (it is s*s times smaller than the output).
    x = x.contiguous(memory_format=torch.channels_last)
    wp, tmax_h, tmax_w = pack_weight(w, stride)
    sh, sw = stride
    m_max = N * (-(-H_out // sh)) * (-(-W_out // sw))  # phase (0, 0) is the largest
    prec = "tf32" if (x.dtype == torch.float32 and _tf32_allowed()) else "ieee"

    def grid(meta):
        return triton.cdiv(m_max, meta["BLOCK_M"]), triton.cdiv(C_out, meta["BLOCK_N"]), sh * sw

    launcher = _conv_transpose_phase_fma if (x.dtype == torch.float32 and prec == "ieee") else _conv_transpose_phase_tc
    launcher[grid](
        x, wp, b.contiguous() if b is not None else wp, y,
        N, C_in, H, W, C_out, H_out, W_out,
        *x.stride(), *y.stride(),
        sh, sw, padding[0], padding[1], KH, KW, tmax_h, tmax_w,
        float(negative_slope), float(gain), float(clamp) if clamp is not None else 0.0,
        ACT=ACTIVATIONS[activation], HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None,
        DOT_PRECISION=prec, UPCAST_DOT=_INTERPRET and x.dtype == torch.bfloat16,
        K_ALIGN=_pow2_divisor(C_in), N_ALIGN=_pow2_divisor(C_out),
        # the [M, N]-oriented store assumes row offsets that are multiples of C_out
        Y_CHANNELS_LAST=y.is_contiguous(memory_format=torch.channels_last),
    )
    return y


def grad_input(grad_pre, w, stride, padding, input_shape, out=None):
    """dx[n, ci, ih, iw] = sum_{co, kh, kw} grad_pre[n, co, ih*s - p + kh, iw*s - p + kw] * w[ci, co, kh, kw]
    (terms outside grad_pre dropped): the gradient of the transposed convolution with
    respect to its input, i.e. conv2d(grad_pre, w, stride, padding) cropped to
    input_shape = (N, C_in, H, W). grad_pre [N, C_out, H_out, W_out] is the gradient of
    the pre-activation (the epilogue's derivative already applied). groups=1, dilation=1.
    The result is channels-last when grad_pre is, else NCHW (or written into `out`)."""
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    N, C_in, H, W = (int(v) for v in input_shape)
    if grad_pre.dim() != 4 or w.dim() != 4 or grad_pre.shape[0] != N or grad_pre.shape[1] != w.shape[1] \
            or w.shape[0] != C_in:
        raise ValueError(f"grad_input: grad_pre {tuple(grad_pre.shape)}, weight {tuple(w.shape)} and "
                         f"input_shape {tuple(input_shape)} do not fit together (grad_pre [N, C_out, H_out, "
                         f"W_out], weight [C_in, C_out, kh, kw])")
    reason = _tensor_reason(grad_pre, w)
    if reason is None and max(grad_pre.numel(), N * C_in * H * W, w.numel()) >= 2**31:
        reason = "tensors of 2**31 or more elements need 64-bit indexing, which this kernel does not use"
    if reason is not None:
        raise ValueError(f"fastgan Triton conv_transpose grad_input cannot run this call: {reason}")
    _, C_out, H_out, W_out = grad_pre.shape
    KH, KW = w.shape[2], w.shape[3]
    channels_last = grad_pre.is_contiguous(memory_format=torch.channels_last) and not grad_pre.is_contiguous()
    if out is None:
        dx = torch.empty((N, C_in, H, W), device=grad_pre.device, dtype=grad_pre.dtype,
                         memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    else:
        if out.shape != (N, C_in, H, W) or out.dtype != grad_pre.dtype or out.device != grad_pre.device:
            raise ValueError(f"out must be {(N, C_in, H, W)} {grad_pre.dtype} on {grad_pre.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        dx = out
    if dx.numel() == 0:
        return dx
    g = grad_pre.contiguous(memory_format=torch.channels_last)
    wg = w.permute(2, 3, 1, 0).contiguous()  # wg[kh, kw, co, ci]
    prec = "tf32" if (g.dtype == torch.float32 and _tf32_allowed()) else "ieee"
    launcher = _grad_input_fma if (g.dtype == torch.float32 and prec == "ieee") else _grad_input_tc

    def grid(meta):
        return triton.cdiv(N * H * W, meta["BLOCK_M"]), triton.cdiv(C_in, meta["BLOCK_N"])

    launcher[grid](
        g, wg, dx,
        N, C_in, H, W, C_out, H_out, W_out,
        *g.stride(), *dx.stride(),
        stride[0], stride[1], padding[0], padding[1], KH, KW,
        DOT_PRECISION=prec, UPCAST_DOT=_INTERPRET and g.dtype == torch.bfloat16,
        K_ALIGN=_pow2_divisor(C_out), N_ALIGN=_pow2_divisor(C_in),
        Y_CHANNELS_LAST=dx.is_contiguous(memory_format=torch.channels_last),
    )
    return dx


# ---------------------------------------------------------------- ahead-of-time specs
_TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The epilogues the DCGAN / StyleGAN layers launch: (ACT, HAS_BIAS, HAS_CLAMP).
_AOT_EPILOGUES = {"relu": (1, True, False), "tanh": (3, True, False), "lrelu_clamp": (2, True, True)}
_FLOAT_ARGS = ("negative_slope", "gain", "clamp")


def _spec(fn, name, ty, constexprs, cfg, pointers, div16):
    bm, bn, bk, nw, ns = cfg
    constexprs = dict(constexprs, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in pointers:
            signature[arg] = "*" + ty
        elif arg in _FLOAT_ARGS:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in pointers + div16}
    return {"name": f"{name}_m{bm}n{bn}k{bk}w{nw}s{ns}", "fn": fn, "signature": signature,
            "constexprs": constexprs, "attrs": attrs, "num_warps": nw, "num_stages": ns}


def aot_specs():
    """The specialisations forward() (and grad_input()) launch for float32 and bfloat16 on
    the DCGAN layers, for triton.compile(ASTSource(fn, signature, constexprs, attrs),
    target=GPUTarget("cuda", 90, 32), options={"num_warps", "num_stages"}).

    As at run time: x is channels-last (stride_xc == 1, which Triton specialises to a
    constexpr), y is NCHW (stride_yw == 1), channel counts divisible by 16 (K_ALIGN,
    N_ALIGN = 8 and "attrs": tt.divisibility 16 on the pointers, channel counts and
    channel-multiple strides, which Triton's launcher infers the same way at run time;
    DCGAN's C_in=100 and C_out=3 layers launch with fewer such facts).
    Float32 uses the FMA tile table (exact IEEE) and, as a separate set, the tensor-core
    table with TF32. Forward: one spec per tile config with the ReLU epilogue, plus the
    tanh and clamped-lrelu epilogues on the first config. grad_input: the first config of
    each table."""
    specs = []
    fwd, bwd = _conv_transpose_phase_kernel, _conv_transpose_grad_input_kernel
    fwd_ptrs, bwd_ptrs = ("x_ptr", "wp_ptr", "b_ptr", "y_ptr"), ("g_ptr", "wg_ptr", "dx_ptr")
    fwd_div = ("C_in", "C_out", "stride_xn", "stride_xh", "stride_xw", "stride_yn", "stride_yc")
    bwd_div = ("C_in", "C_out", "stride_gn", "stride_gh", "stride_gw", "stride_dn", "stride_dc")
    for dtype in (torch.float32, torch.bfloat16):
        ty = _TRITON_TYPE[dtype]
        variants = [(epi, "ieee") for epi in _AOT_EPILOGUES]
        if dtype == torch.float32:
            variants.append(("relu", "tf32"))
        for epi_name, prec in variants:
            table = _TUNE_FMA if (dtype == torch.float32 and prec == "ieee") else _TUNE_TC
            act, has_bias, has_clamp = _AOT_EPILOGUES[epi_name]
            for idx, cfg in enumerate(table):
                if not (idx == 0 or (epi_name == "relu" and prec == "ieee") or prec == "tf32"):
                    continue
                constexprs = {"stride_xc": 1, "stride_yw": 1, "ACT": act, "HAS_BIAS": has_bias,
                              "HAS_CLAMP": has_clamp, "DOT_PRECISION": prec, "UPCAST_DOT": False,
                              "K_ALIGN": 8, "N_ALIGN": 8, "Y_CHANNELS_LAST": False}
                name = f"conv_transpose_phase_{ty}_{epi_name}_{prec}"
                specs.append(_spec(fwd, name, ty, constexprs, cfg, fwd_ptrs, fwd_div))
        for prec in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)):
            table = _TUNE_FMA if (dtype == torch.float32 and prec == "ieee") else _TUNE_TC
            constexprs = {"stride_gc": 1, "stride_dw": 1, "DOT_PRECISION": prec, "UPCAST_DOT": False,
                          "K_ALIGN": 8, "N_ALIGN": 8, "Y_CHANNELS_LAST": False}
            specs.append(_spec(bwd, f"conv_transpose_grad_input_{ty}_{prec}", ty, constexprs, table[0],
                               bwd_ptrs, bwd_div))
    return specs
