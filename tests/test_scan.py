"""gru_lib.scan and gru_lib.MinGRU: the parallel (blocked log-space) scan against the sequential reference.

Every test runs on both implementations of the blocked scan: the C++ kernel (csrc/mingru_scan.cpp, CPU float32
and float64) and the PyTorch one (GRU_LIB_NO_EXTENSION=1).

Tolerances: fp64 agrees to 1e-12; fp32 to rtol = atol = 2e-5 (the scan and the loop round differently, and the
state is an average of O(1) values, so the absolute error stays at a few ulps of 1 even at T = 16384)."""

from __future__ import annotations

import pytest
import torch

from gru_lib import MinGRU, native
from gru_lib.scan import (
    _backward,
    _forward,
    default_block_size,
    g,
    heinsen_scan,
    linear_scan_sequential,
    log_g,
    mingru_coefficients,
    mingru_scan,
    mingru_sequential,
    scan_kernel,
)

FP32 = {"rtol": 2e-5, "atol": 2e-5}
FP64 = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture(params=["cpp", "torch"])
def scan_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test on the C++ scan and on the PyTorch scan, and checks that the chosen one is the one used.
    Only the tests whose result goes through ``mingru_scan`` ask for it (``both_paths``)."""
    if request.param == "torch":
        monkeypatch.setenv("GRU_LIB_NO_EXTENSION", "1")
    else:
        monkeypatch.delenv("GRU_LIB_NO_EXTENSION", raising=False)
    used = "cpp" if scan_kernel(torch.zeros(1, 1, 2)) is not None else "torch"
    assert used == request.param, native.load_error("mingru_scan")
    return request.param


both_paths = pytest.mark.usefixtures("scan_path")


@pytest.fixture
def cpp_kernel() -> None:
    """The C++ scan must be built for the test (it compares the kernel with the PyTorch scan)."""
    if scan_kernel(torch.zeros(1, 1, 2)) is None:
        pytest.skip(f"the C++ scan is not built: {native.load_error('mingru_scan')}")


def _inputs(steps: int, batch: int = 2, hidden: int = 4, dtype: torch.dtype = torch.float32, scale: float = 2.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = (scale * torch.randn(steps, batch, 2 * hidden, generator=gen)).to(dtype)
    h0 = torch.randn(batch, hidden, generator=gen).to(dtype)
    return y, h0


def _equations(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """minGRU written out per step from Feng et al.'s equations, independent of gru_lib.scan."""
    hidden = h.shape[-1]
    out = []
    for t in range(x.shape[0]):
        pre = x[t] @ weight.T + bias
        z = torch.sigmoid(pre[..., :hidden])
        u = pre[..., hidden:]
        h_tilde = torch.where(u >= 0, u + 0.5, torch.sigmoid(u))
        h = (1 - z) * h + z * h_tilde
        out.append(h)
    return torch.stack(out)


def test_g_and_log_g() -> None:
    x = torch.tensor([-1e4, -30.0, -1.0, 0.0, 2.0, 1e4], dtype=torch.float64)
    expected = torch.tensor([0.0, torch.sigmoid(torch.tensor(-30.0)).item(), torch.sigmoid(torch.tensor(-1.0)).item(), 0.5, 2.5, 1e4 + 0.5], dtype=torch.float64)
    torch.testing.assert_close(g(x), expected)
    lg = log_g(x)
    assert torch.isfinite(lg).all()
    torch.testing.assert_close(lg[1:], expected[1:].log())
    assert lg[0].item() == pytest.approx(-1e4)


def test_coefficients_are_finite_and_exact() -> None:
    k = torch.tensor([-1e4, -3.0, 0.0, 3.0, 1e4], dtype=torch.float64)
    p = torch.tensor([-1e4, -1.0, 0.0, 1.0, 1e4], dtype=torch.float64)
    log_a, log_b = mingru_coefficients(k, p)
    assert torch.isfinite(log_a).all() and torch.isfinite(log_b).all()
    z = torch.sigmoid(k)
    torch.testing.assert_close(log_a[1:4], torch.log1p(-z[1:4]))
    torch.testing.assert_close(log_b[1:4], torch.log(z[1:4] * g(p[1:4])))


