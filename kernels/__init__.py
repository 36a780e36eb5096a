"""Triton kernels, installed as fastgan.kernels. Import a submodule only when triton is
importable (fastgan.ops checks that before it does)."""
