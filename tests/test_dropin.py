"""gru_lib.GRU, FastGRU and gru_lib.GRUCell as drop-ins for torch.nn.GRU / torch.nn.GRUCell.

Every check runs for PyTorch's module and for ours, side by side (the ``impl`` parameter): the torch row shows
that the expectation is PyTorch's behaviour, the other rows that ours shares it. The cases follow PyTorch's own
module tests (``module_inputs_torch_nn_RNN_GRU``, ``module_inputs_torch_nn_RNN_GRU_Cell`` and the matching error
inputs in ``torch/testing/_internal/common_modules.py``, and the GRU tests of ``test_nn.py``). A check that
fails for ours on purpose is marked ``xfail(strict=True)`` with the reason; each such difference is listed in
the setup page's section "Differences from torch.nn".
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gru_lib.cell import GRUCell
from gru_lib.fast import FastGRU
from gru_lib.layer import GRU, to_torch_modules

GRUS: dict[str, type[nn.GRU]] = {"torch": nn.GRU, "gru_lib": GRU, "fast": FastGRU}
CELLS: dict[str, type[nn.GRUCell]] = {"torch": nn.GRUCell, "gru_lib": GRUCell}
OURS_GRU, OURS_CELL = ("gru_lib", "fast"), ("gru_lib",)
EXACT = {"rtol": 1e-6, "atol": 1e-6}  # float32: every compiled path, and the eager forward, against nn.GRU


def _ours_differ(impls: dict[str, Any], ours: tuple[str, ...], reason: str) -> list[Any]:
    """``impls``' names as parameters, with ours expected to fail (a documented difference)."""
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason)) if name in ours else name
            for name in impls]


def _build(cls: type[nn.Module], *args: Any, seed: int = 0, **kwargs: Any) -> nn.Module:
    """A module drawn from ``seed``: equal seeds give every implementation the same weights."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(*args, **kwargs)


def _close(got: Any, want: Any, **tol: float) -> None:
    """Outputs (tensors, PackedSequences, tuples of them) equal within ``tol`` (EXACT when none is given)."""
    if isinstance(want, PackedSequence):
        assert isinstance(got, PackedSequence)
        torch.testing.assert_close(got.batch_sizes, want.batch_sizes)
        got, want = got.data, want.data
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _close(a, b, **tol)
        return
    torch.testing.assert_close(got, want, **(tol or EXACT))


def _error(call: Callable[[], Any]) -> BaseException | None:
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the point is to compare what is raised
        return error
    return None


class Run(nn.Module):
    """Calls the recurrent module: scripting a module through a parent is how TorchScript takes nn.GRU."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.rnn(x)


