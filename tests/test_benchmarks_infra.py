"""The benchmark infrastructure: report arithmetic on a synthetic pytest-benchmark JSON
(hand-computed speedups and ceiling percentages), the merge of a CPU and a GPU run, the
runner's command line, and the helpers of benchmarks/conftest.py. No timing here."""
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


report = _load("fastgan_bench_report", os.path.join(BENCH, "report.py"))
runner = _load("fastgan_bench_run", os.path.join(BENCH, "run.py"))


def bench(op, provider, median, mode="fwd", dtype="float32", shape="8x4x4x4", device="cpu", **extra):
    info = {"op": op, "provider": provider, "mode": mode, "dtype": dtype, "shape": shape, "device": device}
    info.update(extra)
    return {"name": f"test_{op}[{provider}]", "fullname": f"x::test_{op}[{provider}]", "params": {},
            "extra_info": info, "stats": {"median": median, "mean": median, "rounds": 5}}


def synthetic(device="cpu", name="Test CPU 9000"):
    """Ceilings: copy 2e9 B in 0.1 s = 20 GB/s; mm float32 1e11 flop in 1 s = 100 GFLOP/s;
    conv float32 5e10 flop in 1 s = 50 GFLOP/s (compute ceiling = 100 GFLOP/s)."""
    rows = [
        bench("ceiling", "library", 0.1, kind="copy", bytes=2_000_000_000, device=device),
        bench("ceiling", "library", 1.0, kind="mm", flops=100_000_000_000, device=device),
        bench("ceiling", "library", 1.0, kind="conv", flops=50_000_000_000, device=device),
        # memory-bound op: 2e6 bytes
        bench("minibatch_std", "eager", 2e-3, bytes=2_000_000, device=device),
        bench("minibatch_std", "compile", 1e-3, bytes=2_000_000, device=device),
        bench("minibatch_std", "fastgan", 5e-4, bytes=2_000_000, device=device),
        bench("minibatch_std", "fastgan-triton", 4e-4, bytes=2_000_000, device=device),
        # compute-bound op: 1e9 flop; bfloat16 has no ceiling of its own -> float32's
        bench("conv_transpose", "eager", 0.1, dtype="bfloat16", shape="64x512x4x4", flops=1_000_000_000,
              device=device),
        bench("conv_transpose", "fastgan", 0.05, dtype="bfloat16", shape="64x512x4x4", flops=1_000_000_000,
              device=device),
        # end to end, without compile
        bench("train_step", "eager", 0.3, mode="fwdbwd", shape="dcgan32", flops=3_000_000_000, device=device),
        bench("train_step", "fastgan", 0.2, mode="fwdbwd", shape="dcgan32", flops=3_000_000_000, device=device),
        # not ours: no "op" -> ignored
        {"name": "other", "extra_info": {}, "stats": {"median": 1.0}},
    ]
    return {"machine_info": {"fastgan_device": device, "device_name": name, "cpu_model": "Test CPU 9000",
                             "torch": "2.13.0", "triton": "3.9.0", "threads": 2, "git_revision": "abc1234",
                             "python_version": "3.11.7", "cpu": {"count": 2}},
            "commit_info": {"id": "abc1234def"}, "datetime": "2026-12-03T12:00:00", "benchmarks": rows,
            "version": "5.2.3"}


@pytest.fixture
def json_files(tmp_path):
    cpu = tmp_path / "cpu.json"
    cuda = tmp_path / "cuda.json"
    cpu.write_text(json.dumps(synthetic()))
    cuda.write_text(json.dumps(synthetic("cuda", "NVIDIA H200")))
    return str(cpu), str(cuda)


def _metrics(analysis, op, key):
    return {m["provider"]: m for m in analysis[op][key]}


