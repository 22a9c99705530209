"""Chapter 8: mixed precision. One flag, ``--precision fp32|bf16|fp16``, valid on the devices that support it.

Under autocast the matrix products (``F.linear``, ``matmul``: the GRU's input and recurrent projections and the
classifier head) run in a 16-bit type while the parameters, the optimizer state and precision-sensitive ops
(softmax, cross-entropy, reductions) stay in float32. The two 16-bit types differ:

* **bf16** (bfloat16) keeps float32's 8 exponent bits and has 7 mantissa bits (relative precision 2^-8): the
  same range as float32, so gradients neither underflow nor overflow, and no loss scaling is needed. Supported
  by autocast on CPU, and on CUDA GPUs of compute capability 8.0 (Ampere) and newer.
* **fp16** (half) has 5 exponent bits and 10 mantissa bits: more precision, but values below about 6e-8
  flush to zero, so small gradients vanish. A :class:`torch.amp.GradScaler` multiplies the loss by a large
  factor S before backward (gradients are S times larger, out of the underflow zone), divides the gradients
  by S before the optimizer step, skips the step when an inf/NaN appears and then lowers S. CUDA only here:
  CPUs have no fast fp16 arithmetic.

Usage in a training step (:func:`gru_lib.train.optimization_step` is the full one)::

    precision = resolve_precision(args.precision, device)
    scaler = precision.grad_scaler()            # a disabled pass-through unless fp16
    with precision.autocast():
        loss = criterion(model(x), y)
    scaler.scale(loss).backward()               # loss x S
    scaler.unscale_(optimizer)                  # gradients / S, so that clipping sees the true ones
    clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)                      # skipped when a gradient is inf/NaN
    scaler.update()                             # lower S after a skip, raise it after a run of good steps
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from gru_lib.errors import GruLibError

__all__ = ["PRECISIONS", "Precision", "resolve_precision"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A validated precision for one device type: build it with :func:`resolve_precision`."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of autocast regions (float32 for ``fp32``: autocast disabled)."""
        return _DTYPES[self.name]

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    @property
    def needs_scaler(self) -> bool:
        """True for fp16: its 5 exponent bits need loss scaling to keep small gradients from flushing to 0."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The context for forward and loss: autocast to :attr:`dtype`, or nothing for fp32.
        Run backward and the optimizer step outside it."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A :class:`torch.amp.GradScaler`, enabled for fp16 only (disabled, every call is a pass-through).
        Save its ``state_dict()`` in checkpoints so that a resumed fp16 run continues with the same scale."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """Check that precision ``name`` (``fp32``, ``bf16`` or ``fp16``) is supported on ``device``.

    Raises :class:`GruLibError` naming the argument: fp16 on CPU (no loss-scaled fp16 autocast path worth
    using there: use bf16), bf16 on a GPU without bfloat16 support (use fp16), unknown names or devices."""
    if name not in _DTYPES:
        raise GruLibError(f"--precision {name!r} is not one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        if name != "fp32":
            raise GruLibError(f"--precision {name} is supported on cpu and cuda only, not on {device_type}")
        return Precision(name, device_type)
    if name == "fp16" and device_type == "cpu":
        raise GruLibError("--precision fp16 needs a CUDA device (on CPU use --precision bf16)")
    if name == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GruLibError("--precision bf16: this GPU does not support bfloat16 (use --precision fp16)")
    return Precision(name, device_type)
