"""Shared setup for the benchmark suite (pytest-benchmark).

Options (pytest benchmarks/... or python benchmarks/run.py):
  --device cpu|cuda   where the tensors live (default: cuda if available, else cpu)
  --quick             fewer shapes and rounds (the README's main job uses it)
  --dtypes a,b        dtypes to run (default: float32 on cpu; float32,bfloat16 on cuda)

What a bench file uses (import from here: `from conftest import ...`):
  DEVICE, QUICK             the chosen device ("cpu"/"cuda") and quick mode
  providers(op)             ["fastgan", "fastgan-<backend>"..., "eager", "compile"]
  dtypes()                  the dtype names to parametrise over
  pick(full, quick)         the full list of shapes, or the quick one under --quick
  per_device(cpu, cuda, quick=None)
                            shapes by device: on CUDA use sizes several times the L2
                            (60 MB on an H200) so that memory-bound ops stream from HBM
  provider_fn(provider, fastgan_fn, reference_fn)
                            the callable that a provider times: fastgan_fn with the
                            backend forced ("fastgan" = auto), reference_fn ("eager")
                            or torch.compile(reference_fn) ("compile")
  run(benchmark, fn, *args) warm up (so torch.compile and autotuning stay out of the
                            numbers), then time fn(*args); on CUDA every call ends with
                            torch.cuda.synchronize(), since pytest-benchmark reads the
                            host clock and CUDA launches return before the work is done
  record(benchmark, op=..., provider=..., mode=..., dtype=..., shape=...,
         bytes=... or flops=...)
                            fills benchmark.extra_info (adds "device"); the report reads it

Each JSON also carries machine_info: torch and triton versions, device name, threads,
git revision (see pytest_benchmark_update_machine_info below).
"""
import functools
import os
import platform
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUICK = False
DTYPES = None  # list of dtype names, set in pytest_configure

# pytest-benchmark defaults tuned for a 2-core machine shared with others: a few rounds,
# short time per benchmark, warm-up on (first calls pay for allocation, JIT, autotune).
_SETTINGS = {
    # option name: (full, quick)
    "benchmark_min_rounds": (5, 3),
    "benchmark_max_time": (0.5, 0.15),
    "benchmark_warmup": (True, True),
    "benchmark_warmup_iterations": (10, 3),
}
_SETTING_FLAGS = {
    "benchmark_min_rounds": "--benchmark-min-rounds",
    "benchmark_max_time": "--benchmark-max-time",
    "benchmark_warmup": "--benchmark-warmup",
    "benchmark_warmup_iterations": "--benchmark-warmup-iterations",
}


def pytest_addoption(parser):
    group = parser.getgroup("fastgan benchmarks")
    group.addoption("--device", default=None, choices=["cpu", "cuda"],
                    help="device for the benchmark tensors (default: cuda if available, else cpu)")
    group.addoption("--quick", action="store_true", default=False,
                    help="fewer shapes and rounds")
    group.addoption("--dtypes", default=None,
                    help="comma-separated dtype names (default: float32 on cpu, float32,bfloat16 on cuda)")


def _dtype(name):
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise pytest.UsageError(f"--dtypes: {name!r} is not a torch dtype; use e.g. float32,bfloat16")
    return dt


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global DEVICE, QUICK, DTYPES
    device = config.getoption("--device", default=None)
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda was given but torch sees no CUDA device "
                                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if device:
        DEVICE = device
    QUICK = bool(config.getoption("--quick", default=False))
    names = config.getoption("--dtypes", default=None)
    if names:
        DTYPES = [n.strip().replace("torch.", "") for n in names.split(",") if n.strip()]
        for n in DTYPES:
            _dtype(n)
    else:
        DTYPES = ["float32"] if DEVICE == "cpu" else ["float32", "bfloat16"]
    # Apply our defaults to the settings the user did not give on the command line.
    given = " ".join(str(a) for a in config.invocation_params.args)
    for option, (full, quick) in _SETTINGS.items():
        if _SETTING_FLAGS[option] not in given and hasattr(config.option, option):
            setattr(config.option, option, quick if QUICK else full)


# ------------------------------------------------------------------ helpers for bench files
def dtypes():
    """The dtype names to parametrise over (from --dtypes or the device default)."""
    return list(DTYPES or ["float32"])


def torch_dtype(name):
    """'bfloat16' -> torch.bfloat16."""
    return _dtype(str(name).replace("torch.", ""))


def pick(full, quick):
    """full under a normal run, quick under --quick."""
    return list(quick if QUICK else full)


def per_device(cpu, cuda=None, quick=None):
    """quick (if given) under --quick, else cuda (if given) on CUDA, else cpu."""
    if QUICK and quick is not None:
        return list(quick)
    if DEVICE == "cuda" and cuda is not None:
        return list(cuda)
    return list(cpu)


