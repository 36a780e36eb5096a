"""The backend registry: forcing, reasons, automatic fallback, and life without the
compiled extension."""
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

import fastgan.functional as FG
from fastgan import backends
from fastgan.reference import minibatch_std as ref


@pytest.fixture
def toy_op():
    """A throwaway op whose cpu backend is always unavailable, to observe fallback."""
    op = "toy_for_tests"
    backends.register(op, "reference", SimpleNamespace(run=lambda x: x + 1), lambda *a: None)
    backends.register(op, "cpu", SimpleNamespace(run=lambda x: x + 2), lambda *a: "the toy cpu kernel is broken")
    yield op
    backends._registry.pop(op)
    backends._warned.difference_update({k for k in backends._warned if k[0] == op})


def test_auto_falls_back_with_one_warning(toy_op, monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    x = torch.randn(3)
    with pytest.warns(RuntimeWarning, match="toy cpu kernel is broken"):
        chosen = backends.choose(toy_op, x)
    assert chosen.name == "reference"
    torch.testing.assert_close(chosen.impl.run(x), x + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert backends.choose(toy_op, x).name == "reference"


def test_forced_backend_that_cannot_run_raises_the_reason(toy_op, monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    with pytest.raises(backends.BackendUnavailable, match="toy cpu kernel is broken"):
        backends.choose(toy_op, torch.randn(3))
    monkeypatch.setenv(backends.ENV, "triton")
    with pytest.raises(backends.BackendUnavailable, match="no triton backend"):
        backends.choose(toy_op, torch.randn(3))


def test_unknown_backend_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv(backends.ENV, "fastest")
    with pytest.raises(backends.BackendUnavailable, match="auto, reference, cpu, cuda, triton"):
        backends.forced()
    with pytest.raises(ValueError, match="unknown backend"):
        with backends.use("gpu"):
            pass


def test_use_overrides_env_and_restores(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cpu")
    with backends.use("reference"):
        assert backends.forced() == "reference"
        with backends.use("auto"):
            assert backends.forced() == "auto"  # use() wins over the environment
    assert backends.forced() == "cpu"


def test_forced_cuda_on_cpu_tensor_raises(monkeypatch):
    monkeypatch.setenv(backends.ENV, "cuda")
    with pytest.raises(backends.BackendUnavailable, match="cuda"):
        FG.minibatch_stddev(torch.randn(4, 3, 2, 2))


def test_forced_reference_matches_reference(monkeypatch):
    monkeypatch.setenv(backends.ENV, "reference")
    x = torch.randn(6, 5, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(FG.minibatch_stddev(x, 3), ref.minibatch_std(x, 3, 1, 1e-8))


def test_every_op_reports_every_backend():
    table = backends.report()
    for op in ("minibatch_std", "conv_transpose", "grad_norm"):
        assert op in table, f"{op} registers no backends"
        assert set(table[op]) == set(backends.BACKENDS)
        assert table[op]["reference"] is None


def _run(code, **env):
    full_env = dict(os.environ, **env)
    full_env.pop(backends.ENV, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_without_extension_layers_work_on_reference_and_say_why_once():
    code = (
        "import torch, fastgan.layers as L, fastgan._ext as e\n"
        "assert e.C is None\n"
        "x = torch.randn(8, 3, 4, 4, dtype=torch.float64)\n"
        "m = L.MinibatchStdDev()\n"
        "y1 = m(x); y2 = m(x)\n"
        "from fastgan.reference.minibatch_std import minibatch_std\n"
        "torch.testing.assert_close(y1, minibatch_std(x, 4, 1, 1e-8))\n"
        "c = L.ConvTranspose2d(3, 2, 4, 2, 1, activation='tanh', dtype=torch.float64)\n"
        "print(tuple(c(x).shape))\n"
    )
    proc = _run(code, FASTGAN_NO_EXT="1")
    assert proc.returncode == 0, proc.stderr
    assert "(8, 2, 8, 8)" in proc.stdout
    # Said once (per op), with the reason, however many calls were made.
    assert proc.stderr.count("minibatch_std uses the reference backend") == 1, proc.stderr
    assert "FASTGAN_NO_EXT" in proc.stderr


def test_info_lists_every_backend_with_reasons():
    proc = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for op in ("minibatch_std", "conv_transpose", "grad_norm"):
        assert f"{op}:" in proc.stdout
    for name in backends.BACKENDS:
        assert f"  {name} " in proc.stdout
    assert "torch" in proc.stdout and "extension fastgan._C" in proc.stdout


def test_info_without_extension_says_why():
    proc = subprocess.run([sys.executable, "-m", "fastgan", "info"], capture_output=True, text=True,
                          env=dict(os.environ, FASTGAN_NO_EXT="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not loaded: the extension is disabled by FASTGAN_NO_EXT=1" in proc.stdout


def test_triton_kernels_install_as_subpackage():
    import fastgan.kernels
    assert os.path.basename(os.path.dirname(fastgan.kernels.__file__)) == "kernels"
