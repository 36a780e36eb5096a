"""Static GPU check without a GPU: build every CUDA and Triton kernel for sm_80 / sm_90 and
read the compiler's resource report.

    python benchmarks/gpu/static_check.py [--json FILE] [--arch 80,90] [--jobs N]
                                          [--no-cuda] [--no-triton] [--keep DIR]

CUDA: every csrc/cuda/*.cu is compiled (compile only, one nvcc call per file for all
arches) with $CUDA_HOME/bin/nvcc (else /usr/local/cuda/bin/nvcc, else nvcc on PATH)
and `-Xptxas -v`, against the headers of a CUDA build of torch: torch's own when torch
is a CUDA build, else the include/ folder of the torch CUDA wheel (TORCH_WHEEL_VERSION),
found at $FASTGAN_TORCH_CUDA_INCLUDE, or in the cache ~/.cache/fastgan/torch-cuda-include
(extracted there from the wheel with zipfile, only torch/include/; the wheel is taken from
$FASTGAN_TORCH_CUDA_WHEEL_DIR or ~/.cache/fastgan/wheels, or fetched with
`pip download --no-deps torch==TORCH_WHEEL_VERSION`). ptxas's report gives registers,
spill stores/loads, shared memory and stack frame per kernel; the SASS (cuobjdump, the
copy Triton ships) says whether there are 128-bit global loads and mma/wgmma.

Triton: every module kernels/<op>.py (imported as fastgan.kernels.<op>) that defines
`aot_specs()` -> list of {"name", "fn", "signature": {arg: type}, "constexprs": {arg: value},
optional "num_warps", "num_stages", "attrs" or "divisible_by_16": [int args]} is compiled
ahead of time for GPUTarget("cuda", arch, 32) with triton.compile(ASTSource(...)). Pointer
arguments are assumed 16-byte aligned (what Triton's launcher assumes for torch tensors).
Registers, spills and stack come from ptxas -v over the kernel's PTX (Triton's ptxas),
shared memory from the kernel's metadata, 128-bit loads and mma/wgmma from the PTX.
A module without aot_specs() is a warning, not a failure.

Environment: FASTGAN_TORCH_CUDA_INCLUDE (torch's include/ of a CUDA build),
FASTGAN_TORCH_CUDA_WHEEL_DIR (where a torch CUDA wheel lies), FASTGAN_CUDA_EXTRA_INCLUDE
(more include folders, os.pathsep-separated), CUDA_HOME.

Prints a table; --json writes the rows {name, kind: "cuda"|"triton", arch, registers,
spill_bytes, shared_bytes, stack_bytes, vector_loads, mma, ...}. Exit status 1 when a
build fails or any kernel spills, else 0. Nothing is cached except the extracted headers
(checked against the wheel version); objects go to a fresh temporary folder.
"""
import os

# Triton must compile for real here: the interpreter (TRITON_INTERPRET=1, which the test
# suite sets) turns @triton.jit functions into Python that cannot be compiled ahead of
# time, and it is read when triton is imported, so it is cleared first.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import glob  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCH_WHEEL_VERSION = "2.14.1"
CACHE = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "fastgan")

# Flags torch.utils.cpp_extension gives nvcc for an extension (so the check sees what the
# real build compiles), plus the ones setup.py adds.
NVCC_FLAGS = [
    "-std=c++20", "-O3", "-lineinfo", "-Xptxas", "-v",
    "--expt-relaxed-constexpr", "--compiler-options", "-fPIC",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "-DFASTGAN_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
    "-D_GLIBCXX_USE_CXX11_ABI=1",
]


def warn(msg):
    print(f"static_check: warning: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ parsing
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text):
    """ptxas -v output -> [{mangled, arch, registers, spill_stores, spill_loads,
    spill_bytes, shared_bytes, stack_bytes}] for every entry function (kernel).

    The report has, per kernel: "Compiling entry function 'NAME' for 'sm_XX'", then
    "Function properties for NAME" followed by the stack-frame/spill line, then
    "Used R registers, ... S bytes smem, ..." (smem only when used).
    """
    rows = []
    current = None
    props_for = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"mangled": m.group(1), "arch": int(m.group(2)[3:].rstrip("a")), "registers": None,
                       "spill_stores": 0, "spill_loads": 0, "spill_bytes": 0, "shared_bytes": 0,
                       "stack_bytes": 0}
            rows.append(current)
            props_for = None
            continue
        m = _PROPS.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = _FRAME.search(line)
        if m and current is not None and props_for == current["mangled"]:
            current["stack_bytes"] = int(m.group(1))
            current["spill_stores"] = int(m.group(2))
            current["spill_loads"] = int(m.group(3))
            current["spill_bytes"] = current["spill_stores"] + current["spill_loads"]
            continue
        m = _USED.search(line)
        if m and current is not None and current["registers"] is None:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["shared_bytes"] = int(s.group(1)) if s else 0
    return rows


