"""The hand-written backward of the GRU cell and BPTT over a sequence equal autograd (float64, 1e-10)."""

from __future__ import annotations

import pytest
import torch

from gru_lib.bptt import gru_cell_backward, gru_sequence_backward, gru_sequence_forward
from gru_lib.cell import GRUCell, gru_cell_gates

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _params(input_size: int, hidden: int, bias: bool, seed: int) -> list[torch.Tensor | None]:
    torch.manual_seed(seed)
    cell = GRUCell(input_size, hidden, bias=bias, dtype=torch.float64)
    with torch.no_grad():  # larger than the init, so every gate and tanh is away from its linear regime
        for p in cell.parameters():
            p.mul_(3.0)
    return [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]


@pytest.mark.parametrize("bias", [True, False])
def test_cell_backward_matches_autograd(bias: bool) -> None:
    params = _params(5, 7, bias, seed=1)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    gates = gru_cell_gates(x, h, *params)
    upstream = torch.randn(4, 7, dtype=torch.float64)
    leaves = [x, h] + [p for p in params if p is not None]
    auto = torch.autograd.grad(gates.h, leaves, upstream)

    with torch.no_grad():
        manual = gru_cell_backward(upstream, x, h, *params, gates)
    got = [manual.grad_x, manual.grad_h, manual.grad_weight_ih, manual.grad_weight_hh]
    if bias:
        got += [manual.grad_bias_ih, manual.grad_bias_hh]
    else:
        assert manual.grad_bias_ih is None and manual.grad_bias_hh is None
    assert len(got) == len(auto)
    for mine, ref in zip(got, auto):
        torch.testing.assert_close(mine, ref, **TOL)


def test_cell_backward_is_not_trivially_equal() -> None:
    """Guards the test above: dropping the reset gate's term (a plausible slip) is detected."""
    params = _params(3, 4, True, seed=2)
    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    gates = gru_cell_gates(x, h, *params)
    upstream = torch.randn(2, 4, dtype=torch.float64)
    (auto_h,) = torch.autograd.grad(gates.h, [h], upstream)
    with torch.no_grad():
        wrong = gates._replace(r=torch.ones_like(gates.r))
        manual = gru_cell_backward(upstream, x, h, *params, wrong)
    assert not torch.allclose(manual.grad_h, auto_h, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_outputs", [True, False])
def test_sequence_backward_matches_autograd(bias: bool, with_outputs: bool) -> None:
    steps, batch, d, hidden = 12, 3, 4, 6
    params = _params(d, hidden, bias, seed=3)
    leaves_params = [p for p in params if p is not None]
    inputs = torch.randn(steps, batch, d, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    gates = gru_sequence_forward(inputs, h0, *params)
    grad_out = torch.randn(steps, batch, hidden, dtype=torch.float64) if with_outputs else None
    grad_hn = torch.randn(batch, hidden, dtype=torch.float64)
    loss = (gates.h[-1] * grad_hn).sum()
    if grad_out is not None:
        loss = loss + (gates.h * grad_out).sum()
    auto = torch.autograd.grad(loss, [inputs, h0, *leaves_params])

    with torch.no_grad():
        manual = gru_sequence_backward(grad_out, grad_hn, inputs, h0, *params, gates)
    got = [manual.grad_input, manual.grad_h0, manual.grad_weight_ih, manual.grad_weight_hh]
    if bias:
        got += [manual.grad_bias_ih, manual.grad_bias_hh]
    for mine, ref in zip(got, auto, strict=True):
        torch.testing.assert_close(mine, ref, **TOL)


def test_sequence_forward_matches_nn_gru() -> None:
    torch.manual_seed(4)
    ref = torch.nn.GRU(3, 5, dtype=torch.float64)
    inputs = torch.randn(7, 2, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        out, h_n = ref(inputs, h0)
        gates = gru_sequence_forward(
            inputs, h0[0], ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0
        )
    torch.testing.assert_close(gates.h, out, **TOL)
    torch.testing.assert_close(gates.h[-1], h_n[0], **TOL)


def test_sequence_backward_on_final_state_only() -> None:
    """grad_output=None and grad_h_n=None mean zero upstream gradients: everything comes out zero."""
    params = _params(2, 3, True, seed=5)
    inputs = torch.randn(4, 2, 2, dtype=torch.float64)
    h0 = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        gates = gru_sequence_forward(inputs, h0, *params)
        grads = gru_sequence_backward(None, None, inputs, h0, *params, gates)
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_sequence_shapes_are_checked() -> None:
    params = _params(2, 3, True, seed=6)
    with pytest.raises(ValueError, match="expected input"):
        gru_sequence_forward(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(2, 3), *params)
    f64 = {"dtype": torch.float64}
    with torch.no_grad():
        gates = gru_sequence_forward(torch.zeros(4, 1, 2, **f64), torch.zeros(1, 3, **f64), *params)
        with pytest.raises(ValueError, match="gates cover 4 steps"):
            gru_sequence_backward(None, None, torch.zeros(5, 1, 2, **f64), torch.zeros(1, 3, **f64), *params, gates)
