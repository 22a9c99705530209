"""Vanishing and exploding gradients, gradient clipping, and the adding problem (gru_lib.gradients, .tasks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gru_lib.bptt import gru_sequence_backward, gru_sequence_forward
from gru_lib.cell import GRUCell
from gru_lib.gradients import hidden_state_gradient_norms, make_gru_explosive_, per_step_factor
from gru_lib.tasks import ADDING_BASELINE_MSE, SequenceRegressor, adding_problem, train_adding

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class _Scale(nn.Module):
    """h' = a h: dL/dh_t = a^(T-t) dL/dh_T exactly."""

    hidden_size = 3

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.a * h + 0 * x.sum(-1, keepdim=True)


def _inputs(steps: int, batch: int, seed: int) -> torch.Tensor:
    return adding_problem(steps, batch, generator=torch.Generator().manual_seed(seed), dtype=F64)[0]


def test_gradient_norms_exact_on_a_linear_recurrence() -> None:
    norms = hidden_state_gradient_norms(_Scale(0.5), _inputs(6, 4, 0), h0=torch.ones(4, 3, dtype=F64))
    expected = torch.tensor([0.5**k for k in range(6, -1, -1)], dtype=F64) * math.sqrt(4)
    torch.testing.assert_close(norms, expected, rtol=1e-12, atol=0)
    assert per_step_factor(norms) == pytest.approx(0.5, rel=1e-12)


def test_gradient_norm_at_h0_agrees_with_hand_written_bptt() -> None:
    torch.manual_seed(0)
    cell = GRUCell(2, 8, dtype=F64)
    inputs = _inputs(30, 5, 1)
    norms = hidden_state_gradient_norms(cell, inputs)
    h0 = torch.zeros(5, 8, dtype=F64)
    params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    with torch.no_grad():
        gates = gru_sequence_forward(inputs, h0, *params)
        readout = torch.full((5, 8), 1 / math.sqrt(8), dtype=F64)
        grads = gru_sequence_backward(None, readout, inputs, h0, *params, gates)
    assert norms.shape == (31,)
    assert norms[-1].item() == pytest.approx(math.sqrt(5), rel=1e-12)
    assert norms[0].item() == pytest.approx(torch.linalg.vector_norm(grads.grad_h0).item(), rel=1e-10)


def test_gru_retains_orders_of_magnitude_more_gradient_than_tanh_rnn() -> None:
    """At T=100 and standard init, over 6 initialisations: the geometric mean of
    (GRU ||dL/dh_0||/||dL/dh_T||) / (RNN ratio) is ~10^2.3 here; assert > 10. Both still vanish (< 1e-12)."""
    log_gaps = []
    for seed in range(6):
        torch.manual_seed(seed)
        rnn, gru = nn.RNNCell(2, 32, dtype=F64), GRUCell(2, 32, dtype=F64)
        inputs = _inputs(100, 32, seed)
        rnn_norms = hidden_state_gradient_norms(rnn, inputs)
        gru_norms = hidden_state_gradient_norms(gru, inputs)
        rnn_ratio, gru_ratio = (rnn_norms[0] / rnn_norms[-1]).item(), (gru_norms[0] / gru_norms[-1]).item()
        assert rnn_ratio < 1e-12 and gru_ratio < 1e-12
        log_gaps.append(math.log10(gru_ratio) - math.log10(rnn_ratio))
    assert sum(log_gaps) / len(log_gaps) > 1.0, log_gaps


def test_explosive_gru_gradient_grows_with_length() -> None:
    ratios = {}
    for steps in (25, 50, 100):
        torch.manual_seed(0)
        cell = GRUCell(2, 32, dtype=F64)
        make_gru_explosive_(cell.weight_hh, cell.bias_hh)
        norms = hidden_state_gradient_norms(cell, _inputs(steps, 32, 0))
        ratios[steps] = (norms[0] / norms[-1]).item()
    assert ratios[100] > 1e6, ratios  # measured ~7e8
    assert ratios[25] < ratios[50] < ratios[100], ratios
    # the same cell, untouched: its gradient vanishes instead
    torch.manual_seed(0)
    plain = hidden_state_gradient_norms(GRUCell(2, 32, dtype=F64), _inputs(100, 32, 0))
    assert per_step_factor(plain) < 0.9


def test_make_gru_explosive_checks_shapes() -> None:
    with pytest.raises(ValueError, match="expected weight_hh"):
        make_gru_explosive_(torch.zeros(6, 3), torch.zeros(9))


def _explosive_regressor(seed: int) -> SequenceRegressor:
    torch.manual_seed(seed)
    rnn = nn.GRU(2, 32)
    make_gru_explosive_(rnn.weight_hh_l0, rnn.bias_hh_l0)
    return SequenceRegressor(rnn)


@pytest.mark.slow
def test_clipping_bounds_the_update_and_prevents_divergence() -> None:
    lr, steps = 0.1, 40
    free = train_adding(_explosive_regressor(0), seq_len=100, steps=steps, lr=lr, optimizer="sgd")
    clipped = train_adding(
        _explosive_regressor(0), seq_len=100, steps=steps, lr=lr, optimizer="sgd", max_grad_norm=1.0
    )
    assert free.grad_norms[0] > 1e6  # the exploding gradient, before any update
    assert max(free.update_norms) > 1e5
    assert max(free.losses) > 1e6  # diverges (or reaches inf, which stops training)
    assert len(clipped.losses) == steps and all(math.isfinite(x) for x in clipped.losses)
    assert max(clipped.update_norms) <= lr * 1.0 * (1 + 1e-5)
    assert max(clipped.grad_norms) > 1e6  # clipping changes the step, not the gradient
    assert max(clipped.losses) <= clipped.losses[0] * 1.5


def test_adding_problem_batches() -> None:
    inputs, targets = adding_problem(20, 64, generator=torch.Generator().manual_seed(3))
    assert inputs.shape == (20, 64, 2) and targets.shape == (64,) and inputs.dtype == torch.float32
    values, marks = inputs[..., 0], inputs[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(marks.unique().tolist()) == {0.0, 1.0}
    assert (marks.sum(0) == 2).all()
    assert (marks[:10].sum(0) == 1).all() and (marks[10:].sum(0) == 1).all()
    torch.testing.assert_close(targets, (values * marks).sum(0))
    again, _ = adding_problem(20, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(inputs, again)


def test_adding_baseline_mse() -> None:
    _, targets = adding_problem(10, 200_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    assert ((targets - 1.0) ** 2).mean().item() == pytest.approx(ADDING_BASELINE_MSE, abs=2e-3)


def test_adding_problem_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="seq_len >= 2"):
        adding_problem(1, 4)


def test_train_adding_is_reproducible_and_logs_every_step() -> None:
    def run() -> list[float]:
        torch.manual_seed(0)
        model = SequenceRegressor(nn.GRU(2, 8))
        log = train_adding(model, seq_len=10, steps=5, batch_size=8, lr=1e-2, seed=1)
        assert len(log.losses) == len(log.grad_norms) == len(log.update_norms) == 5
        return log.losses

    assert run() == run()
    with pytest.raises(ValueError, match="optimizer"):
        train_adding(SequenceRegressor(nn.RNN(2, 4)), seq_len=4, steps=1, optimizer="rmsprop")
