"""gru_lib.GRU against torch.nn.GRU: outputs, final states and every gradient over a grid of configurations."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from gru_lib import GRU

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
D, H, T, B = 3, 4, 5, 3


def _pair(dtype: torch.dtype = torch.float64, **kwargs) -> tuple[GRU, nn.GRU]:
    torch.manual_seed(0)
    ref = nn.GRU(D, H, dtype=dtype, **kwargs)
    ours = GRU(D, H, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _run(module: nn.Module, x, h0: torch.Tensor | None, seed: int = 1) -> list[torch.Tensor]:
    """Forward, then backward of a random linear function of (output, h_n); returns outputs and all grads."""
    data = x.data if isinstance(x, PackedSequence) else x
    data = data.detach().clone().requires_grad_()
    x = x._replace(data=data) if isinstance(x, PackedSequence) else data
    if h0 is not None:
        h0 = h0.detach().clone().requires_grad_()
    out, h_n = module(x, h0)
    out_data = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out_data.shape, generator=g, dtype=out_data.dtype)
    w_h = torch.randn(h_n.shape, generator=g, dtype=h_n.dtype)
    ((out_data * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = [data.grad] + ([h0.grad] if h0 is not None else [])
    return [out_data.detach(), h_n.detach()] + grads + [p.grad for p in module.parameters()]


def _assert_all_close(got: list[torch.Tensor], want: list[torch.Tensor], dtype: torch.dtype) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,with_h0",
    list(itertools.product([1, 2, 3], [False, True], [False, True], [False, True])),
)
def test_padded_grid_matches_nn_gru(num_layers, bidirectional, batch_first, with_h0, dtype) -> None:
    ours, ref = _pair(dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=dtype)
    h0 = torch.randn(num_layers * (1 + bidirectional), B, H, dtype=dtype) if with_h0 else None
    got, want = _run(ours, x, h0), _run(ref, x, h0)
    assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, True), (3, False)])
def test_packed_unequal_lengths_match_nn_gru(num_layers, bidirectional, enforce_sorted, dtype) -> None:
    ours, ref = _pair(dtype, num_layers=num_layers, bidirectional=bidirectional)
    lengths = torch.tensor([5, 3, 2, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 3])
    x = torch.randn(T, 4, D, dtype=dtype)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    h0 = torch.randn(num_layers * (1 + bidirectional), 4, H, dtype=dtype)
    for state in (None, h0):
        got, want = _run(ours, packed, state), _run(ref, packed, state)
        _assert_all_close(got, want, dtype)
    out, h_n = ours(packed, h0)
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out, name), getattr(packed, name)
        assert (a is None and b is None) or torch.equal(a, b)


def test_packed_h_n_is_in_callers_order() -> None:
    """Sequence b's final state must not depend on where sorting put it: compare with running it alone."""
    ours, _ = _pair(torch.float64, num_layers=2, bidirectional=True)
    lengths = [2, 5, 1, 3]
    x = torch.randn(T, 4, D, dtype=torch.float64)
    _, h_n = ours(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    for b, n in enumerate(lengths):
        _, h_alone = ours(x[:n, b])
        torch.testing.assert_close(h_n[:, b], h_alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unbatched_matches_nn_gru(bidirectional, with_h0, dtype) -> None:
    ours, ref = _pair(dtype, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(T, D, dtype=dtype)
    h0 = torch.randn(2 * (1 + bidirectional), H, dtype=dtype) if with_h0 else None
    got, want = _run(ours, x, h0), _run(ref, x, h0)
    assert got[0].shape == (T, H * (1 + bidirectional)) and got[1].shape == (2 * (1 + bidirectional), H)
    _assert_all_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bias_off_matches_nn_gru(bidirectional, dtype) -> None:
    ours, ref = _pair(dtype, num_layers=2, bidirectional=bidirectional, bias=False)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert not any("bias" in name for name in ours.state_dict())
    x, h0 = torch.randn(T, B, D, dtype=dtype), torch.randn(2 * (1 + bidirectional), B, H, dtype=dtype)
    _assert_all_close(_run(ours, x, h0), _run(ref, x, h0), dtype)


def test_state_dict_round_trip_both_ways_and_same_initialisation() -> None:
    torch.manual_seed(5)
    ref = nn.GRU(D, H, num_layers=2, bidirectional=True)
    torch.manual_seed(5)
    ours = GRU(D, H, num_layers=2, bidirectional=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    assert max(p.abs().max().item() for p in ours.parameters()) <= H**-0.5
    other = GRU(D, H, num_layers=2, bidirectional=True)
    ref.load_state_dict(other.state_dict())
    x = torch.randn(T, B, D)
    torch.testing.assert_close(ref(x)[0], other(x)[0], rtol=1e-5, atol=1e-5)
    assert [[p.shape for p in group] for group in ours.all_weights] == [
        [p.shape for p in group] for group in ref.all_weights
    ]


@pytest.mark.parametrize(
    "kwargs,packed",
    [({"num_layers": 2, "bidirectional": True}, False), ({"num_layers": 2, "bidirectional": True}, True)],
)
def test_gradcheck_float64(kwargs, packed) -> None:
    torch.manual_seed(0)
    gru = GRU(2, 2, dtype=torch.float64, **kwargs)
    names = [name for name, _ in gru.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in gru.parameters())
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def f(x, h0, *params):
        inp = pack_padded_sequence(x, lengths) if packed else x
        out, h_n = functional_call(gru, dict(zip(names, params, strict=True)), (inp, h0))
        return (out.data if packed else out), h_n

    assert torch.autograd.gradcheck(f, (x, h0, *params))


def test_dropout_between_layers_only_in_training() -> None:
    x = torch.randn(T, B, D)
    ours, ref = _pair(torch.float32, num_layers=3, dropout=0.5)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    eval_out, eval_h = ours(x)
    ours.train()
    torch.manual_seed(0)
    train_out, train_h = ours(x)
    assert (train_out - eval_out).abs().max() > 1e-3
    # Dropout acts on layer 0's output, so layer 0's own final state is untouched; layer 2's is not.
    torch.testing.assert_close(train_h[0], eval_h[0])
    assert (train_h[2] - eval_h[2]).abs().max() > 1e-3
    # p = 1 zeroes every input of layers 1 and 2: deterministic, so nn.GRU in training mode must agree.
    ours_1, ref_1 = _pair(torch.float64, num_layers=2, dropout=1.0, bidirectional=True)
    x64 = x.double()
    _assert_all_close(_run(ours_1, x64, None), _run(ref_1, x64, None), torch.float64)


def test_dropout_single_layer_changes_nothing() -> None:
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        ours, ref = _pair(torch.float32, num_layers=1, dropout=0.5)
    x = torch.randn(T, B, D)
    ours.train()
    train = ours(x)
    ours.eval()
    evaluated = ours(x)
    assert torch.equal(train[0], evaluated[0]) and torch.equal(train[1], evaluated[1])
    torch.testing.assert_close(evaluated[0], ref(x)[0], rtol=1e-5, atol=1e-5)


def test_wrong_input_size_and_h0_shape_raise_clear_errors() -> None:
    gru = GRU(D, H, num_layers=2, bidirectional=True)
    with pytest.raises(RuntimeError, match=f"Expected {D}, got {D + 1}"):
        gru(torch.randn(T, B, D + 1))
    with pytest.raises(RuntimeError, match=rf"Expected hidden size \(4, {B}, {H}\), got \[2, {B}, {H}\]"):
        gru(torch.randn(T, B, D), torch.randn(2, B, H))
    with pytest.raises(RuntimeError, match=rf"Expected hidden size \(4, {B}, {H}\), got \[4, {B + 1}, {H}\]"):
        gru(torch.randn(T, B, D), torch.randn(4, B + 1, H))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(4, 4\), got \[4, 5\]"):
        gru(torch.randn(T, D), torch.randn(4, H + 1))
    with pytest.raises(RuntimeError, match="hx should also be 3-D but got 2-D"):
        gru(torch.randn(T, B, D), torch.randn(4, H))
    with pytest.raises(RuntimeError, match="hx should also be 2-D but got 3-D"):
        gru(torch.randn(T, D), torch.randn(4, 1, H))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        gru(torch.randn(1, T, B, D))
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype"):
        gru(torch.randn(T, B, D, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        gru(torch.randn(0, B, D))
    packed = pack_padded_sequence(torch.randn(T, B, D + 1), torch.tensor([5, 4, 2]))
    with pytest.raises(RuntimeError, match=f"Expected {D}, got {D + 1}"):
        gru(packed)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"dropout": 1.5}, ValueError, "dropout should be a number in range"),
        ({"dropout": True}, ValueError, "dropout should be a number in range"),
        ({"num_layers": 0}, ValueError, "num_layers must be greater than zero"),
        ({"hidden_size": -1}, ValueError, "hidden_size must be greater than zero"),
        ({"input_size": 2.0}, TypeError, "input_size should be of type int, got: float"),
        ({"batch_first": None}, TypeError, "batch_first should be of type bool"),
    ],
)
def test_constructor_validates_arguments(kwargs, error, match) -> None:
    args = {"input_size": D, "hidden_size": H} | kwargs
    with pytest.raises(error, match=match):
        GRU(**args)


def test_scan_direction_contract() -> None:
    """The hook FastGRU overrides: zeros past each length, and h_n after the last valid step."""
    torch.manual_seed(0)
    gru = GRU(D, H, dtype=torch.float64)
    x = torch.randn(T, 2, D, dtype=torch.float64)
    h0 = torch.randn(2, H, dtype=torch.float64)
    lengths = torch.tensor([2, 5])
    weights = gru.all_weights[0]
    for reverse in (False, True):
        out, h_n = gru._scan_direction(x, h0, lengths, *weights, reverse=reverse)
        assert out.shape == (T, 2, H) and h_n.shape == (2, H)
        assert torch.equal(out[2:, 0], torch.zeros(T - 2, H, dtype=torch.float64))
        for b, n in enumerate(lengths.tolist()):
            alone, h_alone = gru._scan_direction(x[:n, b : b + 1], h0[b : b + 1], None, *weights, reverse=reverse)
            torch.testing.assert_close(out[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h_n[b], h_alone[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h_n[b], alone[-1 if not reverse else 0, 0], rtol=1e-12, atol=1e-12)
