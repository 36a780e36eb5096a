"""A full WGAN-GP critic step (op "critic_step"): critic forward on real and fake, the
gradient penalty (x_hat, d critic / d x_hat with create_graph, the norm reduction),
backward (including the double backward through the critic) and an Adam step.

Critic: the DCGAN discriminator with a minibatch-std head (fastgan.models.Critic):
at 64x64, 3 -> 64 -> 128 -> 256 -> 512 channels (k4 s2 p1 convs + LeakyReLU 0.2), then
MinibatchStdDev(group 4) and a 4x4 conv to one score; at 32x32, 3 -> 64 -> 128 -> 256.
Batch 64, float32.

Providers:
  fastgan            fastgan layers (MinibatchStdDev op) + fastgan.functional.gradient_penalty
                     (fused grad_norm op), automatic backend choice
  fastgan-reference  the same with every fastgan op forced to the reference backend
                     (FASTGAN_BACKEND=reference)
  eager              plain torch.nn twin (hand-written minibatch std) + the usual
                     hand-written WGAN-GP: ((g.flatten(1).norm(dim=1) - 1)**2).mean()
(torch.compile cannot take the double backward, so there is no "compile" provider.)

    pytest benchmarks/bench_critic_step.py --benchmark-disable -q     # runs each once
"""
import pytest
import torch

from conftest import DEVICE, pick, run

from fastgan import backends, models
from fastgan import functional as FG

BATCH = 64
SIZES = pick([32, 64], [32])
PROVIDERS = ["fastgan", "fastgan-reference", "eager"]
WEIGHT = 10.0


def eager_gradient_penalty(critic, real, fake, alpha):
    """WGAN-GP as it is usually written in plain PyTorch."""
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return WEIGHT * (g.flatten(1).norm(2, dim=1) - 1).square().mean()


def fastgan_gradient_penalty(critic, real, fake, alpha):
    return FG.gradient_penalty(critic, real, fake, weight=WEIGHT, alpha=alpha)


def make_critic_step(provider, size):
    """A closure doing one critic step; parameters advance every call, as in training."""
    torch.manual_seed(0)
    critic = models.Critic(size=size, channels=3, width=64, max_width=512).to(DEVICE)
    penalty = fastgan_gradient_penalty
    if provider == "eager":
        critic = models.eager_twin(critic)
        penalty = eager_gradient_penalty
    opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.0, 0.9))
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    real = torch.rand(BATCH, 3, size, size, device=DEVICE, generator=gen) * 2 - 1
    fake = torch.rand(BATCH, 3, size, size, device=DEVICE, generator=gen) * 2 - 1
    alpha = torch.rand(BATCH, 1, 1, 1, device=DEVICE, generator=gen)

    def step():
        gp = penalty(critic, real, fake, alpha)
        loss = critic(fake).mean() - critic(real).mean() + gp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if provider == "fastgan-reference":
        def forced():
            with backends.use("reference"):
                return step()
        return forced
    return step


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_critic_step(benchmark, provider, size):
    fn = make_critic_step(provider, size)
    info = benchmark.extra_info
    info.update({"op": "critic_step", "provider": provider, "mode": "step", "dtype": "float32",
                 "shape": f"{BATCH}x3x{size}x{size}", "device": DEVICE})
    loss = run(benchmark, fn, warmup=1)
    assert torch.isfinite(loss).item()
