"""Minibatch standard deviation in Triton: forward and backward kernels.

x is [N, C, H, W] contiguous, G members per group, M = N / G groups, F channel groups of
c = C / F channels, L = c * H * W. Sample n = g * M + m is member g of group m, and for
a fixed (m, f) each member's values are one contiguous span of L elements, so a program
loads a [BLOCK_G, BLOCK] tile: all G members (rows) at BLOCK consecutive positions.

    mu[j]   = 1/G sum_g x_g[j],   var[j] = 1/G sum_g (x_g[j] - mu[j])^2   (biased)
    s[m,f]  = 1/L sum_j sqrt(var[j] + eps)
    y       = cat([x, s broadcast over H, W], dim=1)
    dx_g[j] = dy_g[j] + S[m,f] / (L G) * (x_g[j] - mu[j]) / sqrt(var[j] + eps),
              S[m,f] = sum_{g,h,w} dy[g*M+m, C+f, h, w]

Forward: _fwd_stats (reads x once, writes y's first C channels, one partial sum of
sqrt(var + eps) per program) then _fwd_fill (sums the partials of a (m, f) in a fixed
order and writes the F stat channels): deterministic, no atomics.
Backward: _bwd_coef (S / (L G) per (m, f) from dy's stat channels) then _bwd_dx (reads
x and dy once, writes dx once). Statistics in float32 (float64 for float64 input).
"""
import torch
import triton
import triton.language as tl

# Elements of x per program in the tile kernels: BLOCK_G * BLOCK.
_TILE = 2048
_NUM_WARPS = 4


