"""Triton kernels of the gradient-norm penalty (the "triton" backend of grad_norm).

Math (fastgan.reference.grad_norm, csrc/include/grad_norm.h): g viewed as [N, D],
    s_i = sum_j g_ij^2, penalty = 1/N sum_i (sqrt(s_i) - c)^2 (c = 0: 1/N sum_i s_i),
    dP/dg_ij = coef_i * g_ij, coef_i = go * 2/N * (1 - c / sqrt(s_i)) (go * 2/N at s_i = 0).

Three kernels, each sample cut into chunks of `chunk` elements (grid = N * chunks):
  _grad_norm_sumsq_kernel     one partial sum of squares per (sample, chunk): the only
                              pass over g in the forward (float32 accumulation for
                              half/bfloat16, float64 for float64);
  _grad_norm_finalize_kernel  one program adds the partials per sample in chunk order
                              (deterministic: no atomics), writes sumsq and the penalty;
  _grad_norm_scale_kernel     the backward: reads g once, writes coef_i * g once.
Scalars that must keep float64 precision (center) travel as an fp32 hi/lo pair, since
Triton passes Python floats as fp32; 1/N and 2/N are formed in-kernel from N.
"""
import struct

import torch
import triton
import triton.language as tl

from fastgan.ops._common import interpreting

# Elements per program and loop step. 1024 elements with 4 warps = 8 per thread: two
# 16-byte loads for float32, one for half/bfloat16.
BLOCK = 1024
NUM_WARPS = 4
# Finalize tile: BLOCK_N samples x BLOCK_C chunk partials per step (8 values per thread:
# no spills in float64).
BLOCK_N = 16
BLOCK_C = 64
# About this many programs in flight: several waves on a 132-SM GPU.
_TARGET_PROGRAMS = 2048
_MAX_CHUNK_BLOCKS = 64

_TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