def providers(op, device=None):
    """Providers for `op` on `device`: "fastgan" (the automatic backend), then
    "fastgan-<backend>" for every other backend that can run there (not the reference:
    "eager" is the reference), then "eager" and "compile"."""
    device = device or DEVICE
    out = ["fastgan"]
    try:
        import fastgan.ops  # noqa: F401  (registers the ops)
        from fastgan import backends
    except Exception:  # the suite still times eager/compile without fastgan
        return out + ["eager", "compile"]
    order = backends._AUTO_ORDER.get(device, ())
    auto = next((b for b in order if backends.why_not(op, b) is None), "reference")
    for name in backends.BACKENDS:
        if name in (auto, "reference"):
            continue
        if name == "triton" and device == "cpu":
            continue  # the Triton interpreter is for tests, not speed
        if name in ("cpu",) and device != "cpu":
            continue
        if name in ("cuda", "triton") and device != "cuda":
            continue
        if backends.why_not(op, name) is None:
            out.append(f"fastgan-{name}")
    return out + ["eager", "compile"]


def backend_of(provider):
    """'fastgan' -> 'auto', 'fastgan-cpu' -> 'cpu', others -> None."""
    if provider == "fastgan":
        return "auto"
    if provider.startswith("fastgan-"):
        return provider[len("fastgan-"):]
    return None


def provider_fn(provider, fastgan_fn, reference_fn, compile_kwargs=None):
    """The callable that `provider` times."""
    backend = backend_of(provider)
    if backend is not None:
        from fastgan import backends

        @functools.wraps(fastgan_fn)
        def forced(*args, **kwargs):
            with backends.use(backend):
                return fastgan_fn(*args, **kwargs)
        return forced
    if provider == "eager":
        return reference_fn
    if provider == "compile":
        torch._dynamo.reset()  # no recompile limit hit across parametrisations
        return torch.compile(reference_fn, **(compile_kwargs or {}))
    raise ValueError(f"unknown provider {provider!r}")


def synchronized(fn, device=None):
    """fn followed by torch.cuda.synchronize() on CUDA (host timers need the work done)."""
    if (device or DEVICE) != "cuda":
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out
    return wrapper


def run(benchmark, fn, *args, warmup=2, **kwargs):
    """Warm up fn(*args) `warmup` times (compilation, autotuning, allocator), then time it."""
    fn = synchronized(fn)
    for _ in range(warmup):
        fn(*args, **kwargs)
    return benchmark(fn, *args, **kwargs)


def _shape_str(shape):
    if isinstance(shape, (list, tuple)):
        return "x".join(str(s) for s in shape)
    return str(shape)


def record(benchmark, *, op, provider, mode, dtype, shape, bytes=None, flops=None, **extra):
    """Store the facts the report needs in benchmark.extra_info.

    op, provider ("fastgan", "fastgan-cpu", "eager", "compile"), mode ("fwd"/"fwdbwd"),
    dtype (name or torch.dtype), shape (tuple or string), and the minimal bytes moved
    (each input read once, each output written once) for memory-bound work or the flops
    for compute-bound work. Extra keys are stored as given.
    """
    if bytes is None and flops is None:
        raise ValueError("record() needs bytes= (memory-bound) or flops= (compute-bound)")
    info = benchmark.extra_info
    info["op"] = str(op)
    info["provider"] = str(provider)
    info["mode"] = str(mode)
    info["dtype"] = str(dtype).replace("torch.", "")
    info["shape"] = _shape_str(shape)
    info["device"] = DEVICE
    if bytes is not None:
        info["bytes"] = int(bytes)
    if flops is not None:
        info["flops"] = int(flops)
    info.update(extra)
    return info


# ------------------------------------------------------------------ machine info
def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


# Load average when the run started: a busy machine (load above the core count) makes
# CPU timings meaningless, and the report says so.
LOAD_AT_START = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_facts():
    """torch/triton versions, device name, threads, git revision: for every JSON."""
    facts = {
        "load_average_at_start": LOAD_AT_START,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "fastgan_device": DEVICE,
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "quick": QUICK,
        "dtypes": dtypes(),
    }
    try:
        import triton
        facts["triton"] = triton.__version__
    except Exception:
        facts["triton"] = None
    if DEVICE == "cuda" and torch.cuda.is_available():
        facts["device_name"] = torch.cuda.get_device_name()
        props = torch.cuda.get_device_properties(0)
        facts["gpu_sms"] = props.multi_processor_count
        facts["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        l2 = getattr(props, "L2_cache_size", None)
        if l2:
            facts["gpu_l2_mb"] = round(l2 / 1e6, 1)
    else:
        facts["device_name"] = facts["cpu_model"]
    rev = _git("rev-parse", "--short", "HEAD")
    if rev and _git("status", "--porcelain", "--untracked-files=no"):
        rev += "+dirty"
    facts["git_revision"] = rev or "unknown"
    try:
        from fastgan import _ext
        facts["fastgan_extension"] = _ext.C is not None
        facts["fastgan_cuda_kernels"] = bool(_ext.HAS_CUDA_KERNELS)
    except Exception:
        pass
    return facts


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(machine_facts())
