"""fastgan.data (the bundled digits) and fastgan.models (generator, critic, eager twins)."""
import pytest
import torch

from fastgan import backends, data, layers as L, models
from fastgan.reference.minibatch_std import minibatch_std as ref_minibatch_std


# ---------------------------------------------------------------- data
@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")
    return data.load_digits(32)


def test_digits_shape_dtype_range(digits):
    images, labels = digits
    assert images.shape == (1797, 1, 32, 32)
    assert images.dtype == torch.float32 and images.is_contiguous()
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min().item() >= -1.0 and images.max().item() <= 1.0
    # Real scans: blank paper reaches -1, ink reaches near +1, every digit 0..9 is present.
    assert images.min().item() == -1.0 and images.max().item() > 0.9
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert torch.bincount(labels).min().item() >= 170


def test_digits_match_the_scans(digits):
    """Resizing is bilinear interpolation of p/16*2-1: averaging 4x4 blocks of the 32x32 image
    (align_corners=False, exact 4x upscale) nearly gives back the 8x8 scan."""
    from sklearn.datasets import load_digits as sk_load
    scans = torch.as_tensor(sk_load().images, dtype=torch.float32) / 16 * 2 - 1
    images, _ = digits
    assert torch.equal(data.load_digits(8)[0][:, 0], scans)
    down = torch.nn.functional.avg_pool2d(images, 4)[:, 0]
    assert (down - scans).abs().mean().item() < 0.2  # bilinear blurs edges a little
    # Output pixel 5 samples source coordinate (5 + 0.5) / 4 - 0.5 = 0.875 in each axis:
    # 1/8 of scan pixel 0 and 7/8 of scan pixel 1, bilinearly.
    centre = images[:, 0, 5, 5]
    expect = (scans[:, 0, 0] * 0.125 * 0.125 + scans[:, 0, 1] * 0.125 * 0.875
              + scans[:, 1, 0] * 0.875 * 0.125 + scans[:, 1, 1] * 0.875 * 0.875)
    torch.testing.assert_close(centre, expect)


def test_load_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits"):
        data.load("mnist")


def test_load_digits_rejects_bad_size():
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        data.load_digits(4)


def test_missing_sklearn_says_how_to_install(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.load_digits()


def test_sampler_is_seeded_and_covers_an_epoch(digits):
    images, labels = digits
    a = data.InfiniteSampler(images, 64, seed=3)
    b = data.InfiniteSampler(images, 64, seed=3)
    c = data.InfiniteSampler(images, 64, seed=4)
    xa, xb, xc = next(a), next(b), next(c)
    assert xa.shape == (64, 1, 32, 32)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    # One epoch (1797 // 64 = 28 batches) draws 28 * 64 distinct samples, then a new order.
    s = data.InfiniteSampler(torch.arange(1797).float().reshape(-1, 1, 1, 1), 64, seed=0)
    seen = torch.cat([next(s).flatten() for _ in range(28)])
    assert seen.unique().numel() == 28 * 64
    assert next(s).shape[0] == 64
    x, y = data.InfiniteSampler(images, 8, seed=0, labels=labels).next_with_labels()
    assert x.shape == (8, 1, 32, 32) and y.shape == (8,)


def test_sampler_rejects_bad_batch_size(digits):
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 1797\]"):
        data.InfiniteSampler(digits[0], 2000)


def test_make_loader(digits):
    images, labels = digits
    x, y = next(iter(data.make_loader(images, labels, 16, seed=0)))
    assert x.shape == (16, 1, 32, 32) and y.shape == (16,)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("size", [16, 32, 64])
def test_model_shapes(size):
    G = models.Generator(nz=16, size=size, width=4)
    D = models.Critic(size=size, width=4)
    z = torch.randn(8, 16)
    x = G(z)
    assert x.shape == (8, 1, size, size)
    assert x.abs().max().item() < 1  # tanh output
    assert torch.equal(G(z.reshape(8, 16, 1, 1)), x)
    assert D(x).shape == (8,)
    # Fused layers: every generator layer is a fastgan ConvTranspose2d with its activation.
    assert all(isinstance(m, L.ConvTranspose2d) for m in G.layers)
    assert [m.activation for m in G.layers] == ["relu"] * (len(G.layers) - 1) + ["tanh"]
    assert isinstance(D.mbstd, L.MinibatchStdDev) and D.mbstd.group_size == 4
    # Resolutions: 1 -> 4 -> ... -> size.
    assert len(G.layers) == size.bit_length() - 1 - 2 + 1
    assert len(D.layers) == size.bit_length() - 1 - 2


def test_model_widths():
    G = models.Generator(nz=64, size=32, width=32)
    assert [(m.in_channels, m.out_channels) for m in G.layers] == [(64, 128), (128, 64), (64, 32), (32, 1)]
    D = models.Critic(size=32, width=32)
    assert [(m.in_channels, m.out_channels) for m in D.layers] == [(1, 32), (32, 64), (64, 128)]
    assert D.final.in_channels == 129
    G = models.Generator(size=64, width=32, max_width=128)
    assert G.layers[0].out_channels == 128 and G.layers[1].out_channels == 128


