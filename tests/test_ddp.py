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


def _worker(rank, port, out_path):
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
        if rank == 0:
            torch.save({"state": critic.state_dict(), "losses": losses}, out_path)
        dist.barrier()  # both ranks are done with gloo before either leaves
        ok = True
    finally:
        if not ok:  # a failure: tear down normally so the traceback reaches mp.spawn
            dist.destroy_process_group()
    # Success: leave without tearing gloo down and without the interpreter's exit-time
    # C++ destructors. Gloo's threads occasionally abort there ("terminate called without
    # an active exception", seen in CI after all the work was done); the result is on
    # disk and what this test checks is the math, not gloo's shutdown.
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
    out = tmp_path / "ddp_rank0.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    result = torch.load(out)
    want = _single_process()
    start = make_critic().state_dict()
    # Every parameter but the last bias moves (its gradient is exactly 0: it cancels in
    # mean(fake) - mean(real) and never enters d out/dx); else the test proves nothing.
    moved = {name for name, value in want.items() if not torch.allclose(value, start[name])}
    assert moved == set(want) - {"6.bias"}, moved
    for name, value in want.items():
        torch.testing.assert_close(result["state"][name], value, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert all(torch.isfinite(torch.tensor(result["losses"])))
    # The per-rank grouping matters: one batch of 8 gives other parameters.
    other = _single_process(per_rank=False)
    assert any(not torch.allclose(other[k], want[k], rtol=1e-8, atol=1e-10) for k in want)
