"""Chapter 2: a long-range task, the adding problem (Hochreiter & Schmidhuber, 1997), and a small trainer.

Each sequence has T steps of two channels: a value drawn from U(0, 1) and a marker that is 1 at exactly two
steps, one in each half of the sequence, and 0 elsewhere. The target is the sum of the two marked values. A model
that ignores the input and predicts the mean, 1.0, scores the variance of a sum of two U(0, 1) draws:
MSE = 2/12 = 1/6 ~ 0.167 (:data:`ADDING_BASELINE_MSE`). Beating it requires carrying a value across up to T steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["ADDING_BASELINE_MSE", "adding_problem", "SequenceRegressor", "TrainingLog", "train_adding"]

ADDING_BASELINE_MSE: float = 1.0 / 6.0


def adding_problem(
    seq_len: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """One batch of the adding problem: ``inputs`` (T, B, 2) (channel 0 the values, channel 1 the two marks)
    and ``targets`` (B,), the sum of the two marked values. Draws from ``generator`` (on the CPU, so a seed gives
    the same batch on every device) and moves the result to ``device``."""
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"adding_problem: need seq_len >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
    values = torch.rand(seq_len, batch_size, generator=generator, dtype=torch.float64)
    half = seq_len // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, seq_len, (batch_size,), generator=generator)
    marks = torch.zeros(seq_len, batch_size, dtype=torch.float64)
    columns = torch.arange(batch_size)
    marks[first, columns] = 1.0
    marks[second, columns] = 1.0
    targets = values[first, columns] + values[second, columns]
    inputs = torch.stack([values, marks], dim=-1)
    return inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)


class SequenceRegressor(nn.Module):
    """A recurrent module (``nn.GRU``, ``nn.RNN``, ``gru_lib.GRU``: sequence-first, returning
    ``(output, h_n)``) followed by a linear read-out of its last output: (T, B, D) -> (B,)."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, 1, device=rnn.weight_hh_l0.device, dtype=rnn.weight_hh_l0.dtype)

    def forward(self, inputs: Tensor) -> Tensor:
        output, _ = self.rnn(inputs)
        return self.head(output[-1]).squeeze(-1)


@dataclass
class TrainingLog:
    """Per step of :func:`train_adding`: the training loss (MSE of that step's fresh batch, before the update),
    the gradient norm before clipping, and the norm of the parameter update actually applied."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    update_norms: list[float] = field(default_factory=list)


def train_adding(
    model: nn.Module,
    *,
    seq_len: int,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str = "adam",
    max_grad_norm: float | None = None,
    seed: int = 0,
) -> TrainingLog:
    """Train ``model`` ((T, B, 2) -> (B,)) on fresh adding-problem batches with MSE; return the learning curve.

    ``optimizer`` is ``"adam"`` or ``"sgd"``; ``max_grad_norm`` clips the gradient's global norm with
    :func:`torch.nn.utils.clip_grad_norm_` before each update. Batches come from a generator seeded with
    ``seed``, so a seeded model gives the same curve on every run (on the same hardware and thread count).
    A non-finite loss stops training early: the log then ends with it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"train_adding: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    first = params[0]
    generator = torch.Generator().manual_seed(seed)
    log = TrainingLog()
    model.train()
    for _ in range(steps):
        inputs, targets = adding_problem(
            seq_len, batch_size, generator=generator, dtype=first.dtype, device=first.device
        )
        loss = nn.functional.mse_loss(model(inputs), targets)
        log.losses.append(loss.item())
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = [p.detach().clone() for p in params]
        if max_grad_norm is None:
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        else:
            grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        with torch.no_grad():
            update = torch.stack([torch.linalg.vector_norm(p - b) for p, b in zip(params, before)])
        log.grad_norms.append(grad_norm.item())
        log.update_norms.append(torch.linalg.vector_norm(update).item())
    return log
