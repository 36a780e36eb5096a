"""Run the benchmark suite and write the report.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--dtypes float32,bfloat16]
                             [--out DIR] [--only PATTERN] [--no-report] [-- PYTEST_ARGS...]

Runs pytest-benchmark over benchmarks/bench_*.py (whatever files exist; the ceilings in
bench_ceiling.py always run, since every "% of ceiling" needs them) and writes

  default:     benchmarks/results/<device>.json, then regenerates benchmarks/RESULTS.md
               and benchmarks/plots/*.png from every JSON in benchmarks/results/ (so a
               CPU run and a GPU run end up in one report, a section per device);
  --out DIR:   DIR/<device>.json, DIR/RESULTS.md, DIR/plots/*.png (only this run), and
               DIR/bench.log (pytest's output).

--only PATTERN keeps the bench files whose name contains PATTERN (or matches it as a
glob, e.g. 'minibatch*'); several patterns may be given separated by commas.
Exit status: pytest's (0 when every benchmark ran), or the report's if that failed.
"""
import argparse
import fnmatch
import glob
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def bench_files(only=None):
    files = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    ceiling = os.path.join(HERE, "bench_ceiling.py")
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]

        def keep(path):
            name = os.path.basename(path)
            stem = name[len("bench_"):-len(".py")]
            return any(p in name or fnmatch.fnmatch(name, p) or fnmatch.fnmatch(stem, p) for p in patterns)
        files = [f for f in files if keep(f) or f == ceiling]
    return files


def default_device():
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:
        return "cpu"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device to benchmark (default: cuda if available, else cpu)")
    parser.add_argument("--dtypes", default=None, help="comma-separated dtype names")
    parser.add_argument("--out", default=None, help="write JSON, log, RESULTS.md and plots into DIR")
    parser.add_argument("--only", default=None, help="only bench files matching PATTERN (ceilings always run)")
    parser.add_argument("--no-report", action="store_true", help="only write the JSON")
    parser.add_argument("--no-plots", action="store_true", help="write RESULTS.md without PNG plots")
    parser.add_argument("--timeout", type=float, default=None,
                        help="stop pytest after this many seconds (the report is still written)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return parser.parse_args(argv)


def pytest_command(files, device, json_path, args):
    cmd = [sys.executable, "-m", "pytest", *files,
           "-p", "no:cacheprovider",
           "-o", "python_files=bench_*.py",
           "-q", "-rfE",
           f"--device={device}",
           f"--benchmark-json={json_path}",
           "--benchmark-columns=median,iqr,rounds",
           "--benchmark-sort=fullname",
           "--benchmark-name=short"]
    if args.quick:
        cmd.append("--quick")
    if args.dtypes:
        cmd.append(f"--dtypes={args.dtypes}")
    return cmd + list(args.pytest_args)


def main(argv=None):
    args = parse_args(argv)
    device = args.device or default_device()
    files = bench_files(args.only)
    if not files:
        print(f"run.py: no bench_*.py files under {HERE}" + (f" match {args.only!r}" if args.only else ""),
              file=sys.stderr)
        return 2
    if args.out:
        out_dir = os.path.abspath(args.out)
        json_dir = out_dir
        results_md = os.path.join(out_dir, "RESULTS.md")
        plots = os.path.join(out_dir, "plots")
    else:
        json_dir = os.path.join(HERE, "results")
        results_md = os.path.join(HERE, "RESULTS.md")
        plots = os.path.join(HERE, "plots")
    os.makedirs(json_dir, exist_ok=True)
    json_path = os.path.join(json_dir, f"{device}.json")
    tmp_json = json_path + ".partial"
    if os.path.exists(tmp_json):
        os.remove(tmp_json)

    env = dict(os.environ)
    # Benchmarks time compiled Triton kernels, never the interpreter.
    if env.get("TRITON_INTERPRET") == "1":
        print("run.py: unsetting TRITON_INTERPRET=1 (benchmarks time compiled kernels)", file=sys.stderr)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")

    cmd = pytest_command(files, device, tmp_json, args)
    print("run.py:", " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd), flush=True)
    start = time.time()
    log = open(os.path.join(out_dir, "bench.log"), "w") if args.out else None
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        timers = []
        if args.timeout:
            # SIGINT first: pytest stops like on Ctrl-C and pytest-benchmark still writes
            # the JSON of what ran; SIGKILL if it does not stop within 30 s.
            def interrupt():
                print(f"\nrun.py: --timeout {args.timeout:g} s reached, interrupting pytest", flush=True)
                proc.send_signal(signal.SIGINT)
            timers = [threading.Timer(args.timeout, interrupt), threading.Timer(args.timeout + 30, proc.kill)]
            for t in timers:
                t.daemon = True
                t.start()
        for line in proc.stdout:
            sys.stdout.write(line)
            if log:
                log.write(line)
        rc = proc.wait()
        for t in timers:
            t.cancel()
    finally:
        if log:
            log.close()
    print(f"run.py: pytest finished in {time.time() - start:.1f} s with exit status {rc}", flush=True)
    if os.path.exists(tmp_json):
        os.replace(tmp_json, json_path)
    elif not os.path.exists(json_path):
        print(f"run.py: pytest wrote no JSON ({json_path})", file=sys.stderr)
        return rc or 1
    else:
        print(f"run.py: pytest wrote no new JSON; keeping the old {json_path}", file=sys.stderr)
    if args.no_report:
        return rc

    sys.path.insert(0, HERE)
    import report
    if args.out:
        inputs = [json_path]
    else:
        inputs = sorted(p for p in glob.glob(os.path.join(json_dir, "*.json"))
                        if not os.path.basename(p).startswith("static"))
    static = os.path.join(json_dir, "static_check.json")
    report_args = [*inputs, "--out", results_md, "--plots", "none" if args.no_plots else plots]
    if os.path.exists(static):
        report_args += ["--static", static]
    report_rc = report.main(report_args)
    return rc or report_rc


if __name__ == "__main__":
    sys.exit(main())
