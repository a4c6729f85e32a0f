"""ZeRO stage 1 (Rajbhandari et al. 2020): AdamW's moments sharded over the data-parallel processes.

Training in float32 keeps 16 bytes per parameter: the weight (4), its gradient (4) and AdamW's two
moments m and v (8). With N data-parallel processes (``tinyllm.distributed``) every process keeps
the same moments and does the same update, N times over. ZeRO-1 gives each process one N-th of the
parameters to update:

    reduce-scatter the gradients     rank k receives the sum over the processes of chunk k only
    update chunk k with AdamW        m and v exist for chunk k only: 8/N bytes per parameter, not 8
    all-gather the weights           every process receives every updated chunk

Reduce-scatter + all-gather is exactly what the plain all-reduce does, so the traffic is the same,
while the moments' memory and the update's work shrink N-fold. The chunks are those of the gradient
buckets (``distributed.make_buckets``), so one may cut a parameter in two; AdamW works element by
element (``optim.adamw_update``), and each piece is updated with its own parameter's settings. The
weights are those of plain AdamW, element for element; only the gradient norm for clipping is added
in another order (each rank's sum of squares, then the ranks in order), which can change its last
bit.

A checkpoint holds the whole moments in ``AdamW.state_dict``'s layout, gathered from every process
when saving, so a ZeRO run resumes with or without ZeRO, on any number of processes.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from . import distributed
from .optim import AdamW, Optimizer, adamw_update, optimizer_bytes


def make_adamw(params, zero: int = 0, **settings) -> AdamW:
    """AdamW over ``params`` (a list or param groups), its moments sharded over the processes when
    ``zero`` is 1 (``ShardedAdamW``), whole in every process when it is 0."""
    if zero not in (0, 1):
        raise ValueError(f"zero must be 0 (off) or 1 (AdamW's moments sharded over the processes), "
                         f"got {zero!r}")
    return ShardedAdamW(params, **settings) if zero else AdamW(params, **settings)


class ShardedAdamW(AdamW):
    """AdamW whose moments and update are split over the processes (see the module docstring).

    Use it like AdamW, with one more call between the backward passes and the update:
    ``reduce_gradients()`` (which replaces ``distributed.all_reduce_gradients``), then
    ``grad_norm()`` and ``step()``. ``state_dict()`` gathers from every process: call it on all of
    them."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 bucket_bytes: int = distributed.BUCKET_BYTES):
        settings = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        Optimizer.__init__(self, params, settings)
        w = distributed.world()
        self.rank = w.rank
        self.buckets = distributed.make_buckets(self.parameters(), w.size, bucket_bytes)
        self.exp_avg = [backend.xp.zeros(b.chunk, dtype=b.dtype) for b in self.buckets]  # m, v of
        self.exp_avg_sq = [backend.xp.zeros_like(m) for m in self.exp_avg]              # its chunks
        group_of = {id(p): g for g in self.groups for p in g["params"]}
        self.numbers = {id(p): i for i, p in enumerate(self.parameters())}   # place in the order
        self.pieces = [self._pieces(b, group_of) for b in self.buckets]
        self.grad_shards = [None] * len(self.buckets)
        self.has_grad = [True] * len(self.parameters())

    def _pieces(self, bucket, group_of) -> list:
        """(parameter number, its group, start, end) of each parameter's piece inside this rank's
        chunk of ``bucket`` (start and end counted within the chunk)."""
        first = self.rank * bucket.chunk
        pieces = []
        for start, p in zip(bucket.starts, bucket.params):
            lo, hi = max(start, first), min(start + p.data.size, first + bucket.chunk)
            if lo < hi:
                pieces.append((self.numbers[id(p)], group_of[id(p)], lo - first, hi - first))
        return pieces

    def reduce_gradients(self, *sums) -> list:
        """Sum the gradients over the processes, keeping only this rank's chunk of each bucket (the
        parameters' ``.grad`` are released), and sum the numbers ``sums``; returns those sums."""
        params = self.parameters()
        totals = distributed.sum_over_ranks([*sums, *(p.grad is not None for p in params)])
        self.has_grad = (totals[len(sums):] > 0).tolist()
        for k, bucket in enumerate(self.buckets):
            flat = bucket.flatten([p.grad for p in bucket.params])
            self.grad_shards[k] = distributed.reduce_scatter(flat, bucket.chunk)
        for p in params:
            p.grad = None
        return totals[:len(sums)].tolist()

    def grad_norm(self) -> float:
        """The global gradient norm: this rank's Σ g² (in float64), summed over the processes."""
        local = 0.0
        for shard in self.grad_shards:
            local = local + backend.xp.vdot(shard, shard).astype(np.float64)
        return math.sqrt(float(distributed.sum_over_ranks([float(local)])[0]))

    def step(self, grad_scale: float = 1.0) -> None:
        """AdamW on this rank's chunks, then every rank's updated chunks gathered into the
        weights."""
        grad_scale = float(grad_scale)
        self.step_count += 1
        for k, bucket in enumerate(self.buckets):
            first = self.rank * bucket.chunk
            weights = bucket.flatten([p.data for p in bucket.params])[first:first + bucket.chunk]
            grads = self.grad_shards[k]
            for number, group, lo, hi in self.pieces[k]:
                if self.has_grad[number]:
                    adamw_update(weights[lo:hi], grads[lo:hi], self.exp_avg[k][lo:hi],
                                 self.exp_avg_sq[k][lo:hi], self.lr, group, self.step_count,
                                 grad_scale)
            for p, value in zip(bucket.params, bucket.views(distributed.all_gather(weights))):
                p.data[...] = value
        self.grad_shards = [None] * len(self.buckets)

    def zero_grad(self) -> None:
        super().zero_grad()
        self.grad_shards = [None] * len(self.buckets)

    def state_dict(self) -> dict:
        """AdamW's layout (``exp_avg.{i}``, ``exp_avg_sq.{i}`` per parameter), gathered from all the
        processes."""
        whole = {}
        for name, shards in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            for bucket, shard in zip(self.buckets, shards):
                for p, value in zip(bucket.params, bucket.views(distributed.all_gather(shard))):
                    whole[f"{name}.{self.numbers[id(p)]}"] = value
        state = {"step": self.step_count, "lr": self.lr}
        for i in range(len(self.numbers)):
            for name in ("exp_avg", "exp_avg_sq"):
                state[f"{name}.{i}"] = whole[f"{name}.{i}"]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Take this rank's chunks of the whole moments in ``state`` (``AdamW.state_dict``'s)."""
        whole = AdamW(self.parameters())            # checks the count and the shapes, as AdamW does
        whole.load_state_dict(state)
        for moments, shards in ((whole.exp_avg, self.exp_avg), (whole.exp_avg_sq, self.exp_avg_sq)):
            for bucket, shard in zip(self.buckets, shards):
                first = self.rank * bucket.chunk
                arrays = [moments[self.numbers[id(p)]] for p in bucket.params]
                shard[...] = bucket.flatten(arrays)[first:first + bucket.chunk]
        self.step_count, self.lr = whole.step_count, whole.lr


def describe(optimizer) -> str | None:
    """A line on the moments' memory per process under ZeRO (None for plain AdamW)."""
    if not isinstance(optimizer, ShardedAdamW):
        return None
    whole = 2 * sum(p.data.nbytes for p in optimizer.parameters())
    size = distributed.world().size
    processes = f"{size} process{'es' if size > 1 else ''}"
    return (f"ZeRO-1: AdamW moments {optimizer_bytes(optimizer) / 2**20:.2f} MiB in each of "
            f"{processes} (unsharded: {whole / 2**20:.2f} MiB each)")
