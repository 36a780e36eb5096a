"""python -m fastgan train: WGAN-GP on a bundled real data set (DESIGN.md section 4).

    python -m fastgan train --dataset digits --out out/digits

Each generator step is preceded by n_critic critic steps. A critic step minimises

    loss_d = mean D(fake) - mean D(real) + gp + drift * mean D(real)^2,
    gp     = 10 * mean_i (||d D(x_hat)/d x_hat_i||_2 - 1)^2,  x_hat = a real + (1-a) fake,

(fastgan.functional.gradient_penalty, which differentiates through the critic twice) and
a generator step minimises loss_g = -mean D(G(z)). Adam for both. Samples are drawn from
an exponential moving average of the generator's weights (ema), which makes the small,
briefly trained generator's pictures far steadier than its raw weights'.

Defaults (chosen by looking at samples.png, seed 0, on a shared 2-core CPU): batch 64,
1500 generator steps, one critic step per generator step, Adam lr 3e-4 betas (0, 0.9),
generator with ProGAN pixel norm after each fused activation (without it the same budget
gave grey stripes and blobs after 400 steps with n_critic=2, lr 2e-4), widths 32, EMA 0.995,
drift 1e-3. Digit shapes appear by step 200 and most samples are recognisable digits by
step 400-600; 1500 steps give clearly cleaner strokes (about 2.3 minutes at 88 ms/step on
the idle 2-core Xeon VM; the 2-core AVX2 EPYC VM measured about 245 ms/step, 6 minutes). A step costs about 0.19 s of CPU time with one thread.

Writes to --out: samples.png (an 8x8 grid from fixed latents), real.png (64 real images
for comparison), losses.png (loss curves per generator step), metrics.json and
generator.pt (the averaged generator's state_dict and its constructor arguments).
"""
import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

DEFAULTS = dict(
    steps=1500, batch_size=64, n_critic=1, lr=3e-4, beta1=0.0, beta2=0.9, gp_weight=10.0,
    drift=1e-3, nz=64, g_width=32, d_width=32, ema=0.995, seed=0, pixel_norm=True,
)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser):
    from fastgan.data import DATASETS
    d = DEFAULTS
    parser.description = ("Train a DCGAN-style WGAN-GP (fastgan ConvTranspose2d generator, critic "
                          "ending in MinibatchStdDev) on a bundled real data set and write "
                          "samples.png, real.png, losses.png, metrics.json and generator.pt into --out.")
    parser.add_argument("--dataset", default="digits", choices=DATASETS,
                        help="bundled data set (digits: scikit-learn's 1,797 handwritten 8x8 scans, "
                             "resized to --size)")
    parser.add_argument("--steps", type=_positive_int, default=d["steps"],
                        help=f"generator steps (default {d['steps']}: recognisable digits in a few "
                             "minutes on a 2-core CPU)")
    parser.add_argument("--out", default="out/digits", help="output directory, created if missing (default out/digits)")
    parser.add_argument("--batch-size", type=_positive_int, default=d["batch_size"],
                        help=f"samples per batch; a multiple of 4 (the minibatch-std group) "
                             f"(default {d['batch_size']})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--seed", type=int, default=d["seed"], help=f"random seed (default {d['seed']})")
    parser.add_argument("--n-critic", type=_positive_int, default=d["n_critic"],
                        help=f"critic steps per generator step (default {d['n_critic']})")
    parser.add_argument("--lr", type=float, default=d["lr"], help=f"Adam learning rate (default {d['lr']})")
    parser.add_argument("--beta1", type=float, default=d["beta1"], help=f"Adam beta1 (default {d['beta1']})")
    parser.add_argument("--beta2", type=float, default=d["beta2"], help=f"Adam beta2 (default {d['beta2']})")
    parser.add_argument("--gp-weight", type=float, default=d["gp_weight"],
                        help=f"gradient penalty weight (default {d['gp_weight']})")
    parser.add_argument("--drift", type=float, default=d["drift"],
                        help=f"weight of mean D(real)^2, keeps critic scores near 0 (default {d['drift']})")
    parser.add_argument("--nz", type=_positive_int, default=d["nz"], help=f"latent size (default {d['nz']})")
    parser.add_argument("--g-width", type=_positive_int, default=d["g_width"],
                        help=f"generator channels at half resolution, doubling per halving "
                             f"(default {d['g_width']})")
    parser.add_argument("--d-width", type=_positive_int, default=d["d_width"],
                        help=f"critic channels at half resolution (default {d['d_width']})")
    parser.add_argument("--pixel-norm", action=argparse.BooleanOptionalAction, default=d["pixel_norm"],
                        help="normalise each generator feature vector after its fused activation "
                             f"(ProGAN pixel norm) (default {d['pixel_norm']})")
    parser.add_argument("--size", type=int, default=32, help="image size, a power of two >= 16 (default 32)")
    parser.add_argument("--ema", type=float, default=d["ema"],
                        help=f"decay of the generator weight average used for samples; 0 disables "
                             f"(default {d['ema']})")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's default). On a machine shared "
                             "with other busy processes, 1 can be many times faster than 2")
    parser.add_argument("--sample-every", type=int, default=0,
                        help="also write samples_<step>.png every this many steps (default 0: never)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _fail(message):
    print(f"python -m fastgan train: error: {message}", file=sys.stderr)
    return 2


def _resolve_device(name):
    import torch
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a device ({exc}); use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"--device {name} was requested but CUDA is not available ({build}); "
                             "use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r} is not supported; use cpu or cuda")
    return device


