"""tinyllm: the whole life of a large language model, from first principles, on NumPy (or CuPy)."""

from . import cpu_tuning

cpu_tuning.apply()   # before NumPy is loaded: see tinyllm/cpu_tuning.py

from .backend import set_device, set_dtype, default_dtype, to_numpy, manual_seed
from .autograd import Tensor, tensor, no_grad

__version__ = "0.1.0"
