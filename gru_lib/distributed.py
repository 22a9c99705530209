"""Chapter 8: data parallelism. One training script, run unchanged by ``python`` or by ``torchrun``.

Data-parallel training keeps a full copy of the model on every process ("rank") and gives each rank a
different shard of every global batch. What is communicated, and when:

* **Once, at start-up**: :func:`wrap_model` wraps the model in
  :class:`torch.nn.parallel.DistributedDataParallel` (DDP), which broadcasts rank 0's parameters and buffers,
  so every replica starts from identical weights.
* **Every step, during backward**: DDP groups the gradients into buckets (about 25 MiB each, in reverse
  order of registration) and all-reduces each bucket as soon as all its gradients are ready, overlapping
  communication with the rest of backward. It averages (sum / world_size), so after ``loss.backward()`` every
  rank holds the gradient of the mean loss over the *whole* global batch, and the identical optimizer step
  keeps the replicas identical. Per step, each rank sends and receives about ``2 (N-1)/N`` times the gradient
  bytes (ring all-reduce): the cost depends on the number of parameters, not on the batch or sequence length.
* **Once per evaluation (or logging interval)**: :meth:`DistContext.all_reduce_sum` sums metric counters
  (correct predictions, example counts, summed losses) across ranks, so every rank computes the same global
  accuracy; only rank 0 (:attr:`DistContext.is_main`) prints and writes checkpoints.

Uneven data: an all-reduce is a collective that every rank must enter, so if one rank ran one more backward
than the others it would wait forever (a deadlock). The sharded sampler
(``gru_lib.text.BucketBatchSampler(..., num_replicas, rank)``) gives every rank the same number of batches,
which prevents this by construction; :func:`join_context` (DDP's ``Join``) is the safety net for loaders that
cannot guarantee it: ranks that run out shadow the collectives of the others until all are done.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` (also across
nodes, with ``--nnodes``/``--rdzv_endpoint``); :func:`init_distributed` reads them. Without them it returns a
single-process context and every collective is the identity, so the same code runs under plain ``python``.
With ``--max-restarts N``, torchrun restarts every worker when one fails; :func:`resume_on_restart` makes the
restarted workers continue from the run's checkpoint instead of starting over.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gru_lib.errors import GruLibError

__all__ = [
    "DistContext",
    "init_distributed",
    "wrap_model",
    "unwrap_model",
    "join_context",
    "cleanup",
    "gradient_buckets",
    "resume_on_restart",
]

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: its ``rank`` among ``world_size`` processes, its ``local_rank``
    on this node, and the ``device`` its model and batches live on. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0: the one rank that logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over all ranks, in place, and return it (the identity when ``world_size == 1``).

        Every rank must call it the same number of times with tensors of the same shape and dtype. Works for
        CPU tensors under nccl too (they travel through ``self.device`` and come back)."""
        if self.world_size == 1:
            return tensor
        backend = dist.get_backend()
        if backend == "nccl" and tensor.device.type != "cuda":
            on_device = tensor.to(self.device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op for a single process)."""
        if self.world_size == 1:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise GruLibError(f"environment variable {name}={value!r} is not an integer") from None


def _resolve_device(device: str | None, local_rank: int, distributed: bool) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GruLibError(f"--device {device!r} is not a valid torch device") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise GruLibError(f"--device {device!r}: CUDA is not available on this machine")
        if resolved.index is None:
            # One GPU per process: the local rank picks it (torchrun starts nproc_per_node processes per node).
            resolved = torch.device("cuda", local_rank if distributed else torch.cuda.current_device())
        if resolved.index >= torch.cuda.device_count():
            raise GruLibError(
                f"--device {device!r}: local rank {local_rank} needs GPU {resolved.index}, "
                f"but this node has {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(resolved)
    return resolved


def init_distributed(
    backend: str | None = None, device: str | None = None, *, timeout_s: float = 600.0
) -> DistContext:
    """This process's :class:`DistContext`; joins the process group under torchrun.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, through ``env://``,
    ``MASTER_ADDR`` and ``MASTER_PORT``). ``device`` defaults to CUDA when available,
    else CPU; a CUDA device without an index becomes ``cuda:LOCAL_RANK``. ``backend``
    defaults to ``nccl`` on CUDA and ``gloo`` on CPU. Without torchrun's variables (or
    with ``WORLD_SIZE=1``) no process group is created."""
    present = [name in os.environ for name in _ENV_VARS]
    if not any(present):
        return DistContext(device=_resolve_device(device, 0, distributed=False))
    if not all(present):
        missing = ", ".join(n for n, p in zip(_ENV_VARS, present) if not p)
        raise GruLibError(f"incomplete distributed environment: {missing} not set "
                          "(launch with torchrun)")
    rank, world_size, local_rank = (_env_int(name) for name in _ENV_VARS)
    if not 0 <= rank < world_size:
        raise GruLibError(f"RANK={rank} is outside 0..WORLD_SIZE-1 "
                          f"(WORLD_SIZE={world_size})")
    resolved = _resolve_device(device, local_rank, distributed=world_size > 1)
    if world_size == 1:
        return DistContext(rank=0, world_size=1, local_rank=local_rank, device=resolved)
    if backend is None:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
    if backend == "nccl" and resolved.type != "cuda":
        raise GruLibError(f"backend nccl needs CUDA devices, not {resolved}")
    _check_restartable()
    if not dist.is_initialized():
        kwargs = {"device_id": resolved} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank,
                       device=resolved)


def _check_restartable() -> None:
    """Refuse ``torchrun --max-restarts`` with the store that the agent keeps between
    attempts (its default with a c10d rendezvous): the keys of one attempt stay in it,
    and a restarted worker can read the previous attempt's addresses and fail to
    connect (PyTorch issue 135712). With ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` rank 0
    opens a fresh store for every attempt."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared and _max_restarts() > 0:
        raise GruLibError("torchrun --max-restarts needs "
                          "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a restart can read "
                          "the previous attempt's addresses from the shared store)")


def _max_restarts() -> int:
    name = "TORCHELASTIC_MAX_RESTARTS"
    return _env_int(name) if name in os.environ else 0


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Move ``model`` to ``ctx.device``; wrap it in DDP when ``world_size > 1``.

    DDP broadcasts rank 0's weights now and, during every backward, all-reduces
    (averages) gradient buckets as they become ready. Save
    ``unwrap_model(model).state_dict()``: no ``module.`` prefix in checkpoints."""
    model = model.to(ctx.device)
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself when it is not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def join_context(model: nn.Module, ctx: DistContext) -> Iterator[None]:
    """Wrap a training epoch so ranks with fewer batches do not deadlock the others (DDP's ``Join``).

    A no-op for a single process or an unwrapped model. With equal batch counts per rank (the sharded
    sampler's guarantee) it changes nothing; with unequal counts, ranks that finish early answer the
    remaining gradient all-reduces with zeros. Collectives you call yourself inside the block (metric
    all-reduces) are *not* shadowed: do those after the block."""
    if ctx.world_size == 1 or not isinstance(model, DistributedDataParallel):
        yield
        return
    with model.join():
        yield


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def gradient_buckets(model: nn.Module, bucket_cap_mb: float = 25.0) -> list[int]:
    """Sizes in bytes of the gradient buckets DDP would all-reduce each step for ``model``.

    On the first step DDP sends all gradients as one bucket; it then rebuilds the buckets in the order the
    gradients became ready (about reverse registration order: the last layers finish backward first),
    closing a bucket once it holds ``bucket_cap_mb`` MiB, the first one already at 1 MiB so communication
    starts early. This mirrors that steady-state rule for parameters in reverse registration order; DDP
    reports what it actually did in ``_get_ddp_logging_data()["rebuilt_bucket_sizes"]``."""
    sizes: list[int] = []
    current = 0
    cap = 1024 * 1024  # DDP's first bucket (dist._DEFAULT_FIRST_BUCKET_BYTES)
    for param in reversed([p for p in model.parameters() if p.requires_grad]):
        current += param.numel() * param.element_size()
        if current >= cap:
            sizes.append(current)
            current = 0
            cap = int(bucket_cap_mb * 1024 * 1024)
    if current:
        sizes.append(current)
    return sizes


def resume_on_restart(checkpoint: str | Path) -> bool:
    """Whether a worker continues from ``checkpoint`` because torchrun may restart it.

    With ``--max-restarts N`` (N > 0) torchrun runs the same command again in every
    worker when one fails (a killed process, a lost node). The restarted workers must
    continue the run, so: True when restarts are allowed and the checkpoint exists.
    The file decides, which every node sees alike on a shared ``--out``; the restart
    count cannot: on a node whose workers did not fail, torchrun restarts them with
    ``TORCHELASTIC_RESTART_COUNT`` unchanged."""
    return _max_restarts() > 0 and Path(checkpoint).expanduser().is_file()