@pytest.mark.parametrize("size", [8, 24, 48, "32"])
def test_models_reject_bad_size(size):
    with pytest.raises(ValueError, match="power of two >= 16"):
        models.Generator(size=size)
    with pytest.raises(ValueError, match="power of two >= 16"):
        models.Critic(size=size)


def test_critic_batch_must_fit_groups():
    D = models.Critic(size=16, width=4)
    with pytest.raises(ValueError, match="N=6.*G=4"):
        D(torch.randn(6, 1, 16, 16))


def test_eager_minibatch_stddev_matches_reference():
    x = torch.randn(12, 6, 5, 3, dtype=torch.float64)
    for G, F in [(4, 1), (3, 2), (None, 3), (12, 1)]:
        got = models.eager_minibatch_stddev(x, G, F)
        ref = ref_minibatch_std(x, 12 if G is None else G, F, 1e-8)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pixel_norm", [False, True])
def test_eager_twin_same_state_dict_same_outputs(pixel_norm):
    """The plain-torch twin has the same parameter names/shapes and, with the same weights,
    computes the same function (float64, reference backend: exact up to rounding), including
    the critic's input gradient that WGAN-GP differentiates."""
    torch.manual_seed(0)
    G = models.Generator(nz=8, size=32, width=3, activation="lrelu", pixel_norm=pixel_norm).double()
    D = models.Critic(size=32, width=3).double()
    for fast, kind in ((G, models.Generator), (D, models.Critic)):
        twin = models.eager_twin(fast)
        assert isinstance(twin, kind) and twin.eager
        assert {k: v.shape for k, v in twin.state_dict().items()} == \
               {k: v.shape for k, v in fast.state_dict().items()}
        assert not any(isinstance(m, (L.ConvTranspose2d, L.MinibatchStdDev)) for m in twin.modules())
    # Also constructible directly, and a state_dict loads across (strict).
    G2 = models.Generator(nz=8, size=32, width=3, activation="lrelu", pixel_norm=pixel_norm,
                          eager=True).double()
    G2.load_state_dict(G.state_dict())
    D2 = models.Critic(size=32, width=3, eager=True).double()
    D2.load_state_dict(D.state_dict())
    G.load_state_dict(G2.state_dict())

    z = torch.randn(8, 8, dtype=torch.float64)
    with backends.use("reference"):
        x = G(z)
        torch.testing.assert_close(G2(z), x, rtol=1e-12, atol=1e-12)
        xr = x.detach().requires_grad_(True)
        xe = x.detach().requires_grad_(True)
        s, s2 = D(xr), D2(xe)
        torch.testing.assert_close(s2, s, rtol=1e-12, atol=1e-12)
        (g,) = torch.autograd.grad(s.sum(), xr, create_graph=True)
        (g2,) = torch.autograd.grad(s2.sum(), xe, create_graph=True)
        torch.testing.assert_close(g2, g, rtol=1e-10, atol=1e-12)
        # Second order: the gradient of the penalty w.r.t. the critic weights agrees too.
        pen = g.flatten(1).norm(dim=1).sub(1).square().mean()
        pen2 = g2.flatten(1).norm(dim=1).sub(1).square().mean()
        w = torch.autograd.grad(pen, [D.layers[1].weight, D.final.weight])
        w2 = torch.autograd.grad(pen2, [D2.layers[1].weight, D2.final.weight])
        for a, b in zip(w2, w):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_eager_twin_rejects_other_modules():
    with pytest.raises(TypeError, match="Generator or Critic"):
        models.eager_twin(torch.nn.Linear(2, 2))


def test_generator_rejects_bad_activation():
    with pytest.raises(ValueError, match="'relu' or 'lrelu'"):
        models.Generator(activation="tanh")


def test_auto_backend_models_match_eager_twin_float32():
    """Integration: with whatever backends auto picks here (C++ kernels when built), the
    fastgan models agree with their plain-torch twins in float32, forward and through the
    critic's input gradient (what the gradient penalty uses)."""
    torch.manual_seed(1)
    G, D = models.Generator(nz=16, size=32, width=8), models.Critic(size=32, width=8)
    G2, D2 = models.eager_twin(G), models.eager_twin(D)
    z = torch.randn(12, 16)
    x = G(z)
    torch.testing.assert_close(x, G2(z), rtol=1e-4, atol=1e-5)
    xr = x.detach().requires_grad_(True)
    xe = x.detach().requires_grad_(True)
    s, s2 = D(xr), D2(xe)
    torch.testing.assert_close(s, s2, rtol=1e-4, atol=1e-5)
    (g,) = torch.autograd.grad(s.sum(), xr)
    (g2,) = torch.autograd.grad(s2.sum(), xe)
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-6)