def backend_names(device, batch_size, d_channels, image_shape, z_channels):
    """{op: backend name} for the ops the models use, as fastgan.backends.choose picks them
    for tensors like those of this run (an op without a backend registry entry runs its
    reference implementation directly)."""
    import torch
    from fastgan import backends
    samples = {
        "minibatch_std": torch.empty(batch_size, d_channels, 4, 4, device=device),
        "conv_transpose": torch.empty(batch_size, z_channels, 1, 1, device=device),
        "grad_norm": torch.empty(batch_size, *image_shape, device=device),
    }
    out = {}
    for op, sample in samples.items():
        if op not in backends.ops():
            out[op] = "reference"
            continue
        try:
            out[op] = backends.choose(op, sample).name
        except Exception as exc:  # report, do not die: training itself already succeeded
            out[op] = f"error: {exc}"
    return out


def save_grid(images, path, nrow=8, title=None):
    """images [N, 1 or 3, H, W] in [-1, 1] -> a PNG grid (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    images = images.detach().float().cpu().clamp(-1, 1)
    n, c, h, w = images.shape
    ncol = nrow
    nrows = math.ceil(n / ncol)
    pad = 2
    grid = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), -1.0)  # paper-white frame
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    # Ink (+1) black on white paper (-1), like the scans.
    grid = (1 - grid) / 2
    fig = plt.figure(figsize=(ncol * 0.6 + 0.2, nrows * 0.6 + (0.5 if title else 0.2)), dpi=100)
    ax = fig.add_axes([0, 0, 1, 0.92 if title else 1])
    if c == 1:
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def save_losses(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, len(history["loss_d"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for key, color in (("loss_d", "tab:blue"), ("loss_g", "tab:orange")):
        axes[0].plot(steps, history[key], label=key, color=color, linewidth=0.8)
    axes[0].set_xlabel("generator step")
    axes[0].set_title("WGAN losses")
    axes[0].legend()
    axes[1].plot(steps, history["gp"], label="gp", color="tab:green", linewidth=0.8)
    axes[1].plot(steps, history["wdist"], label="D(real) - D(fake)", color="tab:red", linewidth=0.8)
    axes[1].set_xlabel("generator step")
    axes[1].set_title("gradient penalty and critic gap")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tail_mean(values, n=50):
    tail = values[-n:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def main(args) -> int:
    t_main = time.perf_counter()
    import torch

    from fastgan import data, models

    try:
        device = _resolve_device(args.device)
        models._check_size(args.size)
    except ValueError as exc:
        return _fail(str(exc))
    if args.batch_size % 4:
        return _fail(f"--batch-size {args.batch_size} is not a multiple of 4, the critic's "
                     f"minibatch-std group size; try {max(4, args.batch_size // 4 * 4)}")
    if not 0 <= args.ema < 1:
        return _fail(f"--ema must be in [0, 1), got {args.ema}")
    try:
        images, labels = data.load(args.dataset, size=args.size)
    except ImportError as exc:
        return _fail(str(exc))
    if args.batch_size > images.shape[0]:
        return _fail(f"--batch-size {args.batch_size} exceeds the {images.shape[0]} samples of {args.dataset}")
    os.makedirs(args.out, exist_ok=True)

    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        _hint_if_busy(threads_before)
    try:
        return _train(args, device, images, t_main)
    finally:
        # main() may run inside another program (the tests do): leave its thread count alone.
        torch.set_num_threads(threads_before)


def _hint_if_busy(threads):
    """On a CPU already busy with other processes, torch's OpenMP threads wait for each
    other at every parallel region while the scheduler runs someone else: we measured a
    small model's step 10-20x slower with 2 threads than with 1 on a loaded 2-core
    machine. Say so; do not override the user's choice silently."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = os.cpu_count() or 1
    if threads > 1 and load >= cores:
        print(f"note: this machine is busy (load average {load:.1f} on {cores} cores); "
              f"if training is slow, --threads 1 avoids OpenMP threads waiting on each other",
              file=sys.stderr)


