"""Turn pytest-benchmark JSON files into benchmarks/RESULTS.md and PNG plots.

    python benchmarks/report.py results/cpu.json [results/cuda.json ...]
        [--out benchmarks/RESULTS.md] [--plots benchmarks/plots] [--static static_check.json]

Each JSON file becomes one section (one device run). Within it:
  - the facts of the run (machine, torch, triton, threads, git revision, date);
  - the ceilings measured in the same run (bench_ceiling.py): copy bandwidth
    (bytes read + written per second) and the best of library GEMM / convolution in
    GFLOP/s per dtype;
  - per op, a table per (mode, dtype, shape): each provider's median time, speedup vs
    eager (t_eager / t) and vs torch.compile (t_compile / t), achieved throughput and
    its percentage of the ceiling: bytes/t over the copy bandwidth for records with
    "bytes" (memory-bound), flops/t over the best GEMM/conv rate of the same dtype for
    records with "flops" (compute-bound; float32's rate if that dtype was not measured);
  - the end-to-end section (ops "train_step" and "critic_step").
A bar plot per op shows the speedup vs eager of each non-eager provider. A short
summary table goes to stdout. `--static` adds the GPU static check's table
(benchmarks/gpu/static_check.py --json).
"""
import argparse
import datetime as _dt
import json
import os
import sys
from collections import OrderedDict

END_TO_END = ("train_step", "critic_step")
PROVIDER_ORDER = {"fastgan": 0, "eager": 8, "compile": 9}


# ------------------------------------------------------------------ loading
def load(path):
    """One pytest-benchmark JSON -> {"path", "machine", "datetime", "commit", "rows"}.

    A row: op, provider, mode, dtype, shape, device, kind, bytes, flops, median (s),
    rounds, name. Benchmarks without extra_info["op"] are skipped (not ours).
    """
    with open(path) as f:
        data = json.load(f)
    machine = data.get("machine_info", {}) or {}
    rows, paired = [], []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {}) or {}
        stats = b.get("stats", {}) or {}
        if "op" not in info or stats.get("median") is None:
            continue
        if "paired" in info:  # bench_paired.py: its own table, not the per-op tables
            paired.append({"case": info.get("case", info["op"]), "median": float(stats["median"]),
                           "rounds": stats.get("rounds"), "paired": info["paired"]})
            continue
        rows.append({
            "op": info["op"],
            "provider": str(info.get("provider", "?")),
            "mode": str(info.get("mode", "fwd")),
            "dtype": str(info.get("dtype", "?")).replace("torch.", ""),
            "shape": _shape(info.get("shape", "")),
            "device": info.get("device", machine.get("fastgan_device", "?")),
            "kind": info.get("kind"),
            "bytes": info.get("bytes"),
            "flops": info.get("flops"),
            "median": float(stats["median"]),
            "rounds": stats.get("rounds"),
            "name": b.get("name", ""),
        })
    device = machine.get("fastgan_device") or (rows[0]["device"] if rows else "?")
    return {"path": path, "machine": machine, "device": device, "rows": rows, "paired": paired,
            "datetime": data.get("datetime", ""), "commit": data.get("commit_info", {}) or {}}


def _shape(s):
    if isinstance(s, (list, tuple)):
        return "x".join(str(v) for v in s)
    return str(s)


# ------------------------------------------------------------------ analysis
def ceilings(rows):
    """{"copy": bytes/s or None, "mm": {dtype: flop/s}, "conv": {dtype: flop/s},
    "compute": {dtype: max(mm, conv)}} from the op == "ceiling" rows (best of repeats)."""
    out = {"copy": None, "mm": {}, "conv": {}, "compute": {}}
    for r in rows:
        if r["op"] != "ceiling" or r["median"] <= 0:
            continue
        kind = r["kind"] or ("copy" if r["bytes"] else "mm")
        if kind == "copy" and r["bytes"]:
            rate = r["bytes"] / r["median"]
            out["copy"] = max(out["copy"] or 0.0, rate)
        elif kind in ("mm", "conv") and r["flops"]:
            rate = r["flops"] / r["median"]
            table = out[kind]
            table[r["dtype"]] = max(table.get(r["dtype"], 0.0), rate)
    for kind in ("mm", "conv"):
        for dtype, rate in out[kind].items():
            out["compute"][dtype] = max(out["compute"].get(dtype, 0.0), rate)
    return out


def compute_ceiling(ceil, dtype):
    """The compute ceiling for dtype, else float32's, else None."""
    return ceil["compute"].get(dtype) or ceil["compute"].get("float32")


def provider_key(p):
    if p in PROVIDER_ORDER:
        return (PROVIDER_ORDER[p], p)
    return (1 if p.startswith("fastgan-") else 5, p)


