"""WGAN-GP, R1 and R2 (fastgan.penalties, the modules in fastgan.layers): the formulas
against hand-written autograd versions (values and critic-parameter gradients, float64),
through a critic that contains MinibatchStdDev (double backward through it); zero
gradients; GradScaler; input validation; every parameter gets a gradient; lazy
regularisation."""
import pytest
import torch
from torch import nn

import fastgan.functional as FG
import fastgan.layers as L
from conftest import backend_params, device_params
from fastgan import backends
from fastgan.reference import minibatch_std as mbstd_ref


class PlainMinibatchStd(nn.Module):
    """MinibatchStdDev in plain PyTorch (the reference formula, autograd does the rest)."""

    def __init__(self, group_size):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        return mbstd_ref.minibatch_std(x, min(self.group_size, x.shape[0]), 1, 1e-8)


def make_critic(fastgan_mbstd=True, dtype=torch.float64, squeeze=False):
    """A small critic on [N, 3, 5, 5]: conv, lrelu, minibatch std, conv, softplus
    (smooth: non-zero second derivatives), linear -> [N, 1] (or [N])."""
    mb = L.MinibatchStdDev(group_size=2) if fastgan_mbstd else PlainMinibatchStd(2)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), mb,
              nn.Conv2d(5, 4, 3, stride=2, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 3 * 3, 1)]
    if squeeze:
        layers.append(nn.Flatten(0))
    return nn.Sequential(*layers).to(dtype)