def _train(args, device, images, t_main) -> int:
    import torch
    from tqdm import tqdm

    from fastgan import data, functional as FG, models

    torch.manual_seed(args.seed)
    channels = images.shape[1]
    g_kwargs = dict(nz=args.nz, size=args.size, channels=channels, width=args.g_width,
                    pixel_norm=args.pixel_norm)
    G = models.Generator(**g_kwargs).to(device)
    D = models.Critic(size=args.size, channels=channels, width=args.d_width).to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False) if args.ema > 0 else G
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    sampler = data.InfiniteSampler(images, args.batch_size, seed=args.seed, device=device)
    latent_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    fixed_z = torch.randn(64, args.nz, generator=torch.Generator().manual_seed(args.seed + 2)).to(device)
    save_grid(images[torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(args.seed))[:64]],
              os.path.join(args.out, "real.png"), title=f"real {args.dataset}")

    B = args.batch_size
    hist = {k: [] for k in ("loss_d", "loss_g", "gp", "wdist")}
    pending = []  # per-step loss tensors, turned into floats in batches (fewer device syncs)
    times = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bar = tqdm(total=args.steps, desc=f"train {args.dataset}", unit="step", disable=args.no_progress,
               mininterval=0.5, dynamic_ncols=True)
    t_start = time.perf_counter()

    def flush():
        if pending:
            rows = torch.stack([torch.stack(p) for p in pending]).tolist()
            for ld, lg, gp, wd in rows:
                for key, value in zip(("loss_d", "loss_g", "gp", "wdist"), (ld, lg, gp, wd)):
                    hist[key].append(value)
            pending.clear()

    for step in range(args.steps):
        t0 = time.perf_counter()
        D.requires_grad_(True)
        for _ in range(args.n_critic):
            real = next(sampler)
            with torch.no_grad():
                fake = G(torch.randn(B, args.nz, device=device, generator=latent_gen))
            d_real, d_fake = D(real), D(fake)
            gp = FG.gradient_penalty(D, real, fake, weight=args.gp_weight)
            wdist = d_real.mean() - d_fake.mean()
            loss_d = -wdist + gp
            if args.drift:
                loss_d = loss_d + args.drift * d_real.square().mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        # Generator step: the critic's weights need no gradient here.
        D.requires_grad_(False)
        loss_g = -D(G(torch.randn(B, args.nz, device=device, generator=latent_gen))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if G_ema is not G:
            with torch.no_grad():
                # Warm-up of the average: early on follow the raw weights closely.
                decay = min(args.ema, (1 + step) / (10 + step))
                for pe, p in zip(G_ema.parameters(), G.parameters()):
                    pe.lerp_(p, 1 - decay)
        pending.append([loss_d.detach(), loss_g.detach(), gp.detach(), wdist.detach()])
        sync()
        times.append(time.perf_counter() - t0)
        if len(pending) >= 10 or step == args.steps - 1:
            flush()
            bar.set_postfix(loss_d=f"{hist['loss_d'][-1]:.3f}", loss_g=f"{hist['loss_g'][-1]:.3f}",
                            gp=f"{hist['gp'][-1]:.3f}", refresh=False)
        bar.update(1)
        if args.sample_every > 0 and (step + 1) % args.sample_every == 0 and step + 1 < args.steps:
            with torch.no_grad():
                save_grid(G_ema(fixed_z), os.path.join(args.out, f"samples_{step + 1:06d}.png"),
                          title=f"generated {args.dataset}, {step + 1} steps")
    bar.close()
    flush()
    train_seconds = time.perf_counter() - t_start

    G_ema.eval()
    with torch.no_grad():
        samples = G_ema(fixed_z)
    save_grid(samples, os.path.join(args.out, "samples.png"),
              title=f"generated {args.dataset}, {args.steps} steps")
    save_losses(hist, os.path.join(args.out, "losses.png"))
    torch.save({"state_dict": G_ema.state_dict(), "kwargs": g_kwargs},
               os.path.join(args.out, "generator.pt"))

    warmup = min(10, len(times) // 5)
    d_channels = D.layers[-1].out_channels
    metrics = {
        "dataset": args.dataset,
        "steps": args.steps,
        "seconds_per_step": statistics.median(times[warmup:]),
        "warmup_steps_excluded": warmup,
        "train_seconds": train_seconds,
        "loss_d": _tail_mean(hist["loss_d"]),
        "loss_g": _tail_mean(hist["loss_g"]),
        "gp": _tail_mean(hist["gp"]),
        "wasserstein_estimate": _tail_mean(hist["wdist"]),
        "final_values_are": f"mean of the last {min(50, len(hist['loss_g']))} generator steps",
        "backend": backend_names(device, B, d_channels, tuple(images.shape[1:]), args.nz),
        "torch": torch.__version__,
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "threads": torch.get_num_threads(),
        "batch_size": B,
        "seed": args.seed,
        "config": {k: getattr(args, k) for k in ("n_critic", "lr", "beta1", "beta2", "gp_weight", "drift",
                                                 "nz", "g_width", "d_width", "size", "ema", "pixel_norm")},
        "parameters": {"generator": sum(p.numel() for p in G.parameters()),
                       "critic": sum(p.numel() for p in D.parameters())},
    }
    metrics["total_seconds"] = time.perf_counter() - t_main  # data, training, pictures (not imports)
    bad = [k for k in ("loss_d", "loss_g", "gp") if not math.isfinite(metrics[k])]
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"wrote {args.out}/samples.png, real.png, losses.png, metrics.json, generator.pt "
          f"({metrics['seconds_per_step'] * 1e3:.1f} ms/step, {train_seconds:.1f} s training, "
          f"{metrics['total_seconds']:.1f} s in all)")
    if bad:
        return _fail(f"training diverged: non-finite {', '.join(bad)} (see {args.out}/losses.png)")
    return 0