def analyse(rows, ceil):
    """{op: {(mode, dtype, shape): [metrics per provider, in provider order]}}.

    metrics: provider, median (s), vs_eager, vs_compile (None when that provider is
    missing), throughput (bytes/s or flop/s), unit ("GB/s" or "GFLOP/s"), pct (of ceiling).
    """
    ops = OrderedDict()
    for r in rows:
        if r["op"] == "ceiling":
            continue
        cfg = ops.setdefault(r["op"], OrderedDict()).setdefault((r["mode"], r["dtype"], r["shape"]), {})
        # Repeats of the same provider/config (should not happen): keep the faster.
        if r["provider"] not in cfg or r["median"] < cfg[r["provider"]]["median"]:
            cfg[r["provider"]] = r
    out = OrderedDict()
    for op, configs in ops.items():
        out[op] = OrderedDict()
        for key, by_provider in configs.items():
            eager = by_provider.get("eager")
            comp = by_provider.get("compile")
            metrics = []
            for p in sorted(by_provider, key=provider_key):
                r = by_provider[p]
                m = {"provider": p, "median": r["median"], "vs_eager": None, "vs_compile": None,
                     "throughput": None, "unit": None, "pct": None}
                if eager is not None and r["median"] > 0:
                    m["vs_eager"] = eager["median"] / r["median"]
                if comp is not None and r["median"] > 0:
                    m["vs_compile"] = comp["median"] / r["median"]
                if r["bytes"]:
                    m["throughput"] = r["bytes"] / r["median"]
                    m["unit"] = "GB/s"
                    if ceil["copy"]:
                        m["pct"] = 100.0 * m["throughput"] / ceil["copy"]
                elif r["flops"]:
                    m["throughput"] = r["flops"] / r["median"]
                    m["unit"] = "GFLOP/s"
                    top = compute_ceiling(ceil, r["dtype"])
                    if top:
                        m["pct"] = 100.0 * m["throughput"] / top
                metrics.append(m)
            out[op][key] = metrics
    return out


# ------------------------------------------------------------------ formatting
def fmt_time(s):
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_x(v):
    return "—" if v is None else f"{v:.2f}×"


def fmt_rate(m):
    if m["throughput"] is None:
        return "—"
    return f"{m['throughput'] / 1e9:.1f} {m['unit']}"


def fmt_pct(v):
    return "—" if v is None else f"{v:.1f}%"


def section_title(run):
    m = run["machine"]
    name = m.get("device_name") or m.get("cpu_model") or m.get("node", "")
    return f"{run['device']}: {name}"


def facts_lines(run):
    m = run["machine"]
    date = run["datetime"][:19].replace("T", " ") + " UTC" if run["datetime"] else "?"
    rev = m.get("git_revision") or (run["commit"].get("id", "")[:7] or "?")
    threads = m.get("threads", "?")
    lines = [
        f"- machine: {m.get('device_name') or m.get('cpu_model', '?')}"
        + (f" (host CPU: {m.get('cpu_model')})" if run["device"] == "cuda" and m.get("cpu_model") else "")
        + f", {m.get('cpu', {}).get('count', '?')} CPU cores, torch threads: {threads}",
        f"- torch {m.get('torch', '?')}" + (f" (CUDA {m['torch_cuda']})" if m.get("torch_cuda") else "")
        + f", triton {m.get('triton') or 'not installed'}, python {m.get('python_version', '?')}",
        f"- git revision {rev}, run {date}" + (", --quick" if m.get("quick") else ""),
        f"- source: `{os.path.basename(run['path'])}`",
    ]
    load = m.get("load_average_at_start")
    if load is not None:
        cores = m.get("cpu", {}).get("count") or os.cpu_count() or 1
        lines.append(f"- load average when the run started: {load}"
                     + (" -- **the machine was busy: CPU timings of this run are unreliable**"
                        if load >= cores else " (below the core count: no other heavy work; the "
                        "1-minute average still carries the tail of whatever ran just before)"))
    return lines


def ceilings_table(ceil):
    lines = ["| ceiling | dtype | measured |", "|---|---|---|"]
    if ceil["copy"]:
        lines.append(f"| copy (bytes read + written) | any | {ceil['copy'] / 1e9:.1f} GB/s |")
    for kind, label in (("mm", "matrix product (torch.mm)"), ("conv", "convolution (F.conv2d 3x3)")):
        for dtype, rate in ceil[kind].items():
            lines.append(f"| {label} | {dtype} | {rate / 1e9:.1f} GFLOP/s |")
    if len(lines) == 2:
        lines.append("| (not measured: bench_ceiling.py did not run) | | |")
    return lines


