"""fastgan::conv_transpose2d (placeholder: reference path only until the kernels land)."""
from fastgan.reference.conv_transpose import conv_transpose2d  # noqa: F401