@triton.jit
def _grad_norm_sumsq_kernel(g_ptr, partial_ptr, D, chunk, nchunks,
                            ACC_F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // nchunks
    c = pid - n * nchunks
    base = g_ptr + n.to(tl.int64) * D
    start = c * chunk
    end = tl.minimum(start + chunk, D)
    if ACC_F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Whole blocks without a mask (so aligned data gets 16-byte loads), then the tail.
    full_end = start + (end - start) // BLOCK * BLOCK
    for off in range(start, full_end, BLOCK):
        x = tl.load(base + off + tl.arange(0, BLOCK)).to(acc.dtype)
        acc += x * x
    idx = full_end + tl.arange(0, BLOCK)
    x = tl.load(base + idx, mask=idx < end, other=0.0).to(acc.dtype)
    acc += x * x
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _grad_norm_finalize_kernel(partial_ptr, sumsq_ptr, penalty_ptr, N, nchunks, center_hi, center_lo,
                               CENTERED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    acc_ty = partial_ptr.dtype.element_ty
    zero = tl.zeros([], dtype=acc_ty)  # promotes the fp32 scalars before they are added
    center = (center_hi + zero) + (center_lo + zero)
    total = tl.zeros([BLOCK_N], dtype=acc_ty)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < N
        s = tl.zeros([BLOCK_N], dtype=acc_ty)
        for c0 in range(0, nchunks, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            ptrs = partial_ptr + rows[:, None].to(tl.int64) * nchunks + cols[None, :]
            p = tl.load(ptrs, mask=rmask[:, None] & (cols[None, :] < nchunks), other=0.0)
            s += tl.sum(p, axis=1)
        tl.store(sumsq_ptr + rows, s, mask=rmask)
        if CENTERED:
            t = tl.sqrt(s) - center
            term = t * t
        else:
            term = s
        total += tl.where(rmask, term, 0.0)
    count = tl.full([], 0, tl.int32) + N  # a tensor even when N is specialised to 1
    tl.store(penalty_ptr, tl.sum(total, axis=0) / count.to(acc_ty))


@triton.jit
def _grad_norm_scale_kernel(g_ptr, out_ptr, sumsq_ptr, go_ptr, D, chunk, nchunks, N, center_hi, center_lo,
                            CENTERED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // nchunks
    c = pid - n * nchunks
    acc_ty = sumsq_ptr.dtype.element_ty
    count = tl.full([], 0, tl.int32) + N
    coef = tl.load(go_ptr).to(acc_ty) * 2.0 / count.to(acc_ty)
    if CENTERED:
        zero = tl.zeros([], dtype=acc_ty)
        center = (center_hi + zero) + (center_lo + zero)
        s = tl.load(sumsq_ptr + n)
        # sqrt only of s > 0; at s = 0 g_i = 0 and the finite go * 2/N gives 0.
        safe = tl.where(s > 0, s, 1.0)
        coef = coef * tl.where(s > 0, 1.0 - center / tl.sqrt(safe), 1.0)
    offset = n.to(tl.int64) * D
    start = c * chunk
    end = tl.minimum(start + chunk, D)
    src = g_ptr + offset
    dst = out_ptr + offset
    full_end = start + (end - start) // BLOCK * BLOCK
    for off in range(start, full_end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        x = tl.load(src + idx).to(acc_ty)
        tl.store(dst + idx, (x * coef).to(out_ptr.dtype.element_ty))
    idx = full_end + tl.arange(0, BLOCK)
    mask = idx < end
    x = tl.load(src + idx, mask=mask, other=0.0).to(acc_ty)
    tl.store(dst + idx, (x * coef).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launchers
def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _split(value):
    """value as an fp32 pair (hi, lo) with hi + lo = value to about 48 bits."""
    hi = _f32(value)
    return hi, _f32(value - hi)


def _f32(value):
    return struct.unpack("f", struct.pack("f", value))[0]


def _block():
    # Under the interpreter (tests on the CPU) a small block makes the per-sample loops
    # and the chunking run several steps even on tiny inputs.
    return 64 if interpreting() else BLOCK


def plan(N, D, block=None, chunk=None):
    """(block, chunk, nchunks): chunk is a multiple of block, about _TARGET_PROGRAMS programs."""
    block = block or _block()
    if chunk is None:
        per_sample = max(1, -(-_TARGET_PROGRAMS // N))
        blocks = -(-max(D, 1) // (per_sample * block))
        chunk = block * min(max(blocks, 1), _MAX_CHUNK_BLOCKS)
    if chunk % block != 0 or chunk <= 0:
        raise ValueError(f"chunk={chunk} must be a positive multiple of block={block}")
    nchunks = max(1, -(-D // chunk))
    return block, chunk, nchunks


def _check(grad):
    if grad.dtype not in _TRITON_TYPE:
        raise TypeError(f"the triton grad_norm kernels take {list(_TRITON_TYPE)}, got {grad.dtype}")
    if not grad.is_contiguous():
        raise ValueError("the triton grad_norm kernels need a contiguous gradient (call .contiguous())")
    N = grad.shape[0]
    D = grad.numel() // N if N else 0
    if D >= 2**31 - 2 * BLOCK * _MAX_CHUNK_BLOCKS:
        raise ValueError(f"the triton grad_norm kernels index a sample with int32: D={D} elements "
                         "per sample is too many; use the cuda backend")
    return N, D


def forward(grad, center, block=None, chunk=None):
    """(penalty, sumsq) of grad [N, ...] (contiguous); see the module docstring."""
    N, D = _check(grad)
    acc = _acc_dtype(grad.dtype)
    if D == 0:  # no elements (a null data pointer on the GPU): every norm is 0
        sumsq = torch.zeros(N, dtype=acc, device=grad.device)
        return torch.full((), float(center) ** 2, dtype=acc, device=grad.device), sumsq
    block, chunk, nchunks = plan(N, D, block, chunk)
    partial = torch.empty(N * nchunks, dtype=acc, device=grad.device)
    sumsq = torch.empty(N, dtype=acc, device=grad.device)
    penalty = torch.empty((), dtype=acc, device=grad.device)
    _grad_norm_sumsq_kernel[(N * nchunks,)](grad, partial, D, chunk, nchunks,
                                            ACC_F64=acc == torch.float64, BLOCK=block,
                                            num_warps=NUM_WARPS)
    hi, lo = _split(float(center))
    _grad_norm_finalize_kernel[(1,)](partial, sumsq, penalty, N, nchunks, hi, lo,
                                     CENTERED=center != 0, BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C,
                                     num_warps=NUM_WARPS)
    return penalty, sumsq


def backward(grad_out, grad, sumsq, center, block=None, chunk=None, out=None):
    """d penalty / d grad = coef_i * grad_i, one read of grad and one write (into `out`
    when given: a contiguous tensor like grad)."""
    N, D = _check(grad)
    acc = _acc_dtype(grad.dtype)
    if sumsq.dtype != acc or sumsq.shape != (N,):
        raise ValueError(f"sumsq must be the forward's [{N}] {acc} sums of squares, got "
                         f"{tuple(sumsq.shape)} {sumsq.dtype}")
    if out is None:
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
    elif out.shape != grad.shape or out.dtype != grad.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of grad's shape and dtype")
    if D == 0:
        return out
    block, chunk, nchunks = plan(N, D, block, chunk)
    go = grad_out.reshape(1)
    hi, lo = _split(float(center))
    _grad_norm_scale_kernel[(N * nchunks,)](grad, out, sumsq, go, D, chunk, nchunks, N, hi, lo,
                                            CENTERED=center != 0, BLOCK=block, num_warps=NUM_WARPS)
    return out


# ---------------------------------------------------------------- static checks
def aot_specs():
    """The specialisations forward()/backward() launch on a GPU, for the static checker
    (triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget(...),
    options={"num_warps", "num_stages"})): every gradient dtype, centred and not.
    Pointers are 16-byte aligned ("tt.divisibility" 16, as torch allocations are), and
    D and chunk divisible by 16, as Triton's launcher specialises them for the usual
    image gradients (D = C*H*W, e.g. 3*64*64; chunk is a multiple of BLOCK)."""
    specs = []
    for dtype, ty in _TRITON_TYPE.items():
        acc_ty = "fp64" if dtype == torch.float64 else "fp32"
        fn = _grad_norm_sumsq_kernel
        specs.append(_spec(f"grad_norm_sumsq_{ty}", fn,
                           {"g_ptr": "*" + ty, "partial_ptr": "*" + acc_ty, "D": "i32", "chunk": "i32",
                            "nchunks": "i32"},
                           {"ACC_F64": dtype == torch.float64, "BLOCK": BLOCK}))
        for centered in (False, True):
            fn = _grad_norm_scale_kernel
            specs.append(_spec(f"grad_norm_scale_{ty}_{'centered' if centered else 'plain'}", fn,
                               {"g_ptr": "*" + ty, "out_ptr": "*" + ty, "sumsq_ptr": "*" + acc_ty,
                                "go_ptr": "*" + acc_ty, "D": "i32", "chunk": "i32", "nchunks": "i32",
                                "N": "i32", "center_hi": "fp32", "center_lo": "fp32"},
                               {"CENTERED": centered, "BLOCK": BLOCK}))
    for acc_ty in ("fp32", "fp64"):
        for centered in (False, True):
            fn = _grad_norm_finalize_kernel
            specs.append(_spec(f"grad_norm_finalize_{acc_ty}_{'centered' if centered else 'plain'}", fn,
                               {"partial_ptr": "*" + acc_ty, "sumsq_ptr": "*" + acc_ty,
                                "penalty_ptr": "*" + acc_ty, "N": "i32", "nchunks": "i32",
                                "center_hi": "fp32", "center_lo": "fp32"},
                               {"CENTERED": centered, "BLOCK_N": BLOCK_N, "BLOCK_C": BLOCK_C}))
    return specs


def _spec(name, fn, runtime, constexprs):
    signature = {}
    for arg in fn.arg_names:
        signature[arg] = "constexpr" if arg in constexprs else runtime[arg]
    aligned = [i for i, arg in enumerate(fn.arg_names)
               if signature[arg].startswith("*") or arg in ("D", "chunk")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    return {"name": name, "fn": fn, "signature": signature, "constexprs": constexprs, "attrs": attrs,
            "num_warps": NUM_WARPS, "num_stages": 1}
