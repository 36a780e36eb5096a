"""Plain-PyTorch reference implementations: the truth in tests, the baseline in
benchmarks, and the fallback backend when no kernel can run."""