def test_ceilings_and_speedups_hand_computed(json_files):
    run = report.load(json_files[0])
    assert len(run["rows"]) == 11  # the benchmark without "op" is dropped
    ceil = report.ceilings(run["rows"])
    assert ceil["copy"] == pytest.approx(20e9)
    assert ceil["mm"]["float32"] == pytest.approx(100e9)
    assert ceil["conv"]["float32"] == pytest.approx(50e9)
    assert ceil["compute"]["float32"] == pytest.approx(100e9)
    analysis = report.analyse(run["rows"], ceil)
    assert list(analysis) == ["minibatch_std", "conv_transpose", "train_step"]

    m = _metrics(analysis, "minibatch_std", ("fwd", "float32", "8x4x4x4"))
    assert [x["provider"] for x in analysis["minibatch_std"][("fwd", "float32", "8x4x4x4")]] == \
        ["fastgan", "fastgan-triton", "eager", "compile"]
    assert m["fastgan"]["vs_eager"] == pytest.approx(4.0)      # 2e-3 / 5e-4
    assert m["fastgan"]["vs_compile"] == pytest.approx(2.0)    # 1e-3 / 5e-4
    assert m["fastgan-triton"]["vs_eager"] == pytest.approx(5.0)
    assert m["eager"]["vs_eager"] == pytest.approx(1.0)
    assert m["compile"]["vs_eager"] == pytest.approx(2.0)
    assert m["fastgan"]["throughput"] == pytest.approx(4e9)    # 2e6 B / 5e-4 s
    assert m["fastgan"]["unit"] == "GB/s"
    assert m["fastgan"]["pct"] == pytest.approx(20.0)          # 4 GB/s of 20 GB/s
    assert m["fastgan-triton"]["pct"] == pytest.approx(25.0)

    c = _metrics(analysis, "conv_transpose", ("fwd", "bfloat16", "64x512x4x4"))
    assert c["fastgan"]["vs_eager"] == pytest.approx(2.0)
    assert c["fastgan"]["vs_compile"] is None                  # no compile provider ran
    assert c["fastgan"]["unit"] == "GFLOP/s"
    assert c["fastgan"]["throughput"] == pytest.approx(20e9)   # 1e9 / 0.05
    assert c["fastgan"]["pct"] == pytest.approx(20.0)          # of float32's 100 GFLOP/s

    t = _metrics(analysis, "train_step", ("fwdbwd", "float32", "dcgan32"))
    assert t["fastgan"]["vs_eager"] == pytest.approx(1.5)


def test_markdown_has_tables_sections_and_plots(json_files, tmp_path):
    out = tmp_path / "RESULTS.md"
    plots = tmp_path / "plots"
    rc = report.main([json_files[1], json_files[0], "--out", str(out), "--plots", str(plots), "--quiet"])
    assert rc == 0
    text = out.read_text()
    # One section per device, CPU first, with the run's facts.
    cpu_at, cuda_at = text.index("## cpu: Test CPU 9000"), text.index("## cuda: NVIDIA H200")
    assert cpu_at < cuda_at
    assert "torch 2.13.0" in text and "triton 3.9.0" in text and "abc1234" in text and "threads: 2" in text
    assert "| copy (bytes read + written) | any | 20.0 GB/s |" in text
    assert "| fastgan | 500.0 µs | 4.00× | 2.00× | 4.0 GB/s | 20.0% |" in text
    assert "| fastgan | 50.000 ms | 2.00× | — | 20.0 GFLOP/s | 20.0% |" in text
    assert "**fwd · float32 · 8x4x4x4**" in text
    assert "### End-to-end training step" in text and "#### train_step" in text
    # Plots for each device and op (not for end-to-end), linked relative to RESULTS.md.
    for name in ("cpu_minibatch_std.png", "cpu_conv_transpose.png", "cuda_minibatch_std.png"):
        assert (plots / name).stat().st_size > 1000
        assert f"](plots/{name})" in text


