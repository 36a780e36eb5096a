"""The fastgan:: custom ops. Importing this package registers every op and its backends."""
from fastgan.ops import conv_transpose, grad_norm, minibatch_std  # noqa: F401
