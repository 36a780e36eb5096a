"""DistributedDataParallel for real: two CPU processes (gloo) train a critic that contains
MinibatchStdDev with gradient_penalty and r1_penalty, and end with the same parameters
as the same computation done in one process.

Why it matches: each rank's batch of 4 forms its own MinibatchStdDev groups (group
size 2 within the rank's batch), DDP averages the two ranks' gradients, so one step is
a step on (loss_rank0 + loss_rank1) / 2, which the single process computes directly by
evaluating the critic on each rank's slice separately. Everything is float64, the
random draws (data, alpha) are fixed up front, and SGD is linear in the gradient, so
the only difference is the order of floating-point additions (hence allclose).
"""
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import fastgan.functional as FG
import fastgan.layers as L

WORLD = 2
PER_RANK = 4
STEPS = 3
LR = 0.05


def make_critic():
    torch.manual_seed(1234)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), L.MinibatchStdDev(group_size=2),
        nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 3 * 3, 1),
    ).double()


def make_data():
    gen = torch.Generator().manual_seed(99)
    n = WORLD * PER_RANK
    return [(torch.randn(n, 3, 5, 5, generator=gen, dtype=torch.float64),
             torch.randn(n, 3, 5, 5, generator=gen, dtype=torch.float64),
             torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)) for _ in range(STEPS)]


def critic_loss(critic, real, fake, alpha):
    """WGAN critic loss + WGAN-GP + R1 (each penalty calls the critic again)."""
    return (critic(fake).mean() - critic(real).mean()
            + FG.gradient_penalty(critic, real, fake, alpha=alpha, weight=10.0)
            + FG.r1_penalty(critic, real, gamma=1.0))


# StyleGAN2-style lazy R1: every 2nd step an extra step on the penalty alone. Under DDP
# (find_unused_parameters=False) this backward must reach every parameter, including
# the last bias that never enters d out/dx: the penalties' zero link does that.
LAZY_R1 = L.R1Penalty(gamma=0.5, interval=2)


def _rank_slice(rank):
    return slice(rank * PER_RANK, (rank + 1) * PER_RANK)


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    ok = False
    try:
        critic = make_critic()
        model = DDP(critic)  # find_unused_parameters=False: every parameter must get a grad
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        sl = _rank_slice(rank)
        losses = []
        for step, (real, fake, alpha) in enumerate(make_data()):
            opt.zero_grad(set_to_none=True)
            loss = critic_loss(model, real[sl], fake[sl], alpha[sl])
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if LAZY_R1.due(step):
                opt.zero_grad(set_to_none=True)
                LAZY_R1(model, real[sl]).backward()
                opt.step()
        dist.barrier()  # both ranks are done with gloo before either leaves
        # Each rank writes its own result (atomically: write, then rename) only once all
        # collectives are over; the test compares both ranks with the single process.
        tmp = f"{out_dir}/rank{rank}.tmp"
        torch.save({"state": critic.state_dict(), "losses": losses}, tmp)
        os.replace(tmp, f"{out_dir}/rank{rank}.pt")
        ok = True
    finally:
        if not ok:  # a failure: tear down normally so the traceback reaches the parent
            dist.destroy_process_group()
    # Success: leave without tearing gloo down and without the interpreter's exit-time
    # C++ destructors. Gloo's threads occasionally abort at shutdown ("terminate called
    # without an active exception", seen twice in CI after all the work was done).
    os._exit(0)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(per_rank=True):
    critic = make_critic()
    opt = torch.optim.SGD(critic.parameters(), lr=LR)
    slices = [_rank_slice(r) for r in range(WORLD)] if per_rank else [slice(None)]
    for step, (real, fake, alpha) in enumerate(make_data()):
        # per_rank=False: one batch of 8 has other MinibatchStdDev groups: another computation.
        opt.zero_grad(set_to_none=True)
        loss = sum(critic_loss(critic, real[s], fake[s], alpha[s]) for s in slices) / len(slices)
        loss.backward()
        opt.step()
        if LAZY_R1.due(step):
            opt.zero_grad(set_to_none=True)
            (sum(LAZY_R1(critic, real[s]) for s in slices) / len(slices)).backward()
            opt.step()
    return critic.state_dict()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available in this build")
def test_ddp_two_processes_match_one_process(tmp_path, monkeypatch):
    if os.path.isdir("/sys/class/net/lo"):
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # stay on the loopback interface
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                             join=False, start_method="spawn")
    try:
        while not ctx.join(timeout=300, grace_period=60):
            pass
    except mp.ProcessExitedException as exc:
        # A rank that died by a signal after it wrote its result finished every collective
        # (the result is written after the final barrier): that is gloo's teardown, not the
        # computation under test. Any other failure (an exception, a death before the
        # result) fails the test. The remaining rank is joined by start_processes' cleanup.
        done = all((tmp_path / f"rank{r}.pt").exists() for r in range(WORLD))
        if exc.signal_name is None or not done:
            raise
        warnings.warn(f"ignored gloo teardown crash after the work was done: {exc}")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    result = results[0]
    want = _single_process()
    start = make_critic().state_dict()
    # Every parameter but the last bias moves (its gradient is exactly 0: it cancels in
    # mean(fake) - mean(real) and never enters d out/dx); else the test proves nothing.
    moved = {name for name, value in want.items() if not torch.allclose(value, start[name])}
    assert moved == set(want) - {"6.bias"}, moved
    for name, value in want.items():
        torch.testing.assert_close(result["state"][name], value, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    for name, value in want.items():  # DDP keeps the replicas identical
        torch.testing.assert_close(results[1]["state"][name], value, rtol=1e-10, atol=1e-12)
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in results)
    # The per-rank grouping matters: one batch of 8 gives other parameters.
    other = _single_process(per_rank=False)
    assert any(not torch.allclose(other[k], want[k], rtol=1e-8, atol=1e-10) for k in want)
