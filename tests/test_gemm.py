"""gru_lib.gemm.linear computes F.linear (values and gradients) through oneDNN, and is F.linear elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from gru_lib import gemm

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def _case(rows: int, seed: int = 0, bias: bool = True, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 3, 24, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(40, 24, generator=gen) / 5).to(dtype).requires_grad_()
    b = torch.randn(40, generator=gen).to(dtype).requires_grad_() if bias else None
    return x, w, b


def _graph_names(y: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind y."""
    names, todo = set(), [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            todo += [next_node for next_node, _ in node.next_functions]
    return names


def _value_and_grads(fn, x, w, b):  # noqa: ANN001, ANN202
    y = fn(x, w, b)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(y.dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    return (y, *torch.autograd.grad(y, inputs, dy))


@needs_onednn
@pytest.mark.parametrize("rows", [1, 5, 700])  # 700 * 3 rows: the chunked weight gradient
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear_float32(rows: int, bias: bool) -> None:
    x, w, b = _case(rows, bias=bias)
    assert gemm.uses_onednn(x, w)
    ours = _value_and_grads(gemm.linear, x, w, b)
    ref = _value_and_grads(F.linear, x, w, b)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5 * max(1.0, float(r.detach().abs().max())))  # sums of 2,100 rows


@needs_onednn
def test_non_contiguous_input() -> None:
    x, w, b = _case(50)
    xt = x.transpose(0, 1)  # (3, 50, 24), not contiguous
    torch.testing.assert_close(gemm.linear(xt, w, b), F.linear(xt, w, b), rtol=1e-5, atol=1e-5)


def test_falls_back_to_f_linear_where_onednn_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w, b = _case(4, dtype=torch.float64)
    assert not gemm.uses_onednn(x, w)
    y = gemm.linear(x, w, b)
    assert not any("OneDnn" in name for name in _graph_names(y))
    torch.testing.assert_close(y, F.linear(x, w, b))
    x32, w32, _ = _case(4)
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not gemm.uses_onednn(x32, w32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not gemm.uses_onednn(x32, w32)
        assert gemm.linear(x32, w32).dtype == torch.bfloat16  # autocast's F.linear, as without gru_lib


@needs_onednn
def test_onednn_path_is_the_one_taken() -> None:
    x, w, b = _case(4)
    assert "_OneDnnLinearBackward" in _graph_names(gemm.linear(x, w, b))