class RunPacked(nn.Module):
    """Packs (T, B, D) by ``lengths``, runs the GRU, and pads the output again."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(out)[0], h_n


class RunCell(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return self.cell(x, h)


# ---------------------------------------------------------------------------------------------------------
# GRU: what it is, what it accepts, what it refuses.


@pytest.mark.parametrize("impl", GRUS)
def test_gru_is_an_nn_gru(impl: str) -> None:
    gru = _build(GRUS[impl], 3, 4, num_layers=2, bidirectional=True)
    assert isinstance(gru, nn.GRU) and isinstance(gru, nn.RNNBase)
    assert gru.mode == "GRU" and gru.proj_size == 0
    assert [id(w) for w in gru._flat_weights] == [id(p) for p in gru.parameters()]
    assert len(gru.all_weights) == 4 and all(len(group) == 4 for group in gru.all_weights)
    gru.flatten_parameters()


GRU_CONSTRUCTOR_ERRORS = [
    # (arguments, exception type, the message PyTorch gives)
    ((10, 0, 1), {}, ValueError, "hidden_size must be greater than zero"),
    ((10, 10, 0), {}, ValueError, "num_layers must be greater than zero"),
    ((0, 10), {}, ValueError, "input_size must be greater than zero"),
    ((3, 4), {"proj_size": 2}, ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
    ((3, 4), {"proj_size": 0}, ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
    ((3, 4), {"dropout": 1.5}, ValueError, r"dropout should be a number in range \[0, 1\]"),
    ((3, 4), {"dropout": True}, ValueError, r"dropout should be a number in range \[0, 1\]"),
    ((3.0, 4), {}, TypeError, "input_size should be of type int, got: float"),
    ((3, 4.0), {}, TypeError, "hidden_size should be of type int, got: float"),
    ((3, 4), {"batch_first": None}, TypeError, "batch_first should be of type bool, got: NoneType"),
    ((3, 4), {"bias": "yes"}, TypeError, "bias should be of type bool, got: str"),
    ((3, 4), {"cell": "lstm"}, TypeError, "unexpected keyword argument 'cell'"),
]


@pytest.mark.parametrize("args,kwargs,error,match", GRU_CONSTRUCTOR_ERRORS,
                         ids=[f"{a}{k}" for a, k, _, _ in GRU_CONSTRUCTOR_ERRORS])
@pytest.mark.parametrize("impl", GRUS)
def test_gru_constructor_errors_are_pytorchs(impl: str, args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        GRUS[impl](*args, **kwargs)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_single_layer_dropout_warns(impl: str) -> None:
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        GRUS[impl](3, 4, dropout=0.5)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_accepts_a_truthy_bidirectional(impl: str) -> None:
    assert GRUS[impl](3, 4, bidirectional=1).all_weights[1][0].shape == (12, 3)


def _gru_forward_errors() -> list[tuple[str, dict, Callable[[], tuple], type[Exception], str]]:
    """(case, constructor arguments, forward arguments, exception type PyTorch raises, regex both messages
    match). Constructor: GRU(3, 4, num_layers=2, bidirectional=True) and the extra arguments."""
    x = torch.randn(5, 3, 3)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    return [
        ("input size", {}, lambda: (torch.randn(5, 3, 4),), RuntimeError, "Expected 3, got 4"),
        ("packed input size", {}, lambda: (pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 4, 2])),),
         RuntimeError, "Expected 3, got 4"),
        ("hx layers", {}, lambda: (x, torch.randn(2, 3, 4)), RuntimeError,
         r"Expected hidden size \(4, 3, 4\), got \[2, 3, 4\]"),
        ("hx batch", {}, lambda: (x, torch.randn(4, 2, 4)), RuntimeError,
         r"Expected hidden size \(4, 3, 4\), got \[4, 2, 4\]"),
        ("hx features", {}, lambda: (x, torch.randn(4, 3, 5)), RuntimeError, "Expected hidden size"),
        ("hx batch, batch_first", {"batch_first": True}, lambda: (x, torch.randn(4, 3, 4)), RuntimeError,
         r"Expected hidden size \(4, 5, 4\), got \[4, 3, 4\]"),
        ("hx batch, packed", {}, lambda: (packed, torch.randn(4, 2, 4)), RuntimeError, ""),
        ("hx 2-D, packed", {}, lambda: (packed, torch.randn(4, 4)), RuntimeError, "Expected hidden size"),
        ("hx 2-D for 3-D input", {}, lambda: (x, torch.randn(4, 4)), RuntimeError,
         "hx should also be 3-D but got 2-D"),
        ("hx 3-D for 2-D input", {}, lambda: (x[:, 0], torch.randn(4, 1, 4)), RuntimeError,
         "hx should also be 2-D but got 3-D"),
        ("hx features, unbatched", {}, lambda: (x[:, 0], torch.randn(4, 5)), RuntimeError, "Expected hidden size"),
        ("4-D input", {}, lambda: (x[None],), ValueError, "Expected input to be 2D or 3D, got 4D instead"),
        ("1-D input", {}, lambda: (x[0, 0],), ValueError, "Expected input to be 2D or 3D, got 1D instead"),
        ("input dtype", {}, lambda: (x.double(),), ValueError,
         r"RNN input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)\. "
         r"Convert input: input\.to\(torch.float32\), or convert model: model\.to\(torch.float64\)"),
        ("hx dtype", {}, lambda: (x, torch.randn(4, 3, 4, dtype=torch.float64)), RuntimeError, ""),
        ("no steps", {}, lambda: (torch.randn(0, 3, 3),), RuntimeError,
         "Expected sequence length to be larger than 0 in RNN"),
    ]


GRU_FORWARD_ERRORS = _gru_forward_errors()


@pytest.mark.parametrize("case,kwargs,inputs,error,match", GRU_FORWARD_ERRORS,
                         ids=[case[0] for case in GRU_FORWARD_ERRORS])
@pytest.mark.parametrize("impl", GRUS)
def test_gru_forward_errors_are_pytorchs(impl: str, case: str, kwargs: dict, inputs: Callable, error: type,
                                         match: str) -> None:
    gru = _build(GRUS[impl], 3, 4, num_layers=2, bidirectional=True, **kwargs)
    with pytest.raises(error, match=match):
        gru(*inputs())


# ---------------------------------------------------------------------------------------------------------
# GRU: the same function, eagerly and through every compiler.


def _module_inputs() -> list[tuple[str, dict, Callable[[], tuple]]]:
    """PyTorch's module_inputs_torch_nn_RNN_GRU samples (2 layers, every bias/batch_first/bidirectional), and
    the layouts a model uses: padded (T, B, D) or batch first, with and without h0, and packed."""
    samples = []
    for bias, batch_first, bidirectional in itertools.product([False, True], repeat=3):
        args = {"input_size": 2, "num_layers": 2, "bias": bias, "batch_first": batch_first,
                "bidirectional": bidirectional}
        tag = f"bias={bias},batch_first={batch_first},bidirectional={bidirectional}"
        samples.append((f"unbatched,{tag}", args | {"hidden_size": 2}, lambda: (torch.randn(3, 2),)))
        samples.append((f"unbatched+h0,{tag}", args | {"hidden_size": 3},
                        lambda d=2 if bidirectional else 1: (torch.randn(3, 2), torch.randn(2 * d, 3))))
        samples.append((f"packed,{tag}", args | {"hidden_size": 2},
                        lambda: (pack_padded_sequence(torch.randn(5, 5, 2), torch.tensor([5, 3, 3, 2, 2])),)))
        samples.append((f"padded+h0,{tag}", args | {"hidden_size": 3},
                        lambda d=2 if bidirectional else 1: (torch.randn(4, 4, 2), torch.randn(2 * d, 4, 3))))
    samples.append(("packed unsorted+h0", {"input_size": 2, "hidden_size": 3, "num_layers": 2,
                                           "bidirectional": True},
                    lambda: (pack_padded_sequence(torch.randn(5, 4, 2), torch.tensor([2, 5, 1, 3]),
                                                  enforce_sorted=False), torch.randn(4, 4, 3))))
    return samples


MODULE_INPUTS = _module_inputs()


def _with_grads(module: nn.Module, inputs: tuple) -> list[Tensor]:
    """Outputs, then the gradients of a fixed random function of them w.r.t. inputs and parameters."""
    inputs = tuple(x._replace(data=x.data.detach().requires_grad_()) if isinstance(x, PackedSequence)
                   else x.detach().requires_grad_() for x in inputs)
    out, h_n = module(*inputs)
    out = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(1)
    ((out * torch.randn(out.shape, generator=g)).sum() + (h_n * torch.randn(h_n.shape, generator=g)).sum()).backward()
    leaves = [x.data if isinstance(x, PackedSequence) else x for x in inputs]
    return [out.detach(), h_n.detach()] + [t.grad for t in leaves] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name,kwargs,inputs", MODULE_INPUTS, ids=[s[0] for s in MODULE_INPUTS])
@pytest.mark.parametrize("impl", GRUS)
@pytest.mark.parametrize("training", [True, False])
def test_gru_module_inputs_match_nn_gru(impl: str, name: str, kwargs: dict, inputs: Callable,
                                        training: bool) -> None:
    torch.manual_seed(2)
    data = inputs()
    ours = _build(GRUS[impl], **kwargs).train(training)
    ref = _build(nn.GRU, **kwargs).train(training)
    got, want = _with_grads(ours, data), _with_grads(ref, data)
    _close(got[:2], want[:2])
    _close(got[2:], want[2:], rtol=1e-5, atol=1e-5)


def _reference(kwargs: dict, *inputs: Any) -> Any:
    with torch.no_grad():
        return _build(nn.GRU, 3, 4, **kwargs)(*inputs)


GRAPH_CONFIGS = {
    "2 layers, bidirectional, batch_first": ({"num_layers": 2, "bidirectional": True, "batch_first": True},
                                              (4, 5, 3), (2, 8, 3)),
    "2 layers, bidirectional": ({"num_layers": 2, "bidirectional": True}, (5, 4, 3), (8, 2, 3)),
    "unbatched, bidirectional": ({"num_layers": 2, "bidirectional": True}, (5, 3), (8, 3)),
    "1 layer, no bias": ({"bias": False}, (5, 4, 3), (8, 2, 3)),
}


@pytest.mark.parametrize("config", GRAPH_CONFIGS)
@pytest.mark.parametrize("impl", GRUS)
def test_gru_scripted_matches_nn_gru(impl: str, config: str) -> None:
    kwargs, shape, _ = GRAPH_CONFIGS[config]
    gru = _build(GRUS[impl], 3, 4, **kwargs)
    parent = Run(gru)
    scripted = torch.jit.script(parent)
    x = torch.randn(shape)
    _close(scripted(x), _reference(kwargs, x))
    # TorchScript's preparation puts the nn.GRU twin into the parent too; it holds the very same Parameters.
    assert isinstance(parent.rnn, nn.GRU)
    assert all(a is b for a, b in zip(parent.rnn.parameters(), gru.parameters(), strict=True))
    assert torch.jit.script(gru) is not None


@pytest.mark.parametrize("config", GRAPH_CONFIGS)
@pytest.mark.parametrize("impl", GRUS)
def test_gru_trace_runs_at_any_length(impl: str, config: str) -> None:
    kwargs, shape, other = GRAPH_CONFIGS[config]
    gru = _build(GRUS[impl], 3, 4, **kwargs).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(gru, (torch.randn(shape),))
    x = torch.randn(other)  # another length (and batch size) than the traced one
    _close(traced(x), _reference(kwargs, x))


@pytest.mark.parametrize("config", GRAPH_CONFIGS)
@pytest.mark.parametrize("impl", GRUS)
def test_gru_export_is_aten_gru(impl: str, config: str) -> None:
    kwargs, shape, _ = GRAPH_CONFIGS[config]
    gru = _build(GRUS[impl], 3, 4, **kwargs).eval()
    x = torch.randn(shape)
    program = torch.export.export(gru, (x,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.aten.gru.input in targets
    _close(program.module()(x), _reference(kwargs, x))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_torch_compile_runs_it_outside_the_graph_as_nn_gru(impl: str) -> None:
    """Dynamo does not trace RNNBase modules: torch.compile runs them eagerly, and fullgraph=True refuses."""
    gru = _build(GRUS[impl], 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    torch._dynamo.reset()  # a frame Dynamo gave up on is skipped by every later compile
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(gru, backend="eager", fullgraph=True)(x)
    torch._dynamo.reset()
    _close(torch.compile(gru, backend="eager")(x), _reference({"num_layers": 2, "bidirectional": True}, x))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_export_dynamic_batch(impl: str) -> None:
    kwargs = {"num_layers": 2, "bidirectional": True}
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(_build(GRUS[impl], 3, 4, **kwargs).eval(), (torch.randn(5, 4, 3),),
                                  dynamic_shapes=({1: batch},))
    x = torch.randn(5, 9, 3)
    _close(program.module()(x), _reference(kwargs, x))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_export_with_a_dynamic_length_fails_as_for_nn_gru(impl: str) -> None:
    """aten::gru's decomposition unrolls time, so torch.export specialises the length, for nn.GRU and ours
    alike (a traced graph, or the ONNX export below, runs at any length)."""
    steps = torch.export.Dim("steps", min=2, max=64)
    with pytest.raises(torch._dynamo.exc.UserError, match="specialized it to be a constant"):
        torch.export.export(_build(GRUS[impl], 3, 4).eval(), (torch.randn(5, 4, 3),), dynamic_shapes=({0: steps},))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_packed_inside_a_traced_and_a_scripted_model(impl: str) -> None:
    kwargs = {"num_layers": 2, "bidirectional": True}
    x, lengths = torch.randn(5, 3, 3), torch.tensor([2, 5, 3])
    x2, lengths2 = torch.randn(7, 4, 3), torch.tensor([7, 1, 4, 2])
    with torch.no_grad():
        want = RunPacked(_build(nn.GRU, 3, 4, **kwargs))(x2, lengths2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(RunPacked(_build(GRUS[impl], 3, 4, **kwargs)), (x, lengths))
    _close(traced(x2, lengths2), want)
    scripted = torch.jit.script(RunPacked(_build(GRUS[impl], 3, 4, **kwargs)))
    _close(scripted(x2, lengths2), want)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_packed_input_is_refused_by_trace_and_export_as_for_nn_gru(impl: str) -> None:
    """A PackedSequence as the graph's own input: neither compiler takes it, for nn.GRU or for ours."""
    gru = _build(GRUS[impl], 3, 4).eval()
    ref = _build(nn.GRU, 3, 4).eval()
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]))
    for compile_ in (lambda m: torch.jit.trace(m, (packed,)), lambda m: torch.export.export(m, (packed,))):
        want, got = _error(lambda: compile_(ref)), _error(lambda: compile_(gru))
        assert want is not None and type(got) is type(want)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_onnx_export_is_one_gru_node_at_any_length(impl: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    kwargs = {"num_layers": 2, "bidirectional": True}
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_build(GRUS[impl], 3, 4, **kwargs).eval(), (torch.randn(5, 2, 3),), str(path),
                          input_names=["x"], dynamic_axes={"x": {0: "steps", 1: "batch"}}, dynamo=False)
    assert "GRU" in {node.op_type for node in onnx.load(str(path)).graph.node}
    x = torch.randn(9, 3, 3)
    session = ort.InferenceSession(str(path))
    out = session.run(None, {"x": x.numpy()})
    _close([torch.from_numpy(a) for a in out], list(_reference(kwargs, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", _ours_differ(GRUS, OURS_GRU, "quantize_dynamic matches exact classes"))
def test_gru_quantize_dynamic_swaps_it(impl: str) -> None:
    from torch.ao.nn.quantized.dynamic import GRU as QuantizedGRU
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(nn.Sequential(_build(GRUS[impl], 3, 4)), {nn.GRU})
    assert isinstance(quantized[0], QuantizedGRU)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_quantize_dynamic_after_to_torch_modules(impl: str) -> None:
    from torch.ao.nn.quantized.dynamic import GRU as QuantizedGRU
    from torch.ao.quantization import quantize_dynamic

    model = nn.Sequential(_build(GRUS[impl], 3, 4, num_layers=2))
    ref = nn.Sequential(_build(nn.GRU, 3, 4, num_layers=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(to_torch_modules(model), {nn.GRU})
        want = quantize_dynamic(ref, {nn.GRU})
    assert isinstance(quantized[0], QuantizedGRU)
    x = torch.randn(5, 2, 3)
    _close(quantized(x), want(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# GRU: PyTorch's module conventions.


@pytest.mark.parametrize("impl", GRUS)
def test_gru_state_dict_round_trips_both_ways(impl: str) -> None:
    kwargs = {"num_layers": 2, "bidirectional": True}
    ours, ref = _build(GRUS[impl], 3, 4, seed=1, **kwargs), _build(nn.GRU, 3, 4, seed=2, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(5, 2, 3)
    ours.load_state_dict(ref.state_dict())
    _close(ours(x), ref(x))
    fresh = _build(nn.GRU, 3, 4, seed=3, **kwargs)
    fresh.load_state_dict(ours.state_dict())
    _close(fresh(x), ours(x))
    assert all(w is p for w, p in zip(ours._flat_weights, ours.parameters(), strict=True))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_repr_is_nn_grus(impl: str) -> None:
    kwargs = {"num_layers": 2, "bias": False, "batch_first": True, "dropout": 0.5, "bidirectional": True}
    assert repr(GRUS[impl](3, 4, **kwargs)) == repr(nn.GRU(3, 4, **kwargs)).replace("GRU", GRUS[impl].__name__, 1)
    assert repr(GRUS[impl](3, 4)).endswith("(3, 4)")


@pytest.mark.parametrize("impl", GRUS)
def test_gru_factory_kwargs_and_to(impl: str) -> None:
    assert all(p.device.type == "meta" for p in GRUS[impl](3, 4, device="meta").parameters())
    gru = _build(GRUS[impl], 3, 4, num_layers=2, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in gru.parameters())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    _close(gru(x), _build(nn.GRU, 3, 4, num_layers=2, dtype=torch.float64)(x), rtol=1e-12, atol=1e-12)
    gru = _build(GRUS[impl], 3, 4).to(torch.float64)
    assert gru._flat_weights[0].dtype == torch.float64
    _close(gru(x), _build(nn.GRU, 3, 4).double()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_half_on_cpu(impl: str) -> None:
    x = torch.randn(5, 2, 3)
    want = _build(nn.GRU, 3, 4, num_layers=2).half()(x.half())
    got = _build(GRUS[impl], 3, 4, num_layers=2).half()(x.half())
    assert got[0].dtype == got[1].dtype == torch.float16
    _close(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("impl", GRUS)
def test_gru_reset_parameters_draws_nn_grus_values(impl: str) -> None:
    ours, ref = GRUS[impl](3, 4, num_layers=2, bidirectional=True), nn.GRU(3, 4, num_layers=2, bidirectional=True)
    for module in (ours, ref):
        torch.manual_seed(7)
        module.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters(), strict=True))
    assert max(p.abs().max().item() for p in ours.parameters()) <= 4**-0.5


@pytest.mark.parametrize("impl", GRUS)
def test_gru_deepcopy_and_pickle(impl: str) -> None:
    gru = _build(GRUS[impl], 3, 4, num_layers=2, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(gru, buffer)
    buffer.seek(0)
    x = torch.randn(5, 2, 3)
    for twin in (copy.deepcopy(gru), torch.load(buffer, weights_only=False)):
        assert type(twin) is type(gru)
        assert all(w is p for w, p in zip(twin._flat_weights, twin.parameters(), strict=True))
        _close(twin(x), gru(x))


@pytest.mark.parametrize("impl", GRUS)
def test_gru_zero_grad_and_requires_grad(impl: str) -> None:
    gru = _build(GRUS[impl], 3, 4)
    gru(torch.randn(5, 2, 3))[0].sum().backward()
    assert all(p.grad is not None for p in gru.parameters())
    gru.zero_grad()
    assert all(p.grad is None for p in gru.parameters())
    gru.requires_grad_(False)
    out, h_n = gru(torch.randn(5, 2, 3))
    assert not out.requires_grad and not h_n.requires_grad


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("impl", GRUS)
def test_gru_gradcheck_float64(impl: str, packed: bool) -> None:
    gru = _build(GRUS[impl], 2, 2, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = gru(pack_padded_sequence(x, torch.tensor([3, 2])) if packed else x, h0)
        return (out.data if packed else out), h_n

    assert torch.autograd.gradcheck(run, (x, h0))


# ---------------------------------------------------------------------------------------------------------
# GRUCell.


@pytest.mark.parametrize("impl", CELLS)
def test_cell_is_an_nn_grucell(impl: str) -> None:
    cell = CELLS[impl](3, 4)
    assert isinstance(cell, nn.GRUCell) and isinstance(cell, nn.RNNCellBase)
    assert [name for name, _ in cell.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]


CELL_INPUTS = {
    # PyTorch's module_inputs_torch_nn_RNN_GRU_Cell: one unbatched step with hx, with and without bias=True.
    "unbatched (5, 10)": ({}, lambda: (torch.randn(5), torch.randn(10))),
    "unbatched, bias=True": ({"bias": True}, lambda: (torch.randn(5), torch.randn(10))),
    "batched": ({}, lambda: (torch.randn(3, 5), torch.randn(3, 10))),
    "batched, no hx": ({}, lambda: (torch.randn(3, 5),)),
    "no bias": ({"bias": False}, lambda: (torch.randn(3, 5), torch.randn(3, 10))),
}


@pytest.mark.parametrize("sample", CELL_INPUTS)
@pytest.mark.parametrize("impl", CELLS)
def test_cell_module_inputs_match_nn_grucell(impl: str, sample: str) -> None:
    kwargs, inputs = CELL_INPUTS[sample]
    torch.manual_seed(3)
    data = [x.requires_grad_() for x in inputs()]
    ours, ref = _build(CELLS[impl], 5, 10, **kwargs), _build(nn.GRUCell, 5, 10, **kwargs)
    got, want = ours(*data), ref(*data)
    _close(got, want)
    weight = torch.randn(got.shape)
    grads_got = torch.autograd.grad((got * weight).sum(), [*data, *ours.parameters()])
    grads_want = torch.autograd.grad((want * weight).sum(), [*data, *ref.parameters()])
    _close(grads_got, grads_want, rtol=1e-5, atol=1e-5)


CELL_FORWARD_ERRORS = {
    # PyTorch's module_error_inputs_torch_nn_RNN_GRU_Cell, then the other refusals of nn.GRUCell.
    "input size": (lambda: (torch.randn(3, 11), torch.randn(3, 20)), RuntimeError, "got 11,? expected 10"),
    "hidden size": (lambda: (torch.randn(3, 10), torch.randn(3, 21)), RuntimeError, ""),
    "batch": (lambda: (torch.randn(3, 10), torch.randn(5, 20)), RuntimeError, ""),
    "4-D hx": (lambda: (torch.randn(3, 10), torch.randn(3, 1, 1, 20)), ValueError,
               "Expected hidden to be 1D or 2D, got 4D instead"),
    "3-D input": (lambda: (torch.randn(2, 3, 10),), ValueError, "Expected input to be 1D or 2D, got 3D instead"),
    "0-D input": (lambda: (torch.tensor(1.0),), ValueError, "Expected input to be 1D or 2D, got 0D instead"),
    "2-D hx, unbatched": (lambda: (torch.randn(10), torch.randn(1, 20)), RuntimeError, ""),
    "1-D hx, batched": (lambda: (torch.randn(3, 10), torch.randn(20)), RuntimeError, ""),
    "input dtype": (lambda: (torch.randn(3, 10, dtype=torch.float64),), RuntimeError, ""),
    "hx dtype": (lambda: (torch.randn(3, 10), torch.randn(3, 20, dtype=torch.float64)), RuntimeError, ""),
}


@pytest.mark.parametrize("case", CELL_FORWARD_ERRORS)
@pytest.mark.parametrize("impl", CELLS)
def test_cell_forward_errors_are_pytorchs(impl: str, case: str) -> None:
    inputs, error, match = CELL_FORWARD_ERRORS[case]
    with pytest.raises(error, match=match):
        CELLS[impl](10, 20)(*inputs())


CELL_CONSTRUCTOR_ERRORS = {
    "hidden_size=-1": ((3, -1), RuntimeError),
    "input_size=-1": ((-1, 4), RuntimeError),
    "input_size=3.0": ((3.0, 4), TypeError),
    "hidden_size=4.0": ((3, 4.0), TypeError),
}


@pytest.mark.parametrize("case", CELL_CONSTRUCTOR_ERRORS)
@pytest.mark.parametrize("impl", CELLS)
def test_cell_constructor_errors_are_pytorchs(impl: str, case: str) -> None:
    args, error = CELL_CONSTRUCTOR_ERRORS[case]
    with pytest.raises(error):
        CELLS[impl](*args)


@pytest.mark.parametrize("impl", CELLS)
def test_cell_hidden_size_zero(impl: str) -> None:
    cell = CELLS[impl](3, 0)
    assert cell(torch.randn(2, 3)).shape == (2, 0) and cell(torch.randn(3)).shape == (0,)


@pytest.mark.parametrize("impl", CELLS)
def test_cell_input_size_zero(impl: str) -> None:
    assert CELLS[impl](0, 4)(torch.randn(2, 0)).shape == (2, 4)


@pytest.mark.parametrize("impl", CELLS)
def test_cell_scripted_traced_and_exported_match_nn_grucell(impl: str) -> None:
    x, h = torch.randn(3, 5), torch.randn(3, 10)
    x2, h2 = torch.randn(7, 5), torch.randn(7, 10)
    with torch.no_grad():
        want, want2 = _build(nn.GRUCell, 5, 10)(x, h), _build(nn.GRUCell, 5, 10)(x2, h2)
    scripted = torch.jit.script(RunCell(_build(CELLS[impl], 5, 10)))
    _close(scripted(x2, h2), want2)
    traced = torch.jit.trace(_build(CELLS[impl], 5, 10), (x, h))
    _close(traced(x2, h2), want2)  # another batch size than the traced one
    program = torch.export.export(_build(CELLS[impl], 5, 10), (x, h))
    _close(program.module()(x, h), want)


def test_reset_before_cell_traces_and_exports_but_does_not_script() -> None:
    cell = GRUCell(5, 10, reset_after=False)
    x, h = torch.randn(3, 5), torch.randn(3, 10)
    _close(torch.jit.trace(cell, (x, h))(x, h), cell(x, h))
    _close(torch.export.export(cell, (x, h)).module()(x, h), cell(x, h))
    with pytest.raises(RuntimeError, match="reset-after only"):
        torch.jit.script(RunCell(cell))
    with pytest.raises(ValueError, match="reset-before"):
        cell.to_torch()


@pytest.mark.parametrize("impl", _ours_differ(CELLS, OURS_CELL, "quantize_dynamic matches exact classes"))
def test_cell_quantize_dynamic_swaps_it(impl: str) -> None:
    from torch.ao.nn.quantized.dynamic import GRUCell as QuantizedGRUCell
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(nn.Sequential(CELLS[impl](3, 4)), {nn.GRUCell})
    assert isinstance(quantized[0], QuantizedGRUCell)


@pytest.mark.parametrize("impl", CELLS)
def test_cell_quantize_dynamic_after_to_torch_modules(impl: str) -> None:
    from torch.ao.nn.quantized.dynamic import GRUCell as QuantizedGRUCell
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_dynamic(to_torch_modules(nn.Sequential(_build(CELLS[impl], 3, 4))), {nn.GRUCell})
        want = quantize_dynamic(nn.Sequential(_build(nn.GRUCell, 3, 4)), {nn.GRUCell})
    assert isinstance(quantized[0], QuantizedGRUCell)
    x = torch.randn(2, 3)
    _close(quantized(x), want(x), rtol=0, atol=0)


@pytest.mark.parametrize("impl", CELLS)
def test_cell_module_conventions(impl: str) -> None:
    """state_dict both ways, repr, factory kwargs, .to, .half, reset_parameters, deepcopy, pickle,
    zero_grad and requires_grad_, each compared with nn.GRUCell."""
    ours, ref = _build(CELLS[impl], 3, 4, seed=1), _build(nn.GRUCell, 3, 4, seed=2)
    x = torch.randn(2, 3)
    ours.load_state_dict(ref.state_dict())
    _close(ours(x), ref(x))
    fresh = nn.GRUCell(3, 4)
    fresh.load_state_dict(ours.state_dict())
    _close(fresh(x), ours(x))
    assert repr(CELLS[impl](3, 4, bias=False)) == f"{CELLS[impl].__name__}(3, 4, bias=False)"
    assert all(p.device.type == "meta" for p in CELLS[impl](3, 4, device="meta").parameters())
    assert all(p.dtype == torch.float64 for p in CELLS[impl](3, 4, dtype=torch.float64).parameters())
    _close(_build(CELLS[impl], 3, 4).double()(x.double()), _build(nn.GRUCell, 3, 4).double()(x.double()),
           rtol=1e-12, atol=1e-12)
    half = _build(CELLS[impl], 3, 4).half()(x.half())
    assert half.dtype == torch.float16
    _close(half, _build(nn.GRUCell, 3, 4).half()(x.half()), rtol=1e-2, atol=1e-2)
    for module in (ours, ref):
        torch.manual_seed(7)
        module.reset_parameters()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters(), strict=True))
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    for twin in (copy.deepcopy(ours), torch.load(buffer, weights_only=False)):
        assert type(twin) is type(ours)
        _close(twin(x), ours(x))
    ours(x).sum().backward()
    assert all(p.grad is not None for p in ours.parameters())
    ours.zero_grad()
    assert all(p.grad is None for p in ours.parameters())
    assert not ours.requires_grad_(False)(x).requires_grad


@pytest.mark.parametrize("impl", CELLS)
def test_cell_gradcheck_float64(impl: str) -> None:
    cell = _build(CELLS[impl], 2, 3, dtype=torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x, h))


def test_reset_after_is_in_the_repr() -> None:
    assert repr(GRUCell(3, 4, reset_after=False)) == "GRUCell(3, 4, reset_after=False)"
