"""gru_lib.cell against torch.nn.GRUCell: outputs and every gradient, and the reset-before variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gru_lib.cell import GRUCell, gru_cell, gru_cell_gates, gru_gates_from_projection

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
D, H, B = 5, 7, 4


def _pair(bias: bool, dtype: torch.dtype) -> tuple[GRUCell, nn.GRUCell]:
    torch.manual_seed(0)
    ref = nn.GRUCell(D, H, bias=bias, dtype=dtype)
    ours = GRUCell(D, H, bias=bias, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _grads(module: nn.Module, x: torch.Tensor, hx: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    x, hx = x.clone().requires_grad_(), hx.clone().requires_grad_()
    out = module(x, hx)
    (out * weight).sum().backward()
    return [out.detach(), x.grad, hx.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_nn_grucell_outputs_and_gradients(dtype: torch.dtype, batched: bool, bias: bool) -> None:
    ours, ref = _pair(bias, dtype)
    assert list(ours.state_dict()) == list(ref.state_dict())
    shape = (B,) if batched else ()
    x = torch.randn(*shape, D, dtype=dtype)
    hx = torch.randn(*shape, H, dtype=dtype)
    weight = torch.randn(*shape, H, dtype=dtype)
    got, want = _grads(ours, x, hx, weight), _grads(ref, x, hx, weight)
    assert len(got) == (7 if bias else 5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def test_same_seed_same_initialisation() -> None:
    torch.manual_seed(3)
    ref = nn.GRUCell(D, H)
    torch.manual_seed(3)
    ours = GRUCell(D, H)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    bound = H**-0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())


@pytest.mark.parametrize("batched", [True, False])
def test_hx_omitted_means_zeros(batched: bool) -> None:
    ours, _ = _pair(True, torch.float64)
    x = torch.randn(*((B,) if batched else ()), D, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ours(x, torch.zeros(*x.shape[:-1], H, dtype=torch.float64)))


def test_wrong_sizes_raise() -> None:
    cell = GRUCell(D, H)
    with pytest.raises(RuntimeError, match=f"got {D + 1}, expected {D}"):
        cell(torch.randn(B, D + 1))
    with pytest.raises(RuntimeError, match=r"expected hx of shape \(4, 7\), got \(4, 6\)"):
        cell(torch.randn(B, D), torch.randn(B, H - 1))
    with pytest.raises(RuntimeError, match=r"expected hx of shape \(4, 7\), got \(3, 7\)"):
        cell(torch.randn(B, D), torch.randn(B - 1, H))
    with pytest.raises(ValueError, match="1D or 2D, got 3D"):
        cell(torch.randn(2, B, D))


def test_projection_entry_point_is_the_same_step() -> None:
    torch.manual_seed(1)
    cell = GRUCell(D, H, dtype=torch.float64)
    x, h = torch.randn(B, D, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    gi = x @ cell.weight_ih.T + cell.bias_ih
    direct = gru_cell_gates(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    split = gru_gates_from_projection(gi, h, cell.weight_hh, cell.bias_hh)
    for a, b in zip(direct, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _cho_2014(x, h, w_ih, w_hh, b_ih, b_hh):
    """Cho et al. (2014), written out gate by gate: the reset gate multiplies h before the recurrent matmul."""
    H_ = h.shape[-1]
    W_ir, W_iz, W_in = w_ih[:H_], w_ih[H_ : 2 * H_], w_ih[2 * H_ :]
    W_hr, W_hz, W_hn = w_hh[:H_], w_hh[H_ : 2 * H_], w_hh[2 * H_ :]
    b_r = b_ih[:H_] + b_hh[:H_]
    b_z = b_ih[H_ : 2 * H_] + b_hh[H_ : 2 * H_]
    b_n = b_ih[2 * H_ :] + b_hh[2 * H_ :]
    r = torch.sigmoid(x @ W_ir.T + h @ W_hr.T + b_r)
    z = torch.sigmoid(x @ W_iz.T + h @ W_hz.T + b_z)
    n = torch.tanh(x @ W_in.T + (r * h) @ W_hn.T + b_n)
    return z * h + (1 - z) * n


def test_reset_before_is_cho_2014_and_differs_from_reset_after() -> None:
    torch.manual_seed(2)
    cell = GRUCell(D, H, dtype=torch.float64)
    before = GRUCell(D, H, dtype=torch.float64, reset_after=False)
    before.load_state_dict(cell.state_dict())
    x, h = torch.randn(B, D, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(before(x, h), _cho_2014(x, h, *params), rtol=1e-12, atol=1e-12)
    gap = (before(x, h) - cell(x, h)).abs().max().item()
    assert gap > 1e-2, gap
    # With W_hn = 0 and b_hn = 0 the reset gate only scales a zero term, so the two forms agree.
    with torch.no_grad():
        cell.weight_hh[2 * H :] = 0
        cell.bias_hh[2 * H :] = 0
    before.load_state_dict(cell.state_dict())
    torch.testing.assert_close(before(x, h), cell(x, h), rtol=1e-12, atol=1e-12)
    assert torch.equal(gru_cell(x, h, *params), cell(x, h))