@triton.jit
def _fwd_stats(x_ptr, y_ptr, part_ptr, M, C, F, HW, L, G, inv_G, eps,
               BLOCK_G: tl.constexpr, BLOCK: tl.constexpr, ACC_F64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (m, f, chunk of BLOCK positions)
    nchunks = tl.cdiv(L, BLOCK)
    mf = pid // nchunks
    chunk = pid % nchunks
    m = mf // F
    f = mf % F
    gs = M * C * HW  # member stride in x (and dx)
    gys = M * (C + F) * HW  # member stride in y (and dy)
    g = tl.arange(0, BLOCK_G).to(tl.int64)
    j = chunk * BLOCK + tl.arange(0, BLOCK)
    jmask = j < L
    mask = (g < G)[:, None] & jmask[None, :]
    xoff = (m * C * HW + f * L) + g[:, None] * gs + j[None, :]
    yoff = (m * (C + F) * HW + f * L) + g[:, None] * gys + j[None, :]
    raw = tl.load(x_ptr + xoff, mask=mask, other=0.0)
    tl.store(y_ptr + yoff, raw, mask=mask)
    if ACC_F64:
        v = raw.to(tl.float64)
    else:
        v = raw.to(tl.float32)
    mean = tl.sum(v, axis=0) * inv_G
    d = tl.where(mask, v - mean[None, :], 0.0)
    var = tl.sum(d * d, axis=0) * inv_G
    sd = tl.where(jmask, tl.sqrt(var + eps), 0.0)
    tl.store(part_ptr + pid, tl.sum(sd, axis=0))


@triton.jit
def _fwd_fill(part_ptr, y_ptr, M, C, F, HW, nchunks, inv_L,
              BLOCK_P: tl.constexpr, BLOCK_HW: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (sample n, stat channel f)
    n = pid // F
    f = pid % F
    m = n % M
    base = (m * F + f) * nchunks
    acc = tl.zeros((BLOCK_P,), dtype=part_ptr.dtype.element_ty)
    for p0 in range(0, nchunks, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + base + p, mask=p < nchunks, other=0.0)
    s = tl.sum(acc, axis=0) * inv_L
    out = y_ptr + (n * (C + F) + C + f) * HW
    for q0 in range(0, HW, BLOCK_HW):
        q = q0 + tl.arange(0, BLOCK_HW)
        val = tl.zeros((BLOCK_HW,), dtype=part_ptr.dtype.element_ty) + s
        tl.store(out + q, val.to(y_ptr.dtype.element_ty), mask=q < HW)


@triton.jit
def _bwd_coef(dy_ptr, coef_ptr, M, C, F, HW, G, scale,
              BLOCK_G: tl.constexpr, BLOCK_HW: tl.constexpr, ACC_F64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one program per (m, f)
    m = pid // F
    f = pid % F
    g = tl.arange(0, BLOCK_G).to(tl.int64)
    # dy[g*M + m, C + f, :, :]
    row = ((g * M + m) * (C + F) + C + f) * HW
    if ACC_F64:
        acc = tl.zeros((BLOCK_G, BLOCK_HW), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_G, BLOCK_HW), dtype=tl.float32)
    for q0 in range(0, HW, BLOCK_HW):
        q = q0 + tl.arange(0, BLOCK_HW)
        mask = (g < G)[:, None] & (q < HW)[None, :]
        acc += tl.load(dy_ptr + row[:, None] + q[None, :], mask=mask, other=0.0).to(acc.dtype)
    tl.store(coef_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0) * scale)


@triton.jit
def _bwd_dx(x_ptr, dy_ptr, dx_ptr, coef_ptr, M, C, F, HW, L, G, inv_G, eps,
            BLOCK_G: tl.constexpr, BLOCK: tl.constexpr, ACC_F64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    nchunks = tl.cdiv(L, BLOCK)
    mf = pid // nchunks
    chunk = pid % nchunks
    m = mf // F
    f = mf % F
    gs = M * C * HW
    gys = M * (C + F) * HW
    g = tl.arange(0, BLOCK_G).to(tl.int64)
    j = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = (g < G)[:, None] & (j < L)[None, :]
    xoff = (m * C * HW + f * L) + g[:, None] * gs + j[None, :]
    yoff = (m * (C + F) * HW + f * L) + g[:, None] * gys + j[None, :]
    if ACC_F64:
        v = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(tl.float64)
        dy = tl.load(dy_ptr + yoff, mask=mask, other=0.0).to(tl.float64)
    else:
        v = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + yoff, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(v, axis=0) * inv_G
    d = tl.where(mask, v - mean[None, :], 0.0)
    var = tl.sum(d * d, axis=0) * inv_G
    r = tl.load(coef_ptr + mf) / tl.sqrt(var + eps)  # S / (L G std)
    dx = dy + r[None, :] * d
    tl.store(dx_ptr + xoff, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launch configuration
def _blocks(G, L):
    """(BLOCK_G, BLOCK): all G members as rows, positions per program so the tile holds
    about _TILE elements (at least 16 positions, at most the span rounded up)."""
    block_g = triton.next_power_of_2(G)
    block = max(16, min(triton.next_power_of_2(max(L, 1)), _TILE // block_g))
    return block_g, block


def _geometry(x, G, F):
    N, C, H, W = x.shape
    if x.dim() != 4 or N % G or C % F:
        raise ValueError(f"minibatch_std triton kernel: bad geometry x={tuple(x.shape)}, G={G}, F={F}")
    M, c, HW = N // G, C // F, H * W
    return N, C, H, W, M, c, HW, c * HW


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward(x, G, F, eps):
    """y = [x, s broadcast] with G (resolved, divides N) and F = num_channels."""
    x = x.contiguous()
    N, C, H, W, M, c, HW, L = _geometry(x, G, F)
    y = torch.empty((N, C + F, H, W), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_g, block = _blocks(G, L)
    nchunks = triton.cdiv(L, block)
    acc = _acc_dtype(x.dtype)
    part = torch.empty(M * F * nchunks, dtype=acc, device=x.device)
    f64 = acc == torch.float64
    _fwd_stats[(M * F * nchunks,)](x, y, part, M, C, F, HW, L, G, 1.0 / G, float(eps),
                                   BLOCK_G=block_g, BLOCK=block, ACC_F64=f64, num_warps=_NUM_WARPS)
    _fwd_fill[(N * F,)](part, y, M, C, F, HW, nchunks, 1.0 / L,
                        BLOCK_P=128, BLOCK_HW=256, num_warps=_NUM_WARPS)
    return y


def backward(grad, x, G, F, eps):
    """dx given dy = grad ([N, C + F, H, W])."""
    x = x.contiguous()
    grad = grad.contiguous()
    N, C, H, W, M, c, HW, L = _geometry(x, G, F)
    if tuple(grad.shape) != (N, C + F, H, W):
        raise ValueError(f"minibatch_std triton backward: grad has shape {tuple(grad.shape)}, "
                         f"expected {(N, C + F, H, W)}")
    grad = grad.to(x.dtype)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if dx.numel() == 0:
        return dx
    acc = _acc_dtype(x.dtype)
    f64 = acc == torch.float64
    block_g, block = _blocks(G, L)
    coef = torch.empty(M * F, dtype=acc, device=x.device)
    _bwd_coef[(M * F,)](grad, coef, M, C, F, HW, G, 1.0 / (L * G),
                        BLOCK_G=block_g, BLOCK_HW=max(16, min(256, _TILE // block_g)),
                        ACC_F64=f64, num_warps=_NUM_WARPS)
    nchunks = triton.cdiv(L, block)
    _bwd_dx[(M * F * nchunks,)](x, grad, dx, coef, M, C, F, HW, L, G, 1.0 / G, float(eps),
                                BLOCK_G=block_g, BLOCK=block, ACC_F64=f64, num_warps=_NUM_WARPS)
    return dx


# ---------------------------------------------------------------- ahead-of-time specs
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}


def aot_specs():
    """The specialisations launched above, for compiling ahead of time (static checks of
    registers/spills on sm_90): a list of {"name", "fn", "signature", "constexprs"}.
    Covers float32 and bfloat16 at G = 4 and G = 16 (blocks as _blocks picks them) and the
    fill/coef kernels; integer arguments as i32 (they fit for tensors below 2^31
    elements per member stride), scalars fp32."""
    specs = []
    for dt in (torch.float32, torch.bfloat16):
        p = _PTR[dt]
        tag = "fp32" if dt == torch.float32 else "bf16"
        for G in (4, 16):
            block_g, block = _blocks(G, 1 << 20)
            ce = {"BLOCK_G": block_g, "BLOCK": block, "ACC_F64": False}
            specs.append({
                "name": f"minibatch_std_fwd_stats_{tag}_G{G}", "fn": _fwd_stats,
                "signature": {"x_ptr": p, "y_ptr": p, "part_ptr": "*fp32", "M": "i32", "C": "i32",
                              "F": "i32", "HW": "i32", "L": "i32", "G": "i32", "inv_G": "fp32",
                              "eps": "fp32", "BLOCK_G": "constexpr", "BLOCK": "constexpr",
                              "ACC_F64": "constexpr"},
                "constexprs": ce,
            })
            specs.append({
                "name": f"minibatch_std_bwd_dx_{tag}_G{G}", "fn": _bwd_dx,
                "signature": {"x_ptr": p, "dy_ptr": p, "dx_ptr": p, "coef_ptr": "*fp32", "M": "i32",
                              "C": "i32", "F": "i32", "HW": "i32", "L": "i32", "G": "i32", "inv_G": "fp32",
                              "eps": "fp32", "BLOCK_G": "constexpr", "BLOCK": "constexpr",
                              "ACC_F64": "constexpr"},
                "constexprs": ce,
            })
            specs.append({
                "name": f"minibatch_std_bwd_coef_{tag}_G{G}", "fn": _bwd_coef,
                "signature": {"dy_ptr": p, "coef_ptr": "*fp32", "M": "i32", "C": "i32", "F": "i32",
                              "HW": "i32", "G": "i32", "scale": "fp32", "BLOCK_G": "constexpr",
                              "BLOCK_HW": "constexpr", "ACC_F64": "constexpr"},
                "constexprs": {"BLOCK_G": block_g, "BLOCK_HW": max(16, min(256, _TILE // block_g)),
                               "ACC_F64": False},
            })
        specs.append({
            "name": f"minibatch_std_fwd_fill_{tag}", "fn": _fwd_fill,
            "signature": {"part_ptr": "*fp32", "y_ptr": p, "M": "i32", "C": "i32", "F": "i32", "HW": "i32",
                          "nchunks": "i32", "inv_L": "fp32", "BLOCK_P": "constexpr", "BLOCK_HW": "constexpr"},
            "constexprs": {"BLOCK_P": 128, "BLOCK_HW": 256},
        })
    for spec in specs:
        spec["num_warps"] = _NUM_WARPS
        # Triton's launcher specialises integers divisible by 16; the GAN shapes have
        # C, H*W and L = c*H*W divisible by 16, which is what lets it prove 16-byte
        # alignment of the member spans and use 128-bit accesses.
        spec["divisible_by_16"] = [a for a in ("C", "HW", "L") if a in spec["signature"]]
    return specs
