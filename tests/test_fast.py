"""FastGRU computes nn.GRU's function: outputs and every gradient, on the C++ path and the PyTorch fallback."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gru_lib import fast
from gru_lib.fast import FastGRU, fast_gru_scan

# "cpp": the C++ loop with oneDNN's matrix products; "cpp-aten": the same loop with torch.backends.mkldnn
# disabled, so its products go through ATen (MKL); "torch": the PyTorch fallback (GRU_LIB_NO_EXTENSION=1).
PATHS = ["cpp", "cpp-aten", "torch"]


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "torch":
        monkeypatch.setenv("GRU_LIB_NO_EXTENSION", "1")
    else:
        monkeypatch.delenv("GRU_LIB_NO_EXTENSION", raising=False)
    assert fast.backend_name("cpu") == request.param.split("-")[0], fast.extension_error()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", request.param != "cpp-aten")
    if request.param.startswith("cpp"):
        module = fast.extension()
        assert module is not None
        expected = request.param == "cpp" and torch.backends.mkldnn.is_available()
        assert module.uses_onednn("float32") == expected
        assert not module.uses_onednn("float64")  # oneDNN has no float64 products: ATen
    return request.param


def run_both(
    *,
    dtype: torch.dtype,
    layers: int,
    bidirectional: bool,
    batch_first: bool,
    with_h0: bool,
    packed: bool,
    bias: bool,
    input_size: int = 5,
    hidden: int = 7,
    steps: int = 6,
    lengths: tuple[int, ...] = (6, 3, 1, 5),
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Runs nn.GRU and FastGRU (same state_dict) on the same data and returns outputs + all gradients."""
    gen = torch.Generator().manual_seed(1234)
    ref = nn.GRU(input_size, hidden, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    ref = ref.to(dtype)
    model = FastGRU(input_size, hidden, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    model = model.to(dtype)
    model.load_state_dict(ref.state_dict())
    batch = len(lengths)
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    h0 = torch.randn(layers * (2 if bidirectional else 1), batch, hidden, generator=gen, dtype=dtype)
    results = []
    for module in (ref, model):
        xs = x.clone().requires_grad_()
        hs = h0.clone().requires_grad_() if with_h0 else None
        inp = pack_padded_sequence(xs, torch.tensor(lengths), batch_first, enforce_sorted=False) if packed else xs
        out, h_n = module(inp, hs)
        if packed:
            out = pad_packed_sequence(out, batch_first)[0]
        weights = torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)
        ((out * weights).sum() + (h_n * h_n.flip(-1)).sum()).backward()
        grads = [xs.grad] + ([hs.grad] if with_h0 else []) + [p.grad for p in module.parameters()]
        results.append([out.detach(), h_n.detach(), *grads])
    return results[0], results[1]


# Every value of every option, and every pair of (layers, directions, packed, bias) values; batch_first and h0
# vary with them so that each appears both ways with each direction and packing.
GRID = [
    (layers, bidirectional, bias != packed, (layers == 2) != bidirectional, packed, bias)
    for layers, bidirectional, packed, bias in itertools.product([1, 2], [False, True], [False, True], [False, True])
]


@pytest.mark.parametrize("layers,bidirectional,batch_first,with_h0,packed,bias", GRID)
def test_matches_nn_gru_float32(
    path: str, layers: int, bidirectional: bool, batch_first: bool, with_h0: bool, packed: bool, bias: bool
) -> None:
    expected, actual = run_both(
        dtype=torch.float32, layers=layers, bidirectional=bidirectional, batch_first=batch_first,
        with_h0=with_h0, packed=packed, bias=bias,
    )
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional,packed", [(False, False), (True, True), (True, False), (False, True)])
def test_matches_nn_gru_float64(path: str, bidirectional: bool, packed: bool) -> None:
    expected, actual = run_both(
        dtype=torch.float64, layers=2, bidirectional=bidirectional, batch_first=True, with_h0=True,
        packed=packed, bias=True,
    )
    for want, got in zip(expected, actual):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [16, 37])