def op_tables(configs):
    lines = []
    for (mode, dtype, shape), metrics in configs.items():
        lines.append(f"**{mode} · {dtype} · {shape}**")
        lines.append("")
        lines.append("| provider | median | vs eager | vs compile | throughput | % of ceiling |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for m in metrics:
            lines.append(f"| {m['provider']} | {fmt_time(m['median'])} | {fmt_x(m['vs_eager'])} | "
                         f"{fmt_x(m['vs_compile'])} | {fmt_rate(m)} | {fmt_pct(m['pct'])} |")
        lines.append("")
    return lines


def paired_table(paired):
    """bench_paired.py: each round ran the baselines and fastgan back to back."""
    out = ["Each round runs every baseline and then fastgan back to back (benchmarks/bench_paired.py), "
           "so machine drift hits both alike. ratio = median(baseline) / median(fastgan): above 1 "
           "fastgan is faster; for *copy* (a copy of the case's minimal bytes) it is the fraction of "
           "the copy bandwidth fastgan reaches.", "",
           "| case (fwd+bwd) | rounds | fastgan | baseline | baseline time | ratio |",
           "|---|---:|---:|---|---:|---:|"]
    for r in paired:
        for name, v in r["paired"].items():
            ratio = f"{100 * v['ratio']:.0f}% of copy" if name == "copy" else fmt_x(v["ratio"])
            out.append(f"| {r['case']} | {r['rounds']} | {fmt_time(r['median'])} | {name} | "
                       f"{fmt_time(v['median'])} | {ratio} |")
    return out


def static_table(rows):
    lines = ["| kernel | kind | arch | registers | spill bytes | shared bytes | stack bytes | 128-bit loads | mma/wgmma |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        def v(key):
            val = r.get(key)
            if val is None:
                return "—"
            if isinstance(val, bool):
                return "yes" if val else "no"
            return str(val)
        lines.append(f"| {r.get('name', '?')} | {r.get('kind', '?')} | {v('arch')} | {v('registers')} | "
                     f"{v('spill_bytes')} | {v('shared_bytes')} | {v('stack_bytes')} | {v('vector_loads')} | {v('mma')} |")
    return lines


# ------------------------------------------------------------------ plots
def _slug(text):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def plot_op(op, configs, path, title):
    """Grouped bars: speedup vs eager of each non-eager provider, per configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{mode}\n{dtype}\n{shape}" for (mode, dtype, shape) in configs]
    providers = []
    for metrics in configs.values():
        for m in metrics:
            if m["provider"] != "eager" and m["provider"] not in providers:
                providers.append(m["provider"])
    providers.sort(key=provider_key)
    if not providers or not labels:
        return None
    width = 0.8 / len(providers)
    spread = [m["vs_eager"] for ms in configs.values() for m in ms if m["vs_eager"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.2))
    for i, p in enumerate(providers):
        values = []
        for metrics in configs.values():
            m = next((m for m in metrics if m["provider"] == p), None)
            values.append(m["vs_eager"] if m and m["vs_eager"] is not None else 0.0)
        xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, values, width, label=p)
    ax.axhline(1.0, color="black", linewidth=0.8)
    if spread and max(spread) / min(spread) > 20:
        ax.set_yscale("log")  # speedups spanning orders of magnitude
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("speedup vs eager (×, higher is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ document
def render(runs, out_path, plots_dir=None, static_rows=None, command=None):
    """The Markdown text of RESULTS.md; writes the plots into plots_dir (if given)."""
    lines = ["# fastgan benchmark results", ""]
    lines.append("Generated by `benchmarks/report.py` on "
                 f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
                 + (f" (`{command}`)" if command else "") + ". Regenerate with "
                 "`python benchmarks/run.py` (CPU) or `bash benchmarks/gpu/run.sh OUTDIR` (GPU).")
    lines.append("")
    lines.append("Times are medians of pytest-benchmark rounds. *vs eager* = t(eager) / t; *vs compile* = "
                 "t(torch.compile of the reference) / t; above 1 means faster. *% of ceiling*: for "
                 "memory-bound ops the minimal bytes (each input read once, each output written once) per "
                 "second over the measured copy bandwidth; for compute-bound ops flop/s over the best "
                 "measured library GEMM or convolution rate of the same dtype. Above 100% means the "
                 "data fit in a cache (small shapes), not that the ceiling is wrong.")
    lines.append("")
    # Hand-written analysis (targets met or missed, and why) lives beside the generated
    # tables in benchmarks/TARGETS.md, so regenerating the tables never erases it.
    here = os.path.dirname(os.path.abspath(__file__))
    notes = os.path.join(here, "TARGETS.md")
    # Only beside the committed run it describes, not in a quick run's RESULTS.md elsewhere.
    if os.path.exists(notes) and os.path.abspath(out_path) == os.path.join(here, "RESULTS.md"):
        with open(notes) as f:
            lines += [f.read().rstrip(), ""]
    used = set()
    for run in runs:
        ceil = ceilings(run["rows"])
        analysis = analyse(run["rows"], ceil)
        lines.append(f"## {section_title(run)}")
        lines.append("")
        lines.extend(facts_lines(run))
        lines.append("")
        lines.append("### Ceilings (measured in the same run)")
        lines.append("")
        lines.extend(ceilings_table(ceil))
        lines.append("")
        if run.get("paired"):
            lines.append("### Paired (interleaved) measurements")
            lines.append("")
            lines.extend(paired_table(run["paired"]))
            lines.append("")
        slug = _slug(run["device"])
        while slug in used:
            slug += "_"
        used.add(slug)
        ops = [op for op in analysis if op not in END_TO_END]
        e2e = [op for op in analysis if op in END_TO_END]
        for op in ops:
            lines.append(f"### {op}")
            lines.append("")
            if plots_dir:
                png = plot_op(op, analysis[op], os.path.join(plots_dir, f"{slug}_{op}.png"),
                              f"{op} on {section_title(run)}")
                if png:
                    rel = os.path.relpath(png, os.path.dirname(os.path.abspath(out_path)) if out_path else ".")
                    lines.append(f"![{op} speedup vs eager]({rel})")
                    lines.append("")
            lines.extend(op_tables(analysis[op]))
        if e2e:
            lines.append("### End-to-end training step")
            lines.append("")
            for op in e2e:
                lines.append(f"#### {op}")
                lines.append("")
                lines.extend(op_tables(analysis[op]))
        if not ops and not e2e:
            lines.append("(no op benchmarks in this run)")
            lines.append("")
    if static_rows:
        lines.append("## GPU static check (compile only: nvcc -Xptxas -v and Triton AOT)")
        lines.append("")
        lines.append("From `benchmarks/gpu/static_check.py --json`: registers per thread, spills, shared "
                     "memory and stack frame per kernel; whether the PTX has 128-bit global loads and "
                     "mma/wgmma instructions.")
        lines.append("")
        lines.extend(static_table(static_rows))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def summary(runs):
    """A short plain-text table: per op and config, the fastgan providers' figures."""
    out = []
    header = f"{'device':<6} {'op':<16} {'mode':<7} {'dtype':<9} {'shape':<22} {'provider':<16} {'median':>11} {'xeager':>7} {'xcomp':>7} {'%ceil':>6}"
    out.append(header)
    out.append("-" * len(header))
    for run in runs:
        ceil = ceilings(run["rows"])
        if ceil["copy"]:
            out.append(f"{run['device']:<6} {'ceiling copy':<16} {ceil['copy'] / 1e9:.1f} GB/s")
        for dtype, rate in ceil["compute"].items():
            out.append(f"{run['device']:<6} {'ceiling compute':<16} {dtype} {rate / 1e9:.1f} GFLOP/s")
        for op, configs in analyse(run["rows"], ceil).items():
            for (mode, dtype, shape), metrics in configs.items():
                for m in metrics:
                    if not m["provider"].startswith("fastgan"):
                        continue
                    out.append(f"{run['device']:<6} {op:<16} {mode:<7} {dtype:<9} {shape[:22]:<22} "
                               f"{m['provider']:<16} {fmt_time(m['median']):>11} {fmt_x(m['vs_eager']):>7} "
                               f"{fmt_x(m['vs_compile']):>7} {fmt_pct(m['pct']):>6}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files (one section each)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"),
                        help="Markdown file to write (default: benchmarks/RESULTS.md)")
    parser.add_argument("--plots", default=None,
                        help="folder for the PNG plots (default: plots/ beside --out; 'none' for no plots)")
    parser.add_argument("--static", default=None, help="JSON rows written by benchmarks/gpu/static_check.py")
    parser.add_argument("--quiet", action="store_true", help="no summary on stdout")
    args = parser.parse_args(argv)
    runs = []
    for path in args.json:
        try:
            runs.append(load(path))
        except (OSError, ValueError) as exc:
            print(f"report.py: skipping {path}: {exc}", file=sys.stderr)
    if not runs:
        print("report.py: no readable benchmark JSON", file=sys.stderr)
        return 1
    # CPU sections first, then CUDA, each in the order given.
    runs.sort(key=lambda r: 0 if r["device"] == "cpu" else 1)
    plots = args.plots
    if plots is None:
        plots = os.path.join(os.path.dirname(os.path.abspath(args.out)), "plots")
    elif plots.lower() == "none":
        plots = None
    static_rows = None
    if args.static and os.path.exists(args.static):
        with open(args.static) as f:
            static_rows = json.load(f)
        if isinstance(static_rows, dict):
            static_rows = static_rows.get("rows", [])
    text = render(runs, args.out, plots, static_rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    if not args.quiet:
        print(summary(runs))
        print(f"\nwrote {args.out}" + (f" and plots in {plots}" if plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