# 128-bit global loads in PTX: ld.global[.qualifiers].v4 of 32-bit elements or .v2 of
# 64-bit ones, 16-byte cp.async (global -> shared) and the bulk tensor copy (TMA).
_PTX_VEC = re.compile(r"\bld\.global[\w:.]*\.v4\.[bfsu]32\b|\bld\.global[\w:.]*\.v2\.[bfsu]64\b"
                      r"|\bcp\.async\.c[ag]\.shared\.global[^;]*\],\s*(?:16|0x10)\s*[,;]|\bcp\.async\.bulk")
_PTX_MMA = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\b")
# The same in SASS: LDG.E.128 (and wider), LDGSTS.E.BYPASS.128, UTMALDG; HMMA/HGMMA/IMMA...
_SASS_VEC = re.compile(r"\bLDG\.E[\w.]*\.(?:128|ENL2\.256)\b|\bLDGSTS[\w.]*\.128\b|\bUTMALDG\b|\bLDG\.E\.128\b")
_SASS_MMA = re.compile(r"\b(?:HMMA|HGMMA|IMMA|IGMMA|DMMA|QGMMA|BMMA)\b")


def ptx_features(ptx):
    """(has 128-bit global loads, has mma/wgmma) from PTX text."""
    return bool(_PTX_VEC.search(ptx)), bool(_PTX_MMA.search(ptx))


def sass_features(sass):
    """{mangled function name: (has 128-bit global loads, has mma)} from cuobjdump -sass."""
    out = {}
    name, body = None, []
    for line in sass.splitlines() + ["Function : <end>"]:
        m = re.search(r"Function : (\S+)", line)
        if m:
            if name is not None:
                text = "\n".join(body)
                out[name] = (bool(_SASS_VEC.search(text)), bool(_SASS_MMA.search(text)))
            name, body = m.group(1), []
        elif name is not None:
            body.append(line)
    out.pop("<end>", None)
    return out


# ------------------------------------------------------------------ tools
def find_nvcc():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    which = shutil.which("nvcc")
    if which:
        candidates.append(which)
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def triton_tool(name):
    """Path of a tool Triton ships (ptxas, cuobjdump), else the CUDA toolkit's, else None."""
    try:
        from triton import knobs
        tool = getattr(knobs.nvidia, name, None)
        path = getattr(tool, "path", None)
        if path and os.path.isfile(path):
            return path
    except Exception:
        pass
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.isfile(path):
            return path
    except Exception:
        pass
    nvcc = find_nvcc()
    if nvcc:
        path = os.path.join(os.path.dirname(nvcc), name)
        if os.path.isfile(path):
            return path
    return shutil.which(name)


