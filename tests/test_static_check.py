"""benchmarks/gpu/static_check.py: the ptxas report parser, the PTX/SASS feature scan, and
small real builds (a Triton kernel compiled ahead of time for sm_90 without a GPU, with
TRITON_INTERPRET=1 in the environment to prove it is cleared; a broken .cu failing)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "static_check.py")

_spec = importlib.util.spec_from_file_location("fastgan_static_check", SCRIPT)
sc = importlib.util.module_from_spec(_spec)
_saved = os.environ.get("TRITON_INTERPRET")
_spec.loader.exec_module(sc)  # it clears TRITON_INTERPRET for its own process: put it back
if _saved is not None:
    os.environ["TRITON_INTERPRET"] = _saved

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN7fastgan3fooEPf' for 'sm_80'
ptxas info    : Function properties for _ZN7fastgan3fooEPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers, 368 bytes cmem[0]
ptxas info    : Compiling entry function '_ZN7fastgan3barEPf' for 'sm_90a'
ptxas info    : Function properties for _ZN7fastgan3barEPf
    1040 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 368 bytes cmem[0]
"""


def test_parse_ptxas():
    rows = sc.parse_ptxas(PTXAS_LOG)
    assert [(r["mangled"], r["arch"]) for r in rows] == [("_ZN7fastgan3fooEPf", 80), ("_ZN7fastgan3barEPf", 90)]
    foo, bar = rows
    assert (foo["registers"], foo["spill_bytes"], foo["shared_bytes"], foo["stack_bytes"]) == (14, 0, 0, 0)
    assert (bar["registers"], bar["spill_stores"], bar["spill_loads"], bar["spill_bytes"]) == (255, 24, 16, 40)
    assert (bar["shared_bytes"], bar["stack_bytes"]) == (4096, 1040)


def test_ptx_and_sass_features():
    assert sc.ptx_features("ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];") == (True, False)
    assert sc.ptx_features("@%p1 ld.global.L1::evict_last.v4.b32 {%r1,%r2,%r3,%r4}, [%rd2];") == (True, False)
    assert sc.ptx_features("ld.global.nc.v2.f64 {%fd1, %fd2}, [%rd3];") == (True, False)
    assert sc.ptx_features("ld.global.b32 { %r1 }, [ %rd1 + 0 ];\nld.global.v2.b32 {%r1,%r2}, [%rd1];") == \
        (False, False)
    assert sc.ptx_features("cp.async.cg.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 16;") == (True, False)
    assert sc.ptx_features("cp.async.cg.shared.global [ %r253 + 0 ], [ %rd5 + 0 ], 0x10, %r254;") == (True, False)
    assert sc.ptx_features("cp.async.ca.shared.global [ %r253 + 0 ], [ %rd5 + 0 ], 0x4, %r254;") == (False, False)
    assert sc.ptx_features("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...}") == (False, True)
    assert sc.ptx_features("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...}") == (False, True)
    sass = ("\tFunction : _Z1aPf\n  /*0000*/ LDG.E.128 R4, desc[UR4][R2.64] ;\n"
            "\tFunction : _Z1bPf\n  /*0000*/ LDG.E R4, desc[UR4][R2.64] ;\n  HMMA.16816.F32.BF16 R8, R4, R6, R8 ;\n")
    assert sc.sass_features(sass) == {"_Z1aPf": (True, False), "_Z1bPf": (False, True)}


def test_short_name():
    assert sc.short_name("void fastgan::k<float, (int)4>(float const*, float*)") == "fastgan::k<float, (int)4>"
    assert sc.short_name("fastgan::plain(int)") == "fastgan::plain"
    assert sc.short_name("void fastgan::(anonymous namespace)::k<float>(float const*, int)") == "fastgan::k<float>"


