"""tinyllm: the whole life of a large language model, from first principles, on NumPy (or CuPy)."""

import os

# OpenBLAS's worker threads spin for a while after each matmul, waiting for the next one. While they spin they
# hold the cores that tinyllm's own threads need for the elementwise work between matmuls (backend.parallel_rows),
# and a training step got ~15% slower. Asking them to sleep at once costs a little at batch-1 generation (tiny
# matmuls back to back) and wins that much back in training. Read by OpenBLAS when NumPy loads it, so this only
# takes effect when tinyllm is imported before NumPy (the ``tinyllm`` command always is); set the variable
# yourself to choose otherwise.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .backend import set_device, set_dtype, default_dtype, to_numpy, manual_seed
from .autograd import Tensor, tensor, no_grad

__version__ = "0.1.0"