def test_long_sequences_and_vector_tails(path: str, hidden: int, dtype: torch.dtype) -> None:
    """A width that fills whole vector registers and one that leaves a tail; 120 steps of recurrence.
    The weight gradients here are sums of 600 terms, so float32 is compared relative to each tensor's scale
    (summation order alone moves them by ~1e-7 of it); float64 shows the function itself is the same."""
    expected, actual = run_both(
        dtype=dtype, layers=1, bidirectional=True, batch_first=False, with_h0=True, packed=True,
        bias=True, input_size=11, hidden=hidden, steps=120, lengths=(120, 77, 120, 3, 50),
    )
    for want, got in zip(expected, actual):
        scale = max(1.0, want.abs().max().item())
        tol = 1e-5 * scale if dtype == torch.float32 else 1e-11 * scale
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_instruction_set_matches_nn_gru(level: str, dtype: torch.dtype) -> None:
    """The C++ loop's gates, compiled for each instruction set (fast_math.h's GRU_MULTIVERSION), run the path
    gru_lib.isa selects and compute nn.GRU's outputs and gradients; a width of 37 leaves a vector tail."""
    from gru_lib import isa

    module = fast.extension()
    assert module is not None, fast.extension_error()
    assert module.isa() == isa.level_index(level)
    expected, actual = run_both(
        dtype=dtype, layers=1, bidirectional=True, batch_first=False, with_h0=True, packed=True,
        bias=True, input_size=11, hidden=37, steps=40, lengths=(40, 17, 3, 25),
    )
    for want, got in zip(expected, actual):
        scale = max(1.0, want.abs().max().item())
        tol = 1e-5 * scale if dtype == torch.float32 else 1e-11 * scale
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(path: str, reverse: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    steps, batch, inputs, hidden = 4, 3, 3, 2
    args = [
        torch.randn(steps, batch, inputs, generator=gen, dtype=torch.float64),
        torch.randn(batch, hidden, generator=gen, dtype=torch.float64),
        torch.randn(3 * hidden, inputs, generator=gen, dtype=torch.float64) * 0.5,
        torch.randn(3 * hidden, hidden, generator=gen, dtype=torch.float64) * 0.5,
        torch.randn(3 * hidden, generator=gen, dtype=torch.float64),
        torch.randn(3 * hidden, generator=gen, dtype=torch.float64),
    ]
    args = [a.requires_grad_() for a in args]
    lengths = torch.tensor([4, 2, 3])

    def scan(x, h0, w_ih, w_hh, b_ih, b_hh):  # noqa: ANN001, ANN202
        return fast_gru_scan(x, h0, lengths, w_ih, w_hh, b_ih, b_hh, reverse)

    assert torch.autograd.gradcheck(scan, args)


def test_scan_contract_padding_and_final_state(path: str) -> None:
    """Output is exactly zero past each length; h_n is the state at the last valid step (step 0 in reverse)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 4, generator=gen)
    h0 = torch.randn(3, 6, generator=gen)
    w_ih, w_hh = torch.randn(18, 4, generator=gen), torch.randn(18, 6, generator=gen)
    lengths = torch.tensor([5, 2, 0])
    out, h_n = fast_gru_scan(x, h0, lengths, w_ih, w_hh, None, None, False)
    assert torch.equal(out[2:, 1], torch.zeros(3, 6)) and torch.equal(out[:, 2], torch.zeros(5, 6))
    torch.testing.assert_close(h_n[0], out[4, 0])
    torch.testing.assert_close(h_n[1], out[1, 1])
    torch.testing.assert_close(h_n[2], h0[2])  # an empty sequence keeps its initial state
    out_r, h_r = fast_gru_scan(x, h0, lengths, w_ih, w_hh, None, None, True)
    torch.testing.assert_close(h_r[1], out_r[0, 1])
    assert torch.equal(out_r[2:, 1], torch.zeros(3, 6))


def test_state_dict_is_nn_grus() -> None:
    ref = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    model = FastGRU(3, 4, num_layers=2, bidirectional=True)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert all(model.state_dict()[k].shape == v.shape for k, v in ref.state_dict().items())
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(ref.weight_hh_l1_reverse, model.weight_hh_l1_reverse)


def test_no_grad_inference_matches(path: str) -> None:
    ref, model = nn.GRU(6, 8, 2), FastGRU(6, 8, 2)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(9, 4, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = ref(x), model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert not a.requires_grad


def test_bf16_autocast_is_close_and_differentiable(path: str) -> None:
    """Under CPU autocast the products run in bfloat16: outputs stay float32, within bf16's rounding of fp32."""
    model = FastGRU(16, 32, bidirectional=True)
    x = torch.randn(12, 5, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        exact, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = model(x)
    assert out.dtype == torch.float32 and h_n.dtype == torch.float32
    error = (out.detach() - exact).abs().max().item()
    assert 0 < error < 5e-2  # nonzero: the products really ran in bfloat16
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_both_paths_agree_under_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FastGRU(8, 16)
    x = torch.randn(10, 3, 8, generator=torch.Generator().manual_seed(9))
    outs = []
    for flag in ("0", "1"):
        monkeypatch.setenv("GRU_LIB_NO_EXTENSION", flag)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(model(x)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_cuda_runs_nn_gru_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA FastGRU hands its forward to nn.GRU.forward (cuDNN); elsewhere it runs its own loop."""
    assert fast.runs_cudnn("cuda") and fast.runs_cudnn(torch.device("cuda", 0))
    assert not fast.runs_cudnn("cpu") and not fast.runs_cudnn("meta")
    model = FastGRU(3, 4)
    x = torch.randn(5, 2, 3)
    calls: list[str] = []
    original = nn.GRU.forward

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.GRU, "forward", spy)
    model(x)
    assert calls == []  # the CPU runs the book's loop
    monkeypatch.setattr(fast, "runs_cudnn", lambda device: True)  # as on a CUDA device
    out, h_n = model(x)
    assert calls == ["FastGRU"]
    ref = nn.GRU(3, 4)
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(out, ref(x)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_nn_gru() -> None:
    """On a GPU, FastGRU's outputs and gradients are nn.GRU's (the same cuDNN call)."""
    torch.manual_seed(0)
    ref = nn.GRU(8, 16, 2, bidirectional=True).cuda()
    model = FastGRU(8, 16, 2, bidirectional=True).cuda()
    model.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 8, device="cuda")
    outs = [m(x)[0] for m in (ref, model)]
    torch.testing.assert_close(outs[1], outs[0])
    for m, out in zip((ref, model), outs):
        out.sum().backward()
    for p_ref, p in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad)