@both_paths
@pytest.mark.parametrize("steps", [1, 7, 64, 4096, 8192])
def test_parallel_matches_sequential(steps: int) -> None:
    y, h0 = _inputs(steps, dtype=torch.float64)
    torch.testing.assert_close(mingru_scan(y, h0), mingru_sequential(y, h0), **FP64)
    y32, h32 = y.float(), h0.float()
    torch.testing.assert_close(mingru_scan(y32, h32), mingru_sequential(y32, h32), **FP32)


@both_paths
@pytest.mark.parametrize("steps,block", [(1, 1), (5, 1), (10, 3), (64, 8), (100, 7), (37, 64)])
def test_any_block_size(steps: int, block: int) -> None:
    y, h0 = _inputs(steps, dtype=torch.float64)
    torch.testing.assert_close(mingru_scan(y, h0, block_size=block), mingru_sequential(y, h0), **FP64)


def test_heinsen_scan_matches_loop_for_positive_h0() -> None:
    y, h0 = _inputs(50, dtype=torch.float64)
    h0 = h0.abs() + 0.1
    k, p = y.chunk(2, dim=-1)
    log_a, log_b = mingru_coefficients(k, p)
    expected = linear_scan_sequential(log_a.exp(), log_b.exp(), h0)
    torch.testing.assert_close(heinsen_scan(log_a, log_b, h0.log()), expected, **FP64)
    torch.testing.assert_close(heinsen_scan(log_a, log_b), linear_scan_sequential(log_a.exp(), log_b.exp()), **FP64)


@both_paths
@pytest.mark.parametrize("steps", [1, 7, 64, 300])
def test_gradients_match_autograd_of_sequential(steps: int) -> None:
    y, h0 = _inputs(steps, dtype=torch.float64)
    weight = torch.randn(steps, *h0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (mingru_scan, mingru_sequential):
        yy, hh = y.clone().requires_grad_(), h0.clone().requires_grad_()
        (fn(yy, hh) * weight).sum().backward()
        grads.append((yy.grad, hh.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], **FP64)
    torch.testing.assert_close(grads[0][1], grads[1][1], **FP64)


@both_paths
def test_gradcheck() -> None:
    y, h0 = _inputs(7, batch=1, hidden=2, dtype=torch.float64)
    y.requires_grad_()
    h0.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mingru_scan(a, b, block_size=3), (y, h0))


@both_paths
def test_saturated_gates_long_sequence_stay_finite() -> None:
    steps = 8192
    gen = torch.Generator().manual_seed(3)
    signs = torch.randint(0, 2, (steps, 2, 8), generator=gen).float() * 2 - 1
    y = (1e4 * signs).requires_grad_()
    h0 = torch.randn(2, 4, generator=gen).requires_grad_()
    h = mingru_scan(y, h0)
    (h * torch.randn(h.shape, generator=gen)).sum().backward()
    assert torch.isfinite(h).all()
    assert torch.isfinite(y.grad).all() and torch.isfinite(h0.grad).all()
    with torch.no_grad():
        torch.testing.assert_close(h, mingru_sequential(y, h0), **FP32)
    # Mixed: some gates saturated, some ordinary, over a long sequence, through MinGRU.
    model = MinGRU(3, 5)
    x = torch.randn(4096, 2, 3, generator=gen) * torch.where(torch.rand(4096, 2, 1, generator=gen) < 0.2, 1e4, 1.0)
    x.requires_grad_()
    out, h_n = model(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(h_n).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(param.grad).all() for param in model.parameters())


