"""Which implementation runs an op: the backend registry.

Every op (minibatch_std, grad_norm, conv_transpose) has up to four backends:

  reference  plain PyTorch (fastgan.reference): always available, the truth in tests
  cpu        the C++ kernels of fastgan._C, for CPU tensors
  cuda       the CUDA kernels of fastgan._C, for CUDA tensors
  triton     the Triton kernels of fastgan.kernels, for CUDA tensors (and CPU tensors
             when TRITON_INTERPRET=1 was set before triton was imported)

A backend registers a namespace of functions (forward, backward, ...) and a `check`
that returns None when it can run on the given arguments, else a reason string.

Choice: FASTGAN_BACKEND (read on every call) or `use(name)` forces one backend; a
forced backend that cannot run raises BackendUnavailable with its reason. With `auto`
(the default) the preferred backends for the device are tried in order and the first
that can run is taken; falling back past a preferred one warns once per process per
(op, backend, reason).
"""
import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

BACKENDS = ("reference", "cpu", "cuda", "triton")
ENV = "FASTGAN_BACKEND"

# Preference per device type under auto. Triton is not auto-picked on the CPU: its
# interpreter is for testing, not speed.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


class BackendUnavailable(RuntimeError):
    """A forced backend cannot run the requested op on these inputs."""


@dataclass
class Backend:
    op: str
    name: str
    impl: object  # a namespace (module or SimpleNamespace) of kernel functions
    check: Callable[..., Optional[str]]


_registry: dict = {}
_warned: set = set()
_local = threading.local()


def register(op: str, name: str, impl, check: Callable[..., Optional[str]]):
    """Register backend `name` of `op`. check(*args) -> None if usable, else a reason."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    _registry.setdefault(op, {})[name] = Backend(op, name, impl, check)


def ops():
    return sorted(_registry)


def forced() -> str:
    """The backend forced by use() or FASTGAN_BACKEND, or 'auto'."""
    name = getattr(_local, "forced", None) or os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name != "auto" and name not in BACKENDS:
        raise BackendUnavailable(
            f"{ENV}={name!r} is not a backend; use one of: auto, {', '.join(BACKENDS)}"
        )
    return name


@contextlib.contextmanager
def use(name: str):
    """Force backend `name` ('auto' restores the default) inside a with-block (this thread)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use one of: auto, {', '.join(BACKENDS)}")
    previous = getattr(_local, "forced", None)
    _local.forced = name
    try:
        yield
    finally:
        _local.forced = previous


def why_not(op: str, name: str, *args) -> Optional[str]:
    """None if backend `name` can run `op` on args, else the reason."""
    backend = _registry.get(op, {}).get(name)
    if backend is None:
        return f"fastgan has no {name} backend for {op}"
    return backend.check(*args)


def _device_type(args) -> str:
    for a in args:
        dev = getattr(a, "device", None)
        if dev is not None:
            return dev.type
    return "cpu"


def choose(op: str, *args) -> Backend:
    """The backend that runs `op` on args (tensors first among them, for the device)."""
    name = forced()
    if name != "auto":
        reason = why_not(op, name, *args)
        if reason is not None:
            raise BackendUnavailable(
                f"{ENV}={name} was requested for fastgan op {op!r} but it cannot run: {reason}. "
                f"Unset {ENV} (or set it to auto) to fall back automatically."
            )
        return _registry[op][name]
    order = _AUTO_ORDER.get(_device_type(args), ("reference",))
    skipped = []
    for candidate in order:
        reason = why_not(op, candidate, *args)
        if reason is None:
            for skipped_name, skipped_reason in skipped:
                key = (op, skipped_name, skipped_reason)
                if key not in _warned:
                    _warned.add(key)
                    warnings.warn(
                        f"fastgan: {op} uses the {candidate} backend because {skipped_name} "
                        f"cannot run: {skipped_reason} (warned once per process)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            return _registry[op][candidate]
        skipped.append((candidate, reason))
    raise BackendUnavailable(f"no backend can run {op}: " + "; ".join(f"{n}: {r}" for n, r in skipped))


def report():
    """{op: {backend: None or reason}} for `python -m fastgan info` (no inputs: static checks)."""
    out = {}
    for op, table in sorted(_registry.items()):
        out[op] = {name: (table[name].check() if name in table else "not implemented") for name in BACKENDS}
    return out
