"""tinyllm: the whole life of a large language model, from first principles, on NumPy (or CuPy)."""

import os

# OpenBLAS's worker threads spin after each matmul, waiting for the next one: by default for ~2^28 cycles (a
# tenth of a second). While they spin they hold the cores that tinyllm's own threads need for the elementwise
# work between matmuls (backend.parallel_rows), and the threads gained nothing. 2^16 cycles (~25 µs) still
# covers the back-to-back small products of a batched matmul (attention), then lets the core go: a training
# step of the 6×384 benchmark model got ~15% faster. Read by OpenBLAS when NumPy loads it, so this only takes
# effect when tinyllm is imported before NumPy (the ``tinyllm`` command always is); set it yourself to choose.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from .backend import set_device, set_dtype, default_dtype, to_numpy, manual_seed
from .autograd import Tensor, tensor, no_grad

__version__ = "0.1.0"