def test_table_marks_missing_values():
    text = sc.table([{"name": "k", "kind": "cuda", "arch": 90, "registers": 32, "spill_bytes": 0,
                      "shared_bytes": 0, "stack_bytes": 0, "vector_loads": None, "mma": False}])
    assert text.splitlines()[2].split() == ["k", "cuda", "90", "32", "0", "0", "0", "-", "no"]
    long = "conv_transpose.conv_transpose_phase_fp32_relu_tf32_m128n128k32w8s3_and_more"
    cell = sc.table([{"name": long}]).splitlines()[2].split()[0]
    assert len(cell) == 60 and cell.startswith("conv_transpose.") and cell.endswith("m128n128k32w8s3_and_more")


KERNEL_FILE = '''
import triton
import triton.language as tl


@triton.jit
def scale_kernel(x_ptr, y_ptr, n, a, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * a, mask=mask)


def aot_specs():
    sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "a": "fp32"}
    return [
        {"name": "scale_n16", "fn": scale_kernel, "signature": sig, "constexprs": {"BLOCK": 1024},
         "divisible_by_16": ["n"], "num_warps": 4},
        {"name": "scale_any_n", "fn": scale_kernel, "signature": sig, "constexprs": {"BLOCK": 1024}},
    ]
'''


def _ptxas_available():
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return sc.triton_tool("ptxas") is not None


@pytest.mark.skipif(not _ptxas_available(), reason="triton (with its ptxas) is not installed")
def test_triton_aot_compile_without_gpu(tmp_path):
    path = tmp_path / "toy_kernels.py"
    path.write_text(KERNEL_FILE)
    out = tmp_path / "rows.json"
    env = dict(os.environ, TRITON_INTERPRET="1")  # must be cleared by the script
    proc = subprocess.run([sys.executable, SCRIPT, "--no-cuda", "--arch", "90", "--triton-files", str(path),
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"toy_kernels.scale_n16", "toy_kernels.scale_any_n"}
    for r in rows.values():
        assert r["kind"] == "triton" and r["arch"] == 90
        assert isinstance(r["registers"], int) and 0 < r["registers"] <= 255
        assert r["spill_bytes"] == 0 and r["mma"] is False
    # With n known divisible by 16 the masked loads vectorise to 128 bits; without, not.
    assert rows["toy_kernels.scale_n16"]["vector_loads"] is True
    assert rows["toy_kernels.scale_any_n"]["vector_loads"] is False
    assert "toy_kernels.scale_n16" in proc.stdout


@pytest.mark.skipif(sc.find_nvcc() is None, reason="nvcc is not installed")
def test_broken_cuda_source_fails(tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text("__global__ void k(float* y) { y[threadIdx.x] = undefined_name; }\n")
    proc = subprocess.run([sys.executable, SCRIPT, "--no-triton", "--arch", "90", "--sources", str(bad)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, FASTGAN_TORCH_CUDA_INCLUDE=str(tmp_path / "none")))
    # Either the headers are missing (a clear error) or nvcc rejects the source: both fail.
    assert proc.returncode != 0
    assert "FAIL" in proc.stdout or "does not hold" in proc.stderr


@pytest.mark.skipif(sc.find_nvcc() is None, reason="nvcc is not installed")
def test_cuda_kernel_report(tmp_path):
    src = tmp_path / "vec.cu"
    src.write_text(
        "__global__ void vec_copy(const float4* __restrict__ x, float4* __restrict__ y, int n) {\n"
        "  int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] = x[i]; }\n")
    rows, err, _ = sc.compile_cu(sc.find_nvcc(), str(src), [90], [], str(tmp_path), sc.triton_tool("cuobjdump"))
    assert err is None
    assert len(rows) == 1
    r = rows[0]
    assert r["name"] == "vec_copy" and r["arch"] == 90 and r["kind"] == "cuda"
    assert r["spill_bytes"] == 0 and r["stack_bytes"] == 0 and 0 < r["registers"] <= 255
    if sc.triton_tool("cuobjdump"):
        assert r["vector_loads"] is True and r["mma"] is False