@both_paths
def test_module_matches_equations_and_modes_agree() -> None:
    torch.manual_seed(0)
    model = MinGRU(3, 5, dtype=torch.float64)
    assert [name for name, _ in model.named_parameters()] == ["linear.weight", "linear.bias"]
    assert model.linear.weight.shape == (10, 3)
    x = torch.randn(20, 2, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, 5, dtype=torch.float64)
    expected = _equations(x, model.linear.weight, model.linear.bias, h0[0])
    out, h_n = model(x, h0)
    torch.testing.assert_close(out, expected, **FP64)
    torch.testing.assert_close(h_n, expected[-1:], **FP64)
    model.mode = "sequential"
    out_seq, h_seq = model(x, h0)
    torch.testing.assert_close(out_seq, expected, **FP64)
    torch.testing.assert_close(h_seq, expected[-1:], **FP64)


@both_paths
def test_module_gradients_modes_agree() -> None:
    torch.manual_seed(0)
    par = MinGRU(4, 6, dtype=torch.float64)
    seq = MinGRU(4, 6, mode="sequential", dtype=torch.float64)
    seq.load_state_dict(par.state_dict())
    x = torch.randn(33, 3, 4, dtype=torch.float64)
    h0 = torch.randn(1, 3, 6, dtype=torch.float64)
    grads = []
    for model in (par, seq):
        xx, hh = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, h_n = model(xx, hh)
        (out.square().sum() + h_n.sum()).backward()
        grads.append([xx.grad, hh.grad, *(param.grad for param in model.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **FP64)


@both_paths
def test_batch_first_and_unbatched() -> None:
    torch.manual_seed(0)
    model = MinGRU(3, 4)
    x = torch.randn(9, 2, 3)
    h0 = torch.randn(1, 2, 4)
    out, h_n = model(x, h0)
    model_bf = MinGRU(3, 4, batch_first=True)
    model_bf.load_state_dict(model.state_dict())
    out_bf, h_bf = model_bf(x.transpose(0, 1), h0)
    assert out_bf.shape == (2, 9, 4) and h_bf.shape == (1, 2, 4)
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    torch.testing.assert_close(h_bf, h_n)
    out_u, h_u = model(x[:, 1], h0[:, 1])
    assert out_u.shape == (9, 4) and h_u.shape == (1, 4)
    torch.testing.assert_close(out_u, out[:, 1])
    torch.testing.assert_close(h_u, h_n[:, 1])


@both_paths
def test_h0_default_zero_and_negative_h0() -> None:
    torch.manual_seed(0)
    model = MinGRU(3, 4, dtype=torch.float64)
    x = torch.randn(12, 2, 3, dtype=torch.float64)
    out_none, _ = model(x)
    out_zero, _ = model(x, torch.zeros(1, 2, 4, dtype=torch.float64))
    torch.testing.assert_close(out_none, out_zero, **FP64)
    negative = -torch.rand(1, 2, 4, dtype=torch.float64) - 1.0
    expected = _equations(x, model.linear.weight, model.linear.bias, negative[0])
    torch.testing.assert_close(model(x, negative)[0], expected, **FP64)
    # h0 matters exactly through the product of the (1 - z): the outputs differ by that decayed difference.
    diff = model(x, negative)[0] - out_none
    assert diff.abs()[0].min() > 0


@both_paths
@pytest.mark.parametrize("grad", [False, True])
def test_chunked_equals_unchunked(grad: bool) -> None:
    torch.manual_seed(0)
    model = MinGRU(3, 4, batch_first=True, dtype=torch.float64)
    chunked = MinGRU(3, 4, batch_first=True, chunk_size=10, dtype=torch.float64)
    chunked.load_state_dict(model.state_dict())
    x = torch.randn(2, 45, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out, h_n = model(x, h0)
        out_c, h_c = chunked(x, h0)
    torch.testing.assert_close(out_c, out, **FP64)
    torch.testing.assert_close(h_c, h_n, **FP64)
    if grad:
        g1 = torch.autograd.grad(out.sum(), model.linear.weight)[0]
        g2 = torch.autograd.grad(out_c.sum(), chunked.linear.weight)[0]
        torch.testing.assert_close(g1, g2, **FP64)


@both_paths
def test_very_long_chunked_input_matches_sequential() -> None:
    torch.manual_seed(0)
    steps = 16384
    model = MinGRU(2, 4, chunk_size=2048)
    x = torch.randn(steps, 1, 2)
    with torch.no_grad():
        out, h_n = model(x)
        model.mode = "sequential"
        reference, h_ref = model(x)
    torch.testing.assert_close(out, reference, **FP32)
    torch.testing.assert_close(h_n, h_ref, **FP32)


def test_default_block_size() -> None:
    assert default_block_size(1) == 1
    assert default_block_size(4096) == 64
    assert default_block_size(4097) == 65


def test_errors() -> None:
    model = MinGRU(3, 4)
    with pytest.raises(ValueError, match="input_size: got 5, expected 3"):
        model(torch.randn(7, 2, 5))
    with pytest.raises(ValueError, match="2D or 3D, got"):
        model(torch.randn(3))
    with pytest.raises(ValueError, match=r"h0 of shape \(1, 2, 4\)"):
        model(torch.randn(7, 2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no time steps"):
        model(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        MinGRU(3, 4, mode="fast")
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        MinGRU(3, 4, chunk_size=0)
    with pytest.raises(ValueError, match="even dimension"):
        mingru_scan(torch.randn(5, 3))
    with pytest.raises(ValueError, match="block_size must be positive"):
        mingru_scan(torch.randn(5, 4), block_size=0)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2,\)"):
        mingru_scan(torch.randn(5, 4), torch.zeros(3))


@both_paths
def test_device_and_dtype_follow_inputs() -> None:
    y, h0 = _inputs(10, dtype=torch.float64)
    h = mingru_scan(y, h0)
    assert h.dtype == torch.float64 and h.device == y.device
    # F.linear-shaped inputs with several lane dimensions.
    y4 = torch.randn(6, 2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(mingru_scan(y4), mingru_sequential(y4), **FP64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("steps", "block"), [(1, 1), (10, 3), (257, 16), (1000, 1000)])
def test_kernel_matches_pytorch_blocked_scan(cpp_kernel: None, level: str, dtype: torch.dtype, steps: int,
                                             block: int) -> None:
    """The C++ kernel's (h, block-start states) and its gradients equal the PyTorch implementation's, on every
    instruction set this CPU runs (hidden 37: a vector tail on each)."""
    from gru_lib import isa

    y, h0 = _inputs(steps, batch=3, hidden=37, dtype=dtype, scale=4.0, seed=steps)
    h0 = -h0.abs()  # a negative start state enters the carry linearly
    kernel = scan_kernel(y)
    assert kernel is not None
    assert kernel.isa() == isa.level_index(level)
    h, carry = kernel.forward(y, h0, block)
    h_ref, carry_ref = _forward(y, h0, block)
    tol = FP64 if dtype == torch.float64 else FP32
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(carry, carry_ref, **tol)
    grad = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_y, grad_h0 = kernel.backward(grad, y, h, carry, block)
    grad_y_ref, grad_h0_ref = _backward(grad, y, h_ref, carry_ref, block)
    torch.testing.assert_close(grad_y, grad_y_ref, **tol)
    torch.testing.assert_close(grad_h0, grad_h0_ref, **tol)


def test_kernel_is_used_only_where_it_applies(scan_path: str) -> None:
    """CPU float32/float64 take the kernel (when built); bfloat16 keeps the PyTorch scan."""
    assert scan_kernel(torch.zeros(2, 1, 4, dtype=torch.bfloat16)) is None
    assert (scan_kernel(torch.zeros(2, 1, 4, dtype=torch.float64)) is not None) == (scan_path == "cpp")


def test_outputs_stay_independent_when_buffers_are_reused(scan_path: str) -> None:
    """Large results come from a reuse pool (csrc/buffers.h): a result still alive is never handed out again,
    and a released one is taken again without changing later results."""
    y, h0 = _inputs(2048, batch=4, hidden=256, seed=5)  # (2048, 4, 256) states: 8 MiB, above the pool's floor
    first = mingru_scan(y, h0)
    kept = first.clone()
    second = mingru_scan(2 * y, h0)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert first.data_ptr() != second.data_ptr()
    del first
    native.release_cached_buffers()
    torch.testing.assert_close(mingru_scan(y, h0), kept, rtol=0, atol=0)
