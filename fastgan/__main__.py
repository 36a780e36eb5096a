"""python -m fastgan {info, train, bench}."""
import argparse
import sys


def info(args=None):
    import platform

    import torch

    import fastgan
    from fastgan import _ext, backends

    print(f"fastgan {fastgan.__version__}")
    print(f"python  {platform.python_version()}  torch {torch.__version__} (cuda {torch.version.cuda})")
    try:
        import triton
        print(f"triton  {triton.__version__}")
    except Exception as exc:
        print(f"triton  not importable ({type(exc).__name__})")
    print(f"device  cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
          + f"; cpu threads: {torch.get_num_threads()}")
    print(f"extension fastgan._C: {'loaded' if _ext.C is not None else 'not loaded: ' + _ext.REASON}")
    for key, value in _ext.build_info().items():
        print(f"  build.{key}: {value}")
    print(f"FASTGAN_BACKEND: {backends.forced()}")
    for op, table in backends.report().items():
        print(f"{op}:")
        for name, reason in table.items():
            print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and every backend's availability, with reasons")
    from fastgan import train as train_mod
    train_mod.add_arguments(sub.add_parser("train", help="train a WGAN-GP on a bundled real data set"))
    bench = sub.add_parser("bench", help="run the benchmark suite (from a source checkout)")
    # listed for --help only: main() hands everything after "bench" to benchmarks/run.py
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and not {"-h", "--help"} & set(argv[1:2]):
        # Everything after "bench" goes to benchmarks/run.py verbatim (argparse's REMAINDER
        # refuses a first argument that starts with "--", e.g. "bench --quick").
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "info":
        return info(args)
    if args.command == "train":
        return train_mod.main(args)
    return 2  # "bench" returned above; argparse has printed its help for "bench -h"


def _bench(rest):
    import os
    import subprocess
    runner = os.path.join(os.getcwd(), "benchmarks", "run.py")
    if not os.path.exists(runner):
        print("python -m fastgan bench runs benchmarks/run.py from a source checkout; "
              f"none found under {os.getcwd()}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, runner] + list(rest))


if __name__ == "__main__":
    sys.exit(main())