def test_static_rows_and_summary(json_files, tmp_path, capsys):
    static = tmp_path / "static_check.json"
    static.write_text(json.dumps([{"name": "minibatch_std.fwd", "kind": "triton", "arch": 90, "registers": 40,
                                   "spill_bytes": 0, "shared_bytes": 0, "stack_bytes": 0,
                                   "vector_loads": True, "mma": False}]))
    out = tmp_path / "R.md"
    assert report.main([json_files[0], "--out", str(out), "--plots", "none", "--static", str(static)]) == 0
    text = out.read_text()
    assert "| minibatch_std.fwd | triton | 90 | 40 | 0 | 0 | 0 | yes | no |" in text
    assert "![" not in text  # --plots none
    printed = capsys.readouterr().out
    assert "minibatch_std" in printed and "4.00×" in printed and "20.0%" in printed


def test_report_skips_unreadable_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert report.main([str(bad), "--out", str(tmp_path / "R.md"), "--quiet"]) == 1


def test_run_py_help_and_file_selection():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--quick", "--device", "--out", "--only", "--dtypes"):
        assert flag in proc.stdout
    files = [os.path.basename(f) for f in runner.bench_files("no_such_op")]
    assert files == ["bench_ceiling.py"]  # ceilings always run
    assert "bench_ceiling.py" in [os.path.basename(f) for f in runner.bench_files(None)]


def test_run_py_builds_the_pytest_command(tmp_path):
    args = runner.parse_args(["--quick", "--dtypes", "float32,bfloat16", "--", "-k", "fwd"])
    cmd = runner.pytest_command(["b.py"], "cpu", str(tmp_path / "x.json"), args)
    assert cmd[:3] == [sys.executable, "-m", "pytest"]
    assert "--device=cpu" in cmd and "--quick" in cmd and "--dtypes=float32,bfloat16" in cmd
    assert f"--benchmark-json={tmp_path / 'x.json'}" in cmd
    assert cmd[-2:] == ["-k", "fwd"]


def test_python_m_fastgan_bench_passes_options_through(monkeypatch):
    """`python -m fastgan bench --quick --out DIR` (as the README writes it) hands every
    argument to benchmarks/run.py unchanged, options first included."""
    import fastgan.__main__ as cli
    calls = []
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["bench", "--quick", "--out", "somewhere", "--", "-k", "fwd"]) == 0
    assert calls == [[sys.executable, os.path.join(ROOT, "benchmarks", "run.py"),
                      "--quick", "--out", "somewhere", "--", "-k", "fwd"]]
    proc = subprocess.run([sys.executable, "-m", "fastgan", "bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "benchmarks/run.py" in proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def bench_conftest():
    return _load("fastgan_bench_conftest", os.path.join(BENCH, "conftest.py"))


def test_record_fills_extra_info(bench_conftest):
    import torch
    fake = types.SimpleNamespace(extra_info={})
    bench_conftest.record(fake, op="minibatch_std", provider="fastgan", mode="fwd", dtype=torch.bfloat16,
                          shape=(8, 3, 5, 7), bytes=123.0, group_size=4)
    assert fake.extra_info == {"op": "minibatch_std", "provider": "fastgan", "mode": "fwd",
                               "dtype": "bfloat16", "shape": "8x3x5x7", "device": bench_conftest.DEVICE,
                               "bytes": 123, "group_size": 4}
    with pytest.raises(ValueError, match="bytes= .* or flops="):
        bench_conftest.record(fake, op="x", provider="eager", mode="fwd", dtype="float32", shape=(1,))


def test_providers_and_forced_backend(bench_conftest):
    from fastgan import backends
    names = bench_conftest.providers("minibatch_std", "cpu")
    assert names[0] == "fastgan" and names[-2:] == ["eager", "compile"]
    assert not any(n in ("fastgan-triton", "fastgan-cuda", "fastgan-reference") for n in names)
    assert bench_conftest.backend_of("fastgan-cpu") == "cpu"
    assert bench_conftest.backend_of("eager") is None
    seen = []
    fn = bench_conftest.provider_fn("fastgan-reference", lambda: seen.append(backends.forced()), None)
    fn()
    assert seen == ["reference"] and backends.forced() != "reference"
    ref = object()
    assert bench_conftest.provider_fn("eager", None, ref) is ref
    with pytest.raises(ValueError, match="unknown provider"):
        bench_conftest.provider_fn("nope", None, None)
