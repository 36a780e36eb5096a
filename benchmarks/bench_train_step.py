"""End-to-end benchmark: one full WGAN-GP training step on the digits models.

A step (op "train_step") = one critic step (D(real), D(fake), gradient penalty with its
double backward through the critic, Adam) followed by one generator step (-D(G(z)), Adam),
at batch 64 on 32x32 single-channel images, the models of `python -m fastgan train` at
their default widths. "critic_step" times the critic step alone (where the penalty's
double backward lives).

Providers:
  fastgan            fastgan layers, automatic backend choice
  fastgan-reference  the same fastgan layers with every op forced to the reference backend
  eager              the plain torch.nn twin (nn.ConvTranspose2d + separate activation,
                     plain-torch minibatch std), same weights

    pytest benchmarks/bench_train_step.py --benchmark-disable -q     # runs each once
    (--quick: train_step only)
"""
import pytest
import torch

from conftest import DEVICE, pick, run

from fastgan import backends, functional as FG, models, train

BATCH, SIZE = 64, 32
PROVIDERS = ["fastgan", "fastgan-reference", "eager"]


def _models(provider):
    d = train.DEFAULTS
    torch.manual_seed(0)
    G = models.Generator(nz=d["nz"], size=SIZE, width=d["g_width"], pixel_norm=d["pixel_norm"]).to(DEVICE)
    D = models.Critic(size=SIZE, width=d["d_width"]).to(DEVICE)
    if provider == "eager":
        G, D = models.eager_twin(G), models.eager_twin(D)
    return G, D


def make_step(provider, critic_only=False):
    """A closure performing one training step (state advances every call, like training)."""
    d = train.DEFAULTS
    G, D = _models(provider)
    opt_g = torch.optim.Adam(G.parameters(), lr=d["lr"], betas=(d["beta1"], d["beta2"]))
    opt_d = torch.optim.Adam(D.parameters(), lr=d["lr"], betas=(d["beta1"], d["beta2"]))
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    real = torch.rand(BATCH, 1, SIZE, SIZE, device=DEVICE, generator=gen) * 2 - 1
    z_d = torch.randn(BATCH, d["nz"], device=DEVICE, generator=gen)
    z_g = torch.randn(BATCH, d["nz"], device=DEVICE, generator=gen)
    alpha = torch.rand(BATCH, 1, 1, 1, device=DEVICE, generator=gen)

    def critic_step():
        D.requires_grad_(True)
        with torch.no_grad():
            fake = G(z_d)
        gp = FG.gradient_penalty(D, real, fake, weight=d["gp_weight"], alpha=alpha)
        loss_d = D(fake).mean() - D(real).mean() + gp
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        return loss_d

    def generator_step():
        D.requires_grad_(False)
        loss_g = -D(G(z_g)).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        return loss_g

    def step():
        critic_step()
        return generator_step()

    fn = critic_step if critic_only else step
    if provider == "fastgan-reference":
        def forced():
            with backends.use("reference"):
                return fn()
        return forced
    return fn


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("op", pick(["train_step", "critic_step"], ["train_step"]))
def test_train_step(benchmark, op, provider):
    fn = make_step(provider, critic_only=(op == "critic_step"))
    info = benchmark.extra_info
    info.update({"op": op, "provider": provider, "mode": "step", "dtype": "float32",
                 "shape": [BATCH, 1, SIZE, SIZE], "device": DEVICE})
    loss = run(benchmark, fn)
    assert torch.isfinite(loss).item()
