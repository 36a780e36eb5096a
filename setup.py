"""Build fastgan and its extension fastgan._C.

Environment switches (all optional):
  FASTGAN_NO_EXT=1        pure-Python install: no extension, everything runs on the
                          reference (and Triton) backends.
  FASTGAN_CUDA=1 / =0     force / disable the CUDA sources. Default: built when
                          torch is a CUDA build and a CUDA toolkit (nvcc) is found.
  FASTGAN_CPU_ARCH=...    value for -march (default "native": the build machine is
                          the machine that runs it; use e.g. x86-64-v3 for portable
                          wheels).
  FASTGAN_CUDA_ARCH=...   TORCH_CUDA_ARCH_LIST for the CUDA build (default "8.0;9.0").
  MAX_JOBS=N              parallel ninja jobs (torch.utils.cpp_extension honours it).
"""
import glob
import os
import platform

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["fastgan", "fastgan.ops", "fastgan.reference", "fastgan.kernels"]
PACKAGE_DIR = {"fastgan.kernels": "kernels"}


def _flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def _write_build_info(info):
    path = os.path.join(ROOT, "fastgan", "_build_info.py")
    with open(path, "w") as f:
        f.write('"""Facts about how this copy of fastgan was built (written by setup.py)."""\n')
        f.write(f"BUILD_INFO = {info!r}\n")


def _extensions():
    import torch
    from torch.utils import cpp_extension

    arch = os.environ.get("FASTGAN_CPU_ARCH", "native")
    # -fno-math-errno: without it GCC must keep sqrt scalar (it may set errno), which
    # leaves the AVX2 build's per-position roots unvectorised (10x slower minibatch_std
    # on an AVX2-only EPYC). It changes no result, only errno.
    cxx = ["-O3", "-fopenmp", "-std=c++17", "-DNDEBUG", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64") and arch:
        cxx.append(f"-march={arch}")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]

    want_cuda = _flag("FASTGAN_CUDA")
    have_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want_cuda is None:
        use_cuda = have_cuda
    elif want_cuda and not have_cuda:
        raise RuntimeError(
            "FASTGAN_CUDA=1 but CUDA cannot be built here: "
            f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}. "
            "Install a CUDA build of torch and a CUDA toolkit, or unset FASTGAN_CUDA."
        )
    else:
        use_cuda = bool(want_cuda)

    # torch >= 2.14 headers need C++20 under nvcc (std::strong_ordering in c10).
    # No --use_fast_math: approximate sqrt/exp/division would break the "as exact as eager" rule.
    nvcc = ["-O3", "-std=c++20", "-lineinfo"]
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", os.environ.get("FASTGAN_CUDA_ARCH", "8.0;9.0"))
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx + ["-DFASTGAN_WITH_CUDA"], "nvcc": nvcc + ["-DFASTGAN_WITH_CUDA"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    ext = ext_cls(
        "fastgan._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    _write_build_info({
        "extension": True,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": use_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if use_cuda else None,
        "cxx_flags": cxx,
        "nvcc_flags": nvcc if use_cuda else None,
        "sources": sources,
    })
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


if _flag("FASTGAN_NO_EXT"):
    _write_build_info({"extension": False, "reason": "built with FASTGAN_NO_EXT=1"})
    ext_modules, cmdclass = [], {}
else:
    ext_modules, cmdclass = _extensions()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