def triton_ptxas(arch):
    """The ptxas Triton itself uses for `arch` (Triton 3.9 ships two: the newer one for
    sm_90 and up), so that re-assembling its PTX for the report accepts its PTX version."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        try:
            tool = get_ptxas(arch)
        except TypeError:  # older Triton: get_ptxas() without the arch
            tool = get_ptxas()
        path = getattr(tool, "path", tool)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    except Exception:
        pass
    return triton_tool("ptxas")


def demangle(names):
    tool = shutil.which("cu++filt") or os.path.join(os.path.dirname(find_nvcc() or ""), "cu++filt")
    if not tool or not os.path.isfile(tool):
        tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=30).stdout
        pretty = out.splitlines()
        if len(pretty) == len(names):
            return dict(zip(names, pretty))
    except Exception:
        pass
    return {n: n for n in names}


def short_name(pretty):
    """'void fastgan::(anonymous namespace)::k<float, 4>(float const*, int)' ->
    'fastgan::k<float, 4>': drop the return type, the parameter list (the balanced
    parentheses at the end) and anonymous namespaces."""
    text = pretty.strip()
    if text.endswith(")"):
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            if text[i] == ")":
                depth += 1
            elif text[i] == "(":
                depth -= 1
                if depth == 0:
                    text = text[:i]
                    break
    text = text.replace("(anonymous namespace)::", "")
    if text.startswith("void "):
        text = text[5:]
    return text


# ------------------------------------------------------------------ torch CUDA headers
def _headers_ok(include):
    return (os.path.isfile(os.path.join(include, "torch", "extension.h"))
            and os.path.isfile(os.path.join(include, "ATen", "cuda", "CUDAContext.h"))
            and os.path.isdir(os.path.join(include, "torch", "csrc", "api", "include")))


def _find_wheel():
    dirs = [os.environ.get("FASTGAN_TORCH_CUDA_WHEEL_DIR"), os.path.join(CACHE, "wheels"), "/work/cache/torch_cuda"]
    for d in dirs:
        if d and os.path.isdir(d):
            found = sorted(glob.glob(os.path.join(d, f"torch-{TORCH_WHEEL_VERSION}-*.whl")))
            if found:
                return found[0]
    dest = os.path.join(CACHE, "wheels")
    os.makedirs(dest, exist_ok=True)
    print(f"static_check: fetching the torch {TORCH_WHEEL_VERSION} CUDA wheel (headers only are kept) into {dest}",
          flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"torch=={TORCH_WHEEL_VERSION}", "-d", dest]
    subprocess.run(cmd, check=True)
    found = sorted(glob.glob(os.path.join(dest, f"torch-{TORCH_WHEEL_VERSION}-*.whl")))
    if not found:
        raise RuntimeError(f"pip download put no torch-{TORCH_WHEEL_VERSION} wheel in {dest}")
    return found[0]


def extract_headers(wheel, target):
    """Unzip only torch/include/ of `wheel` into target/include (atomically)."""
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".extract-", dir=os.path.dirname(target) or ".")
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.startswith("torch/include/")]
            if not members:
                raise RuntimeError(f"{wheel} has no torch/include/: not a torch wheel?")
            z.extractall(tmp, members)
        os.makedirs(target, exist_ok=True)
        final = os.path.join(target, "include")
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(tmp, "torch", "include"), final)
        with open(os.path.join(target, "VERSION"), "w") as f:
            f.write(os.path.basename(wheel) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(target, "include")


def torch_cuda_includes():
    """Include dirs of a CUDA build of torch, and a note saying where they came from."""
    try:
        import torch
        if torch.version.cuda:
            from torch.utils import cpp_extension
            return cpp_extension.include_paths(device_type="cuda") if _accepts_device_type() \
                else cpp_extension.include_paths(cuda=True), f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    except Exception as exc:
        warn(f"could not use torch's own headers ({exc}); using the CUDA wheel's")
    include = os.environ.get("FASTGAN_TORCH_CUDA_INCLUDE")
    if include:
        if not _headers_ok(include):
            raise RuntimeError(f"FASTGAN_TORCH_CUDA_INCLUDE={include} does not hold torch's include/ "
                               "(torch/extension.h, ATen/cuda/CUDAContext.h)")
        note = f"FASTGAN_TORCH_CUDA_INCLUDE={include}"
    else:
        target = os.path.join(CACHE, "torch-cuda-include")
        include = os.path.join(target, "include")
        stamp = os.path.join(target, "VERSION")
        fresh = (_headers_ok(include) and os.path.isfile(stamp)
                 and f"torch-{TORCH_WHEEL_VERSION}-" in open(stamp).read())
        if not fresh:
            import fcntl
            os.makedirs(CACHE, exist_ok=True)
            with open(os.path.join(CACHE, "torch-cuda-include.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another check may be extracting right now
                fresh = (_headers_ok(include) and os.path.isfile(stamp)
                         and f"torch-{TORCH_WHEEL_VERSION}-" in open(stamp).read())
                if not fresh:
                    wheel = _find_wheel()
                    print(f"static_check: extracting torch/include from {wheel} into {target}", flush=True)
                    extract_headers(wheel, target)
        note = f"torch {TORCH_WHEEL_VERSION} CUDA wheel headers ({include})"
    return [include, os.path.join(include, "torch", "csrc", "api", "include")], note


def _accepts_device_type():
    import inspect
    from torch.utils import cpp_extension
    try:
        return "device_type" in inspect.signature(cpp_extension.include_paths).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ CUDA
def compile_cu(nvcc, source, archs, includes, workdir, cuobjdump=None):
    """Compile one .cu for all archs; returns (rows, error or None, seconds)."""
    start = time.time()
    obj = os.path.join(workdir, os.path.basename(source) + ".o")
    cmd = [nvcc, *NVCC_FLAGS]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    extra = [p for p in os.environ.get("FASTGAN_CUDA_EXTRA_INCLUDE", "").split(os.pathsep) if p]
    for inc in includes + extra + [sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc", "include")]:
        cmd += ["-I", inc]
    cmd += ["-c", source, "-o", obj]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.time() - start
    log = proc.stdout + proc.stderr
    name = os.path.relpath(source, ROOT) if source.startswith(ROOT + os.sep) else source
    if proc.returncode != 0:
        errors = [line for line in log.splitlines() if "error" in line.lower()]
        hint = ""
        if re.search(r"(cusparse|cublas\w*|cusolver\w*|curand\w*)\.h: No such file", log):
            hint = ("\nhint: ATen/cuda/CUDAContext.h pulls in the cuBLAS/cuSPARSE/cuSOLVER headers, which a "
                    "bare CUDA toolkit (nvcc only) lacks; include <c10/cuda/CUDAStream.h> "
                    "(c10::cuda::getCurrentCUDAStream), <c10/cuda/CUDAGuard.h> and <c10/cuda/CUDAException.h> "
                    "(C10_CUDA_KERNEL_LAUNCH_CHECK) instead, or add the library headers' folder to "
                    "FASTGAN_CUDA_EXTRA_INCLUDE")
        return [], (f"{name}: nvcc failed (exit {proc.returncode}):\n"
                    + "\n".join((errors or log.splitlines())[:30]) + hint), seconds
    rows = parse_ptxas(log)
    features = {}
    if cuobjdump:
        sass = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True)
        # SASS is dumped per arch; a function name repeats across arches, so split by arch.
        for block in re.split(r"\n(?=\s*arch = sm_)", sass.stdout):
            m = re.search(r"arch = sm_(\d+)", block)
            if m:
                for fn, feats in sass_features(block).items():
                    features[(fn, int(m.group(1)))] = feats
    pretty = demangle(sorted({r["mangled"] for r in rows}))
    out = []
    for r in rows:
        feats = features.get((r["mangled"], r["arch"]))
        out.append({
            "name": short_name(pretty.get(r["mangled"], r["mangled"])),
            "kind": "cuda", "arch": r["arch"], "source": name,
            "registers": r["registers"], "spill_bytes": r["spill_bytes"],
            "spill_stores": r["spill_stores"], "spill_loads": r["spill_loads"],
            "shared_bytes": r["shared_bytes"], "stack_bytes": r["stack_bytes"],
            "vector_loads": feats[0] if feats else None, "mma": feats[1] if feats else None,
            "mangled": r["mangled"],
        })
    return out, None, seconds


def check_cuda(archs, jobs, keep=None, only=None, sources=None):
    """Compile every csrc/cuda/*.cu (or the given sources); returns (rows, errors)."""
    if sources is None:
        sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    sources = [os.path.abspath(s) for s in sources]
    if only:
        sources = [s for s in sources if only in os.path.basename(s)]
    if not sources:
        warn("no csrc/cuda/*.cu files yet")
        return [], []
    nvcc = find_nvcc()
    if nvcc is None:
        return [], ["nvcc not found (set CUDA_HOME, or put nvcc on PATH); use --no-cuda to skip the CUDA build"]
    includes, note = torch_cuda_includes()
    print(f"static_check: nvcc {nvcc}; torch headers: {note}; {len(sources)} source(s), arch {archs}, "
          f"{jobs} job(s)", flush=True)
    cuobjdump = triton_tool("cuobjdump")
    workdir = keep or tempfile.mkdtemp(prefix="fastgan-static-")
    os.makedirs(workdir, exist_ok=True)
    rows, errors = [], []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(compile_cu, nvcc, s, archs, includes, workdir, cuobjdump): s for s in sources}
            for fut in concurrent.futures.as_completed(futures):
                got, err, seconds = fut.result()
                src = futures[fut]
                src = os.path.relpath(src, ROOT) if src.startswith(ROOT + os.sep) else src
                print(f"static_check: {src}: {'FAILED' if err else 'ok'} in {seconds:.1f} s", flush=True)
                rows += got
                if err:
                    errors.append(err)
                elif not got:
                    warn(f"{src} compiled but defines no kernel")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    rows.sort(key=lambda r: (r["source"], r["name"], r["arch"]))
    return rows, errors


# ------------------------------------------------------------------ Triton
def kernel_modules():
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(ROOT, "kernels", "*.py"))
                  if not os.path.basename(p).startswith("_"))


def _jit_fn(fn):
    """Unwrap @triton.autotune / @triton.heuristics to the JITFunction."""
    from triton.runtime.jit import JITFunction
    seen = 0
    while not isinstance(fn, JITFunction) and hasattr(fn, "fn") and seen < 10:
        fn, seen = fn.fn, seen + 1
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{fn!r} is not a @triton.jit function (is TRITON_INTERPRET=1 set?)")
    return fn


def ast_source(spec):
    """triton.compiler.ASTSource for one aot spec (see the module docstring)."""
    import triton
    fn = _jit_fn(spec["fn"])
    constexprs = dict(spec.get("constexprs", {}))
    signature = dict(spec["signature"])
    for name in constexprs:
        signature.setdefault(name, "constexpr")
    unknown = [n for n in list(signature) + list(constexprs) if n not in fn.arg_names]
    if unknown:
        raise ValueError(f"{spec['name']}: {unknown} are not arguments of {fn.__name__}{tuple(fn.arg_names)}")
    missing = [n for n in fn.arg_names if n not in signature]
    if missing:
        raise ValueError(f"{spec['name']}: signature lacks {missing} (arguments of {fn.__name__})")
    attrs = spec.get("attrs")
    if attrs is None:
        div16 = set(spec.get("divisible_by_16", ()))
        attrs = {}
        for i, name in enumerate(fn.arg_names):
            ty = signature[name]
            if (isinstance(ty, str) and ty.startswith("*")) or name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


def ptxas_report(ptx, ptxas, workdir):
    """Registers, spills, stack of the kernel(s) in `ptx`, from ptxas -v."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    gpu = m.group(1) if m else "sm_90a"
    src = os.path.join(workdir, "k.ptx")
    with open(src, "w") as f:
        f.write(ptx)
    proc = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", src, "-o", src + ".o"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed on the Triton PTX: {proc.stderr[-2000:]}")
    return parse_ptxas(proc.stdout + proc.stderr)


def compile_triton(spec, arch, ptxas, workdir):
    import triton
    from triton.backends.compiler import GPUTarget
    src = ast_source(spec)
    options = {k: spec[k] for k in ("num_warps", "num_stages", "num_ctas", "maxnreg") if k in spec}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    vec, mma = ptx_features(ptx)
    ptxas = triton_ptxas(arch) or ptxas
    report = ptxas_report(ptx, ptxas, workdir) if ptxas else []
    regs = max((r["registers"] or 0 for r in report), default=None)
    stores = sum(r["spill_stores"] for r in report)
    loads = sum(r["spill_loads"] for r in report)
    return {
        "registers": regs, "spill_bytes": stores + loads if report else None,
        "spill_stores": stores if report else None, "spill_loads": loads if report else None,
        "shared_bytes": int(getattr(compiled.metadata, "shared", 0) or 0),
        "stack_bytes": max((r["stack_bytes"] for r in report), default=None),
        "vector_loads": vec, "mma": mma,
        "num_warps": getattr(compiled.metadata, "num_warps", None),
        "num_stages": getattr(compiled.metadata, "num_stages", None),
    }


def _load_module(name_or_path):
    """fastgan.kernels.<name>, or a module loaded from a file path (--triton-files)."""
    if name_or_path.endswith(".py"):
        stem = os.path.splitext(os.path.basename(name_or_path))[0]
        spec = importlib.util.spec_from_file_location(f"_static_check_{stem}", name_or_path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # triton.jit reads the source through the module
        spec.loader.exec_module(mod)
        return stem, mod, name_or_path
    return name_or_path, importlib.import_module(f"fastgan.kernels.{name_or_path}"), f"kernels/{name_or_path}.py"


def check_triton(archs, only=None, keep=None, files=None):
    """AOT-compile the specs of every kernels/<op>.py (or of the given files); returns
    (rows, errors)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or "triton" in sys.modules and _interpreting():
        return [], ["triton was imported with TRITON_INTERPRET=1: run static_check.py as its own process"]
    try:
        import triton  # noqa: F401
    except Exception as exc:
        return [], [f"triton is not importable ({exc}); install it or use --no-triton"]
    ptxas = triton_tool("ptxas")
    if ptxas is None:
        warn("no ptxas found: registers and spills of Triton kernels are not reported")
    modules = [os.path.abspath(f) for f in files] if files else kernel_modules()
    if only:
        modules = [m for m in modules if only in os.path.basename(m)]
    if not modules:
        warn("no kernels/*.py modules yet")
    rows, errors = [], []
    workdir = keep or tempfile.mkdtemp(prefix="fastgan-static-triton-")
    os.makedirs(workdir, exist_ok=True)
    try:
        for entry in modules:
            where = entry if entry.endswith(".py") else f"kernels/{entry}.py"
            try:
                mod_name, mod, where = _load_module(entry)
            except Exception as exc:
                errors.append(f"{where}: import failed: {type(exc).__name__}: {exc}")
                continue
            if not hasattr(mod, "aot_specs"):
                warn(f"{where} has no aot_specs(): its kernels are not checked")
                continue
            try:
                specs = list(mod.aot_specs())
            except Exception as exc:
                errors.append(f"{where}: aot_specs() raised {type(exc).__name__}: {exc}")
                continue
            for spec in specs:
                for arch in archs:
                    name = f"{mod_name}.{spec.get('name', getattr(spec.get('fn'), '__name__', '?'))}"
                    start = time.time()
                    try:
                        info = compile_triton(spec, arch, ptxas, workdir)
                    except Exception as exc:
                        msg = str(exc).strip().splitlines()
                        errors.append(f"{name} (sm_{arch}): Triton compile failed: {type(exc).__name__}: "
                                      + "\n".join(msg[:20]))
                        continue
                    rows.append({"name": name, "kind": "triton", "arch": arch,
                                 "source": where, **info,
                                 "seconds": round(time.time() - start, 2)})
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return rows, errors


def _interpreting():
    try:
        from triton import knobs
        return bool(knobs.runtime.interpret)
    except Exception:
        return False


# ------------------------------------------------------------------ output
COLUMNS = [("name", "kernel", 60), ("kind", "kind", 6), ("arch", "arch", 4), ("registers", "regs", 4),
           ("spill_bytes", "spill", 5), ("shared_bytes", "smem", 6), ("stack_bytes", "stack", 5),
           ("vector_loads", "v128", 4), ("mma", "mma", 3)]


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def table(rows):
    lines = [" ".join(f"{title:<{w}}" if i == 0 else f"{title:>{w}}" for i, (_, title, w) in enumerate(COLUMNS))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        cells = []
        for i, (key, _, w) in enumerate(COLUMNS):
            text = _cell(r.get(key))
            if i == 0 and len(text) > w:  # keep both ends: the suffix tells specialisations apart
                text = text[: w // 2 - 1] + "~" + text[-(w - w // 2):]
            cells.append(f"{text:<{w}}" if i == 0 else f"{text:>{w}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument("--arch", default="80,90", help="compute capabilities (default: 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel nvcc processes")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA sources")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton kernels")
    parser.add_argument("--only", default=None, help="only sources / kernel modules whose name contains this")
    parser.add_argument("--keep", default=None, help="keep objects and PTX in this folder")
    parser.add_argument("--sources", nargs="+", default=None, help="CUDA sources to check instead of csrc/cuda/*.cu")
    parser.add_argument("--triton-files", nargs="+", default=None,
                        help="Python files with aot_specs() to check instead of kernels/*.py")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.replace(";", ",").split(",") if a.strip()]
    start = time.time()
    rows, errors = [], []
    if not args.no_cuda:
        got, errs = check_cuda(archs, args.jobs, args.keep, args.only, args.sources)
        rows += got
        errors += errs
    if not args.no_triton:
        got, errs = check_triton(archs, args.only, args.keep, args.triton_files)
        rows += got
        errors += errs
    print()
    print(table(rows) if rows else "(no kernels compiled)")
    spills = [r for r in rows if r.get("spill_bytes")]
    stacks = [r for r in rows if r.get("stack_bytes")]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\nstatic_check: {len(rows)} kernel build(s) in {time.time() - start:.1f} s; "
          f"{len(errors)} failure(s); {len(spills)} with spills; {len(stacks)} with a stack frame")
    for r in stacks:
        if not r.get("spill_bytes"):
            print(f"static_check: note: {r['name']} (sm_{r['arch']}) has a {r['stack_bytes']}-byte stack frame")
    for r in spills:
        print(f"static_check: FAIL: {r['name']} (sm_{r['arch']}) spills {r['spill_bytes']} bytes "
              f"({r.get('spill_stores')} stored, {r.get('spill_loads')} loaded)")
    for e in errors:
        print(f"static_check: FAIL: {e}")
    return 1 if errors or spills else 0


if __name__ == "__main__":
    sys.exit(main())
