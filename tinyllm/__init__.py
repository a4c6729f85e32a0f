"""tinyllm: the whole life of a large language model, from first principles, on NumPy (or CuPy)."""

from .backend import set_device, set_dtype, default_dtype, to_numpy, manual_seed
from .autograd import Tensor, tensor, no_grad

__version__ = "0.1.0"