def twin_critics(**kw):
    """(fastgan critic, plain critic) with identical parameters."""
    a = make_critic(True, **kw)
    b = make_critic(False, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def force_grad_norm(monkeypatch, name):
    """Force backend `name` for the grad_norm op only (the critic's other ops, e.g.
    minibatch_std, keep choosing their own: not every backend takes float64)."""
    choose = backends.choose

    def patched(op, *args):
        if op == "grad_norm":
            with backends.use(name):
                return choose(op, *args)
        return choose(op, *args)

    monkeypatch.setattr(backends, "choose", patched)


def batch(n=4, dtype=torch.float64):
    return torch.randn(n, 3, 5, 5, dtype=dtype)


# ---------------------------------------------------------------- hand-written versions
def _grad(critic, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return g


def naive_gp(critic, real, fake, alpha, weight=10.0, center=1.0):
    g = _grad(critic, alpha * real + (1 - alpha) * fake)
    return weight * (g.reshape(g.shape[0], -1).norm(dim=1) - center).square().mean()


def naive_r(critic, x, gamma=10.0):
    g = _grad(critic, x)
    return gamma / 2 * g.reshape(g.shape[0], -1).square().sum(dim=1).mean()


def param_grads(critic, loss):
    critic.zero_grad(set_to_none=True)
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in critic.parameters()]


def assert_same(got_loss, got_critic, want_loss, want_critic, tol=1e-10):
    torch.testing.assert_close(got_loss.detach(), want_loss.detach(), rtol=tol, atol=tol)
    got = param_grads(got_critic, got_loss)
    want = param_grads(want_critic, want_loss)
    for (name, _), a, b in zip(got_critic.named_parameters(), got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
    return got


# ---------------------------------------------------------------- the formulas
@pytest.mark.parametrize("backend", backend_params("grad_norm"))
def test_gradient_penalty_pins_the_formula(backend, monkeypatch):
    if backend in ("cuda",) or (backend == "triton" and torch.cuda.is_available()):
        pytest.skip("CPU tensors in this test; GPU backends are compared in test_grad_norm.py")
    ours, plain = twin_critics()
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    force_grad_norm(monkeypatch, backend)
    got = FG.gradient_penalty(ours, real, fake, alpha=alpha)
    assert_same(got, ours, naive_gp(plain, real, fake, alpha), plain)
    got = FG.gradient_penalty(ours, real, fake, alpha=alpha, weight=3.0, center=0.5)
    assert_same(got, ours, naive_gp(plain, real, fake, alpha, 3.0, 0.5), plain)


@pytest.mark.parametrize("backend", backend_params("grad_norm"))
def test_r1_and_r2_pin_the_formula(backend, monkeypatch):
    if backend in ("cuda",) or (backend == "triton" and torch.cuda.is_available()):
        pytest.skip("CPU tensors in this test; GPU backends are compared in test_grad_norm.py")
    ours, plain = twin_critics()
    real, fake = batch(), batch()
    force_grad_norm(monkeypatch, backend)
    assert_same(FG.r1_penalty(ours, real), ours, naive_r(plain, real), plain)
    assert_same(FG.r2_penalty(ours, fake, gamma=0.3), ours, naive_r(plain, fake, 0.3), plain)


def test_modules_match_the_functions():
    critic = make_critic()
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(L.GradientPenalty(weight=2.0, center=0.3)(critic, real, fake, alpha),
                               FG.gradient_penalty(critic, real, fake, weight=2.0, center=0.3, alpha=alpha))
    torch.testing.assert_close(L.R1Penalty(gamma=4.0)(critic, real), FG.r1_penalty(critic, real, gamma=4.0))
    torch.testing.assert_close(L.R2Penalty(gamma=4.0)(critic, fake), FG.r2_penalty(critic, fake, gamma=4.0))


def test_output_n_and_n1_are_the_same():
    a = make_critic(squeeze=False)
    b = make_critic(squeeze=True)
    b.load_state_dict(a.state_dict())
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    assert b(real).shape == (4,) and a(real).shape == (4, 1)
    torch.testing.assert_close(FG.gradient_penalty(a, real, fake, alpha=alpha),
                               FG.gradient_penalty(b, real, fake, alpha=alpha))
    torch.testing.assert_close(FG.r1_penalty(a, real), FG.r1_penalty(b, real))


# ---------------------------------------------------------------- alpha
class Recorder(nn.Module):
    """A critic that remembers its input (and is linear: score = sum w * x)."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return (x * self.w).flatten(1).sum(1)


def test_alpha_is_drawn_per_sample_in_unit_interval():
    n = 64
    real, fake = batch(n), batch(n)
    critic = Recorder(real.shape[1:])
    FG.gradient_penalty(critic, real, fake)
    a = (critic.seen - fake) / (real - fake)  # x_hat = a * real + (1 - a) * fake
    per_sample = a.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample), rtol=1e-8, atol=1e-8)
    a = per_sample[:, 0]
    assert (a >= 0).all() and (a < 1).all()
    assert a.std() > 0.15  # spread over [0, 1), not one value for the batch


def test_alpha_shapes():
    critic = make_critic()
    real, fake = batch(), batch()
    alpha = torch.rand(4, dtype=torch.float64)
    torch.testing.assert_close(FG.gradient_penalty(critic, real, fake, alpha=alpha),
                               FG.gradient_penalty(critic, real, fake, alpha=alpha.reshape(4, 1, 1, 1)))
    for bad in (torch.rand(4, 1, 5, 5), torch.rand(1, 1, 1, 1), torch.rand(5), torch.rand(4, 1)):
        with pytest.raises(ValueError, match="one value per sample"):
            FG.gradient_penalty(critic, real, fake, alpha=bad.double())
    with pytest.raises(TypeError, match="alpha must be a tensor"):
        FG.gradient_penalty(critic, real, fake, alpha=0.5)


# ---------------------------------------------------------------- detached inputs
def test_inputs_are_detached_and_releafed():
    critic = make_critic()
    gen = nn.Linear(2, 75).double()
    fake = gen(torch.randn(4, 2, dtype=torch.float64)).reshape(4, 3, 5, 5)  # requires grad
    real = batch().requires_grad_(True)
    for pen in (FG.gradient_penalty(critic, real, fake), FG.r1_penalty(critic, real), FG.r2_penalty(critic, fake)):
        pen.backward()
    assert real.grad is None
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in critic.parameters())


# ---------------------------------------------------------------- zero gradients
class Ignorer(nn.Module):
    """Scores that do not depend on x at all."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))

    def forward(self, x):
        return self.b.expand(x.shape[0])


class DeadRelu(nn.Module):
    """Depends on x, but relu(x - 100) has zero gradient at every test point."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(75, 1).double()

    def forward(self, x):
        return self.lin(torch.relu(x.flatten(1) - 100.0))


@pytest.mark.parametrize("critic_cls", [Ignorer, DeadRelu])
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_zero_gradient_gives_finite_penalty_and_gradients(critic_cls, center):
    critic = critic_cls()
    real, fake = batch(), batch()
    pen = FG.gradient_penalty(critic, real, fake, center=center, weight=10.0)
    torch.testing.assert_close(pen.detach(), torch.tensor(10.0 * center ** 2, dtype=torch.float64))
    pen.backward()
    for p in critic.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    r1 = FG.r1_penalty(critic, real)
    assert r1.item() == 0.0
    r1.backward()
    assert all(torch.isfinite(p.grad).all() for p in critic.parameters())


def test_zero_gradient_sample_among_others_keeps_gradients_finite():
    """One sample of the batch sits where the critic is flat (g_i = 0), the others not."""
    lin = nn.Linear(75, 1).double()
    critic = nn.Sequential(nn.Flatten(), nn.ReLU(), lin)
    real = batch()
    real[0] = -1.0  # relu kills sample 0: its gradient is exactly 0
    pen = FG.gradient_penalty(critic, real, real.clone(), alpha=torch.ones(4, dtype=torch.float64))
    pen.backward()
    assert torch.isfinite(pen) and all(torch.isfinite(p.grad).all() for p in critic.parameters())


# ---------------------------------------------------------------- GradScaler
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ["gp", "r1", "r2"])
def test_scaler_gives_the_same_penalty_and_gradients(which, device):
    critic = make_critic().to(device)
    real, fake = batch().to(device), batch().to(device)
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64, device=device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 14)
    assert scaler.is_enabled()

    def run(s):
        if which == "gp":
            return FG.gradient_penalty(critic, real, fake, alpha=alpha, scaler=s)
        return (FG.r1_penalty if which == "r1" else FG.r2_penalty)(critic, real if which == "r1" else fake, scaler=s)

    plain = run(None)
    scaled = run(scaler)
    assert abs(plain.item()) > 1e-3
    torch.testing.assert_close(scaled, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(param_grads(critic, scaled), param_grads(critic, run(None))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    disabled = torch.amp.GradScaler(device, enabled=False)
    torch.testing.assert_close(run(disabled), plain, rtol=1e-12, atol=1e-12)


def test_scaler_in_a_training_step():
    """penalty inside scaler.scale(loss).backward(); scaler.step(opt): parameters move
    exactly as in the unscaled step (float64, scale a power of two)."""
    a = make_critic()
    b = make_critic()
    b.load_state_dict(a.state_dict())
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    loss_a = a(fake).mean() - a(real).mean() + FG.gradient_penalty(a, real, fake, alpha=alpha, scaler=scaler)
    scaler.scale(loss_a).backward()
    scaler.step(opt_a)
    scaler.update()
    loss_b = b(fake).mean() - b(real).mean() + FG.gradient_penalty(b, real, fake, alpha=alpha)
    loss_b.backward()
    opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- validation
class FixedOutput(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return (x.flatten(1).sum(1)[:1].sum() * self.w).expand(self.shape)


@pytest.mark.parametrize("shape", [(4, 2), (4, 1, 1), (), (5,), (1, 4)])
def test_bad_critic_output_shape_is_a_clear_error(shape):
    critic = FixedOutput(shape)
    with pytest.raises(ValueError, match=r"one score per sample, shape \[4\] or \[4, 1\]"):
        FG.gradient_penalty(critic, batch(), batch())
    with pytest.raises(ValueError, match="one score per sample"):
        FG.r1_penalty(critic, batch())


def test_bad_inputs_are_clear_errors():
    critic = make_critic()
    with pytest.raises(ValueError, match="same shape"):
        FG.gradient_penalty(critic, batch(4), batch(2))
    with pytest.raises(ValueError, match="same dtype and device"):
        FG.gradient_penalty(critic, batch(), batch().float())
    with pytest.raises(TypeError, match="floating-point"):
        FG.r1_penalty(critic, torch.ones(4, 3, 5, 5, dtype=torch.uint8))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        FG.r2_penalty(critic, [[1.0]])
    with pytest.raises(ValueError, match="at least one sample"):
        FG.r1_penalty(critic, torch.randn(0, 3, 5, 5, dtype=torch.float64))


# ---------------------------------------------------------------- every parameter (DDP)
@pytest.mark.parametrize("which", ["gp", "r1", "r2"])
def test_every_parameter_gets_a_gradient(which):
    """The last layer's bias never affects d out / dx; it still gets a (zero) gradient,
    as does a final scalar offset. DistributedDataParallel relies on this."""
    class WithOffset(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_critic()
            self.offset = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, x):
            return self.body(x) + self.offset

    critic = WithOffset()
    real, fake = batch(), batch()
    pen = {"gp": lambda: FG.gradient_penalty(critic, real, fake),
           "r1": lambda: FG.r1_penalty(critic, real),
           "r2": lambda: FG.r2_penalty(critic, fake)}[which]()
    pen.backward()
    for name, p in critic.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert critic.offset.grad == 0
    assert (critic.body[-1].bias.grad == 0).all()
    assert critic.body[0].weight.grad.abs().sum() > 0


def test_zero_link_does_not_change_the_value_even_for_inf_scores():
    """The link adds exactly 0 (not 0 * score, which is NaN for an infinite score)."""
    class InfPlus(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(75, 1).double()

        def forward(self, x):
            return self.lin(x.flatten(1)) + torch.tensor(float("inf"), dtype=torch.float64)

    critic = InfPlus()
    pen = FG.r1_penalty(critic, batch())
    w = critic.lin.weight.detach()
    torch.testing.assert_close(pen.detach(), 5.0 * w.square().sum())


# ---------------------------------------------------------------- reduced precision
def test_bfloat16_critic():
    c64 = make_critic(dtype=torch.float64)
    c16 = make_critic(dtype=torch.bfloat16)
    c16.load_state_dict({k: v.to(torch.bfloat16) for k, v in c64.state_dict().items()})
    c64.load_state_dict({k: v.to(torch.float64) for k, v in c16.state_dict().items()})
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    r16, f16, a16 = real.bfloat16(), fake.bfloat16(), alpha.bfloat16()
    pen16 = FG.gradient_penalty(c16, r16, f16, alpha=a16)
    pen64 = FG.gradient_penalty(c64, r16.double(), f16.double(), alpha=a16.double())
    assert pen16.dtype == torch.float32
    torch.testing.assert_close(pen16.double(), pen64, rtol=5e-2, atol=1e-2)
    pen16.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in c16.parameters())


# ---------------------------------------------------------------- lazy regularisation
def test_lazy_regularisation_interval():
    critic = make_critic()
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    gp = L.GradientPenalty(interval=4)
    r1 = L.R1Penalty(gamma=2.0, interval=16)
    r2 = L.R2Penalty(interval=3)
    assert [gp.due(s) for s in range(9)] == [True, False, False, False, True, False, False, False, True]
    assert L.R1Penalty().due(7) and L.GradientPenalty().interval == 1
    torch.testing.assert_close(gp(critic, real, fake, alpha), 4 * FG.gradient_penalty(critic, real, fake, alpha=alpha))
    torch.testing.assert_close(r1(critic, real), 16 * FG.r1_penalty(critic, real, gamma=2.0))
    torch.testing.assert_close(r2(critic, fake), 3 * FG.r2_penalty(critic, fake))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="interval must be a positive int"):
            L.R1Penalty(interval=bad)
    assert "interval=16" in repr(r1)


def test_penalty_value_under_no_grad():
    """Under torch.no_grad() (e.g. to log it) the penalty has its true value, not the
    value of a zero gradient, and no graph."""
    critic = make_critic()
    real, fake = batch(), batch()
    alpha = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    want = FG.gradient_penalty(critic, real, fake, alpha=alpha).detach()
    with torch.no_grad():
        got = FG.gradient_penalty(critic, real, fake, alpha=alpha)
        r1 = FG.r1_penalty(critic, real)
    assert not got.requires_grad and not r1.requires_grad
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(r1, FG.r1_penalty(critic, real).detach())


def test_eager_fast_path_matches_custom_op():
    """In plain eager mode the public functions run their kernels through an
    autograd.Function (no custom-op dispatch); under tracing they use the custom ops.
    Both give the same values, gradients and second derivatives."""
    from fastgan.ops import _common
    from fastgan.ops.grad_norm import grad_norm_penalty_op
    from fastgan.ops.minibatch_std import minibatch_std_op
    x = torch.randn(6, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    assert _common.eager_fast_path(x)
    fast = FG.minibatch_stddev(x, 3, 1)
    op = minibatch_std_op(x, 3, 1, 1e-8)
    assert torch.equal(fast, op)
    gy = torch.randn_like(op)
    (g_fast,) = torch.autograd.grad(fast, x, gy, create_graph=True)
    (g_op,) = torch.autograd.grad(op, x, gy, create_graph=True)
    assert torch.equal(g_fast, g_op)
    p_fast = FG.gradient_norm_penalty(g_fast, 1.0)
    p_op = grad_norm_penalty_op(g_op, 1.0)[0]
    assert torch.equal(p_fast, p_op)
    (h_fast,) = torch.autograd.grad(p_fast, x)
    (h_op,) = torch.autograd.grad(p_op, x)
    torch.testing.assert_close(h_fast, h_op, rtol=1e-12, atol=1e-12)
    assert h_fast.abs().sum() > 0  # the second derivative is not trivially zero
