"""Data parallelism over processes: one training run on N processes, on one machine or many, with
MPI.

Threads (``tinyllm.parallel``) split a batch over the cores of one machine. Beyond one machine the
workers are separate *processes*, started together by ``mpiexec`` (MPI, the Message Passing
Interface, is how clusters run one job on many machines)::

    mpiexec -n 4 tinyllm pretrain ...              4 processes ("ranks" 0-3) on this machine
    mpiexec -n 8 -f hosts tinyllm pretrain ...     8 processes over the machines listed in hosts

Every process runs the same program: it builds the same model (then takes rank 0's weights,
``broadcast_parameters``), draws the same global batch from the same seeded generator, keeps its own
rows of it (``shard``), runs the forward and backward pass on them, and adds its gradients to
everyone else's (``all_reduce_gradients``). All of them then take the same AdamW step, so their
weights stay identical: the N-process run computes what one process computes on the whole batch.
Rank 0 alone prints, logs and saves.

How the gradients are added — an all-reduce, done as a reduce-scatter and an all-gather:

    the gradients laid end to end in a few large buckets    (a message a bucket, not a parameter)
    each bucket cut into N equal chunks                      rank r's bucket:  [ c0 | c1 | c2 | c3 ]
    reduce-scatter: all-to-all, rank k gets every rank's chunk k and adds the N copies in rank order
    all-gather:     every rank sends its summed chunk to all the others

Each process sends and receives 2 (N − 1)/N × the bucket's bytes, the cost of a ring all-reduce,
whatever N is. MPI's own ``Allreduce`` adds in whatever order its algorithm picks; adding in rank
order here makes a run repeat bit for bit, and with one thread per process gives exactly the sum
that N threads give. ZeRO-1 (``tinyllm.zero``) stops after the reduce-scatter: rank k updates chunk
k only.

Without ``mpiexec`` (a plain ``python``) there is one process and every function here is a no-op;
mpi4py is imported only when a launcher started this process as one of several (or ``TINYLLM_MPI=1``
asks for MPI).

On GPUs each process takes the GPU of its local rank. Buckets go to MPI as device arrays when the
MPI is CUDA-aware (``TINYLLM_GPU_COMM=mpi``), through NCCL (CuPy's ``cupy.cuda.nccl``, the default
when present), or else through host memory (``backend.to_numpy`` / ``backend.asarray``, the path the
CPU and the strict device take). If any process raises, the whole job ends (``MPI_Abort``) with that
process's message: a process waiting for a partner that will never come would otherwise wait
forever.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback

import numpy as np

from . import backend

BUCKET_BYTES = 32 * 2**20     # gradient bytes per message: enough that latency does not matter
ABORT_GRACE_S = 1.5           # ranks > 0 wait this long before reporting an error, so that one
                              # every rank hits (a bad flag) is printed once: by rank 0, whose abort
                              # stops them all
OUTPUT_DRAIN_S = 0.5          # then every rank waits this long before MPI_Abort: mpiexec forwards a
                              # process's output through a pipe, and the abort kills the job with
                              # whatever is still in it lost
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK",
                         "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


class DistributedError(RuntimeError):
    """MPI was asked for and cannot be used, or the processes of a job disagree; the message says
    why."""


@dataclasses.dataclass
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` of ``local_size`` on
    its machine), the MPI communicator and how arrays travel (None in a world of one)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: object = None
    transport: object = None


_world = None


def launched_size() -> int:
    """The number of processes a launcher (mpiexec, srun with PMI) says this job has; 1 without
    one."""
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def local_rank_from_launcher() -> int:
    """This process's rank among those on its machine, as the launcher's environment says (0 without
    one); read before MPI starts, to pick a GPU (``backend``)."""
    for name in _LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def world() -> World:
    """The job this process belongs to, connected on first use: MPI when several processes were
    launched (or TINYLLM_MPI=1), else a world of one."""
    global _world
    if _world is None:
        wanted = os.environ.get("TINYLLM_MPI", "")
        _world = _connect() if wanted == "1" or (wanted != "0" and launched_size() > 1) else World()
    return _world


def active() -> bool:
    """True when this process is one of several (connected already; never starts MPI)."""
    return _world is not None and _world.size > 1


def is_main() -> bool:
    """True on rank 0, the process that prints, logs and saves (and in a world of one)."""
    return world().rank == 0


def main_only(fn):
    """``fn`` on rank 0; elsewhere a function that does nothing (for loggers)."""
    return fn if fn is not None and is_main() else (lambda *args, **kwargs: None)


def _connect() -> World:
    try:
        from mpi4py import MPI
    except ImportError:
        why = (f"this process was started as one of {launched_size()} (by mpiexec or similar)"
               if launched_size() > 1 else "TINYLLM_MPI=1 asks for MPI")
        raise DistributedError(f"{why}, but mpi4py is not installed: pip install 'tinyllm[mpi]' "
                               "(mpi4py and the mpich wheel, which brings mpiexec)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return World()
    here = comm.Split_type(MPI.COMM_TYPE_SHARED)              # the processes on this machine
    new = World(comm.Get_rank(), comm.Get_size(), here.Get_rank(), here.Get_size(), comm)
    new.transport = _choose_transport(comm)
    _share_cores(new.local_size)
    sys.excepthook = _abort_on_uncaught
    return new


def _share_cores(processes_here: int) -> None:
    """Give each process on this machine its share of the cores for its threads (unless set by
    hand)."""
    from . import parallel
    parallel.set_num_threads(parallel.default_threads(processes_here))


def _abort_on_uncaught(kind, error, trace) -> None:
    abort("".join(traceback.format_exception(kind, error, trace)).rstrip(), 1)


def abort(message: str, code: int = 1) -> None:
    """End the whole job: print ``message`` once (see ABORT_GRACE_S), then ``MPI_Abort``, on which
    mpiexec stops every process at once — rank 0 too, even in the middle of writing a checkpoint
    (which is why a checkpoint's files are renamed together: ``files.written_together``)."""
    w = world()
    if w.rank > 0:
        time.sleep(ABORT_GRACE_S)
        message = f"[process {w.rank} of {w.size}] {message}"
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    if w.comm is not None:
        time.sleep(OUTPUT_DRAIN_S)
        w.comm.Abort(code)
    raise SystemExit(code)


# -------------------------------------------------------------------------------- splitting work

def shard(rows: int) -> slice:
    """This process's contiguous share of ``rows`` rows: rank r of N gets [rows·r/N,
    rows·(r+1)/N)."""
    w = world()
    return slice(rows * w.rank // w.size, rows * (w.rank + 1) // w.size)


def check_divides(batch_size: int, what: str = "--batch-size") -> None:
    """ValueError unless ``batch_size`` (a global batch) splits into equal shares over the
    processes."""
    size = world().size
    if batch_size % size:
        lower, upper = batch_size - batch_size % size, batch_size + size - batch_size % size
        choices = " or ".join(str(n) for n in (lower, upper) if n > 0)
        raise ValueError(f"{what} {batch_size} does not divide by the {size} processes: each takes "
                         f"an equal share of the global batch; use a multiple of {size} such as "
                         f"{choices}")


# -------------------------------------------------------------------------------- small collectives

def sum_over_ranks(values) -> np.ndarray:
    """The element-wise sum over the processes of a short float64 vector, added in rank order (the
    same bits on every process); ``values`` itself in a world of one."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    w = world()
    if w.size == 1:
        return values
    rows = np.empty((w.size, values.size))
    w.comm.Allgather(values, rows)
    total = rows[0].copy()
    for row in rows[1:]:
        total += row
    return total


def any_rank(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (Ctrl-C seen by one stops all at the same
    step)."""
    return bool(sum_over_ranks([float(flag)])[0] > 0)


def all_gather_objects(obj) -> list:
    """Every process's ``obj`` (small Python data: lists, NumPy arrays), in rank order, on every
    process."""
    w = world()
    return [obj] if w.size == 1 else w.comm.allgather(obj)


# -------------------------------------------------------------------------------- buckets

@dataclasses.dataclass
class Bucket:
    """Parameters laid end to end in one flat buffer of ``length`` numbers (padded with zeros to a
    multiple of the world size, so that it cuts into equal chunks of ``chunk``)."""
    params: list
    starts: list
    length: int
    chunk: int
    dtype: object

    def flatten(self, arrays):
        """One flat buffer holding ``arrays`` (one per parameter, in its shape; None reads as
        zeros)."""
        flat = backend.xp.zeros(self.length, dtype=self.dtype)
        for start, p, array in zip(self.starts, self.params, arrays):
            if array is not None:
                flat[start:start + p.data.size] = array.reshape(-1)
        return flat

    def views(self, flat) -> list:
        """Each parameter's piece of ``flat``, in the parameter's shape (views, not copies)."""
        return [flat[start:start + p.data.size].reshape(p.data.shape)
                for start, p in zip(self.starts, self.params)]


def make_buckets(params, parts: int, bucket_bytes: int = BUCKET_BYTES) -> list:
    """``params`` in order, grouped into buckets of at most ``bucket_bytes`` (a larger parameter
    gets one of its own) and of one dtype, each cut into ``parts`` equal chunks."""
    groups, current, size = [], [], 0
    for p in params:
        full = size + p.data.nbytes > bucket_bytes
        if current and (p.data.dtype != current[0].data.dtype or full):
            groups.append(current)
            current, size = [], 0
        current.append(p)
        size += p.data.nbytes
    if current:
        groups.append(current)
    buckets = []
    for group in groups:
        starts = np.cumsum([0] + [p.data.size for p in group]).tolist()
        chunk = -(-starts[-1] // parts)               # ceil: the last chunk holds the padding
        buckets.append(Bucket(group, starts[:-1], chunk * parts, chunk, group[0].data.dtype))
    return buckets


def reduce_scatter(flat, chunk: int):
    """This process's chunk (rank r: ``flat[r·chunk : (r+1)·chunk]``) of the sum over the processes
    of ``flat``: every rank's copy of it arrives by all-to-all, and they are added in rank order."""
    w = world()
    if w.size == 1:
        return flat
    received = w.transport.all_to_all(flat, chunk)    # piece r: rank r's copy of this rank's chunk
    total = received[:chunk].copy()
    for r in range(1, w.size):
        total += received[r * chunk:(r + 1) * chunk]
    return total


def all_gather(part):
    """Every process's ``part`` (equal sizes) end to end, in rank order, on every process."""
    w = world()
    return part if w.size == 1 else w.transport.all_gather(part)


def broadcast_parameters(params) -> None:
    """Give every process rank 0's values of ``params`` (the start of training: the weights must
    agree). Refuses processes whose models differ in shape, which would otherwise exchange
    mismatched messages."""
    params = list(params)
    w = world()
    if w.size == 1:
        return
    shapes = [tuple(p.data.shape) for p in params]
    if any(other != shapes for other in w.comm.allgather(shapes)):
        raise DistributedError("the processes built models of different shapes; every process must "
                               "run the same command on the same data")
    for bucket in make_buckets(params, w.size):
        flat = bucket.flatten([p.data for p in bucket.params])
        w.transport.broadcast(flat)
        for p, value in zip(bucket.params, bucket.views(flat)):
            p.data[...] = value


def all_reduce_gradients(params, *sums) -> list:
    """After each process's backward passes: every parameter's ``.grad`` becomes the sum over the
    processes, and the numbers ``sums`` (this process's part of the loss, counts, metrics) are
    summed too and returned. A parameter that no process has a gradient for keeps ``.grad = None``
    (AdamW skips it)."""
    params = list(params)
    w = world()
    if w.size == 1:
        return list(sums)
    totals = sum_over_ranks([*sums, *(p.grad is not None for p in params)])
    has_grad = dict(zip(map(id, params), totals[len(sums):] > 0))
    for bucket in make_buckets(params, w.size):
        flat = bucket.flatten([p.grad for p in bucket.params])
        summed = all_gather(reduce_scatter(flat, bucket.chunk))
        for p, grad in zip(bucket.params, bucket.views(summed)):
            p.grad = grad if has_grad[id(p)] else None
    return totals[:len(sums)].tolist()


# -------------------------------------------------------------------------------- transports

class HostTransport:
    """Arrays travel through host memory: ``backend.to_numpy`` before MPI, ``backend.asarray`` after
    (neither copies on the CPU). The path of the CPU, of the strict device, and of GPUs without
    NCCL."""

    def __init__(self, comm):
        self.comm = comm

    def all_to_all(self, send, chunk: int):
        host = backend.to_numpy(send)
        received = np.empty_like(host)
        self.comm.Alltoall(host, received)
        return backend.asarray(received)

    def all_gather(self, part):
        host = backend.to_numpy(part)
        gathered = np.empty(host.size * self.comm.Get_size(), dtype=host.dtype)
        self.comm.Allgather(host, gathered)
        return backend.asarray(gathered)

    def broadcast(self, flat) -> None:
        host = np.ascontiguousarray(backend.to_numpy(flat))
        self.comm.Bcast(host, root=0)
        flat[...] = backend.asarray(host)


class DeviceMPITransport(HostTransport):
    """A CUDA-aware MPI reads and writes GPU memory itself: CuPy arrays go to MPI as they are."""

    def all_to_all(self, send, chunk: int):
        received = backend.xp.empty_like(send)
        backend.xp.cuda.get_current_stream().synchronize()     # MPI reads outside CuPy's stream
        self.comm.Alltoall(send, received)
        return received

    def all_gather(self, part):
        gathered = backend.xp.empty(part.size * self.comm.Get_size(), dtype=part.dtype)
        backend.xp.cuda.get_current_stream().synchronize()
        self.comm.Allgather(part, gathered)
        return gathered

    def broadcast(self, flat) -> None:
        backend.xp.cuda.get_current_stream().synchronize()
        self.comm.Bcast(flat, root=0)


class NCCLTransport:
    """NVIDIA's collective library between the GPUs (``cupy.cuda.nccl``); MPI only hands out its
    id."""

    def __init__(self, comm, nccl):
        self.nccl, self.size = nccl, comm.Get_size()
        unique_id = comm.bcast(nccl.get_unique_id() if comm.Get_rank() == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, comm.Get_rank())

    def _kind(self, array):
        return self.nccl.NCCL_FLOAT64 if array.dtype == np.float64 else self.nccl.NCCL_FLOAT32

    def all_to_all(self, send, chunk: int):
        received = backend.xp.empty_like(send)
        stream, kind = backend.xp.cuda.get_current_stream().ptr, self._kind(send)
        step = chunk * send.itemsize                           # bytes between chunks
        self.nccl.groupStart()
        for r in range(self.size):
            self.comm.send(send.data.ptr + r * step, chunk, kind, r, stream)
            self.comm.recv(received.data.ptr + r * step, chunk, kind, r, stream)
        self.nccl.groupEnd()
        return received

    def all_gather(self, part):
        gathered = backend.xp.empty(part.size * self.size, dtype=part.dtype)
        self.comm.allGather(part.data.ptr, gathered.data.ptr, part.size, self._kind(part),
                            backend.xp.cuda.get_current_stream().ptr)
        return gathered

    def broadcast(self, flat) -> None:
        stream = backend.xp.cuda.get_current_stream().ptr
        self.comm.bcast(flat.data.ptr, flat.size, self._kind(flat), 0, stream)


def _choose_transport(comm):
    """How buckets travel: host memory for NumPy (and strict); on GPUs TINYLLM_GPU_COMM = mpi (a
    CUDA-aware MPI), nccl (the default when CuPy has it) or host."""
    if backend.device != "cuda":
        return HostTransport(comm)
    choice = os.environ.get("TINYLLM_GPU_COMM", "nccl")
    if choice not in ("nccl", "mpi", "host"):
        raise DistributedError(f"TINYLLM_GPU_COMM={choice!r}: expected nccl, mpi (a CUDA-aware "
                               "MPI) or host")
    if choice == "mpi":
        return DeviceMPITransport(comm)
    if choice == "nccl":
        try:
            from cupy.cuda import nccl
            return NCCLTransport(comm, nccl)
        except ImportError:
            pass                                             # CuPy without NCCL: through the host
    return HostTransport(comm)
