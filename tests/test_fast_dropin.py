"""FastGRU goes wherever nn.GRU goes: torch.func (grad, vmap, jacrev, jacfwd, hessian, functional_call), forward
mode, double backward (gradient penalties, Hessian-vector products), float16 and bfloat16 parameters. Each test
compares with nn.GRU holding the same weights, on the C++ path and on the PyTorch fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gru_lib import fast
from gru_lib.fast import FastGRU, fast_gru_scan

F64 = torch.float64


@pytest.fixture(params=["cpp", "torch"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """"cpp": the C++ loop (float32/float64 on the CPU); "torch": the PyTorch fallback (GRU_LIB_NO_EXTENSION=1)."""
    if request.param == "torch":
        monkeypatch.setenv("GRU_LIB_NO_EXTENSION", "1")
    else:
        monkeypatch.delenv("GRU_LIB_NO_EXTENSION", raising=False)
    assert fast.backend_name("cpu", F64) == request.param, fast.extension_error()
    return request.param


def pair(dtype: torch.dtype = F64, **options: Any) -> tuple[nn.GRU, FastGRU]:
    """nn.GRU and FastGRU with the same weights (input 3, hidden 4 unless ``options`` say otherwise)."""
    options = {"input_size": 3, "hidden_size": 4} | options
    torch.manual_seed(0)
    ref = nn.GRU(**options).to(dtype)
    model = FastGRU(**options).to(dtype)
    model.load_state_dict(ref.state_dict())
    return ref, model


def data(*shape: int, dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_all_close(got: Any, want: Any, tol: float = 1e-10) -> None:
    """Tensors, or dicts / tuples of them, equal within ``tol``; a missing gradient (None) fails."""
    if isinstance(want, dict):
        assert list(got) == list(want)
        got, want = list(got.values()), list(want.values())
    for a, b in zip(got, want, strict=True) if isinstance(want, (list, tuple)) else [(got, want)]:
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def loss_of(module: nn.Module, params: dict[str, Tensor], x: Tensor, h0: Tensor | None = None) -> Tensor:
    """A loss that reads every output position and the final state (so every gradient path counts)."""
    out, h_n = functional_call(module, params, (x, h0))
    return (out.sin() * torch.linspace(-1, 1, out.size(-1), dtype=out.dtype)).sum() + (h_n * h_n).sum()


def params_of(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


# ---- torch.func -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional,bias", [(True, True), (False, False)])
def test_func_grad_matches_nn_gru(path: str, bidirectional: bool, bias: bool) -> None:
    ref, model = pair(num_layers=2, bidirectional=bidirectional, bias=bias)
    x, h0 = data(5, 2, 3), data(2 * (2 if bidirectional else 1), 2, 4, seed=2)
    grad = torch.func.grad(loss_of, argnums=(1, 2, 3))
    assert_all_close(grad(model, params_of(model), x, h0), grad(ref, params_of(ref), x, h0))


def test_vmap_forward_matches_each_slice(path: str) -> None:
    """vmap over a leading axis of the input (and of h0): the same as running nn.GRU on each slice."""
    ref, model = pair(num_layers=2, bidirectional=True, batch_first=True)
    xs, h0s = data(3, 2, 5, 3), data(3, 4, 2, 4, seed=2)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode):
            got = torch.vmap(model)(xs, h0s)
            want = [ref(x, h0) for x, h0 in zip(xs, h0s)]
            shared = torch.vmap(model, in_dims=(0, None))(xs, h0s[0])[0]  # the same h0 for every slice
        assert_all_close(got[0], torch.stack([o for o, _ in want]))
        assert_all_close(got[1], torch.stack([h for _, h in want]))
        assert_all_close(shared, torch.stack([ref(x, h0s[0])[0] for x in xs]))


def test_per_sample_gradients_vmap_grad(path: str) -> None:
    """vmap(grad(f)) over the batch: each sequence's own gradients, as nn.GRU gives them one sequence at a time."""
    ref, model = pair(bidirectional=True)
    batch = data(6, 5, 3)  # six sequences (T=5, D=3), each run as a batch of one

    def one(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return loss_of(module, params, x.unsqueeze(1))

    got = torch.vmap(torch.func.grad(one, argnums=1), in_dims=(None, None, 0))(model, params_of(model), batch)
    each = [torch.func.grad(one, argnums=1)(ref, params_of(ref), x) for x in batch]
    assert_all_close(got, {name: torch.stack([g[name] for g in each]) for name in each[0]})


def test_vmap_over_stacked_weights_ensemble(path: str) -> None:
    """vmap over the weights too (an ensemble of three models): outputs and gradients per member."""
    members = [pair() for _ in range(3)]
    for k, (ref, model) in enumerate(members):  # distinct weights per member
        with torch.no_grad():
            for p_ref, p in zip(ref.parameters(), model.parameters()):
                p_ref.add_(0.1 * k)
                p.add_(0.1 * k)
    stacked, _ = torch.func.stack_module_state([model for _, model in members])
    x = data(5, 2, 3)
    base = members[0][1]
    got = torch.vmap(lambda p: functional_call(base, p, (x,))[0])(stacked)
    assert_all_close(got, torch.stack([ref(x)[0] for ref, _ in members]))
    grads = torch.vmap(torch.func.grad(lambda p: loss_of(base, p, x)))(stacked)
    each = [torch.func.grad(lambda p, m=ref: loss_of(m, p, x))(params_of(ref)) for ref, _ in members]
    assert_all_close(grads, {name: torch.stack([g[name] for g in each]) for name in each[0]})


def test_jacrev_jacfwd_and_hessian_match_nn_gru(path: str) -> None:
    ref, model = pair(bidirectional=True)
    x = data(4, 2, 3)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        assert_all_close(transform(lambda v: model(v)[1])(x), transform(lambda v: ref(v)[1])(x))

    def energy(module: nn.Module) -> Callable[[Tensor], Tensor]:
        params = params_of(module)
        return lambda w: functional_call(module, params | {"weight_hh_l0": w}, (x,))[1].pow(2).sum()

    w = params_of(ref)["weight_hh_l0"]
    assert_all_close(torch.func.hessian(energy(model))(w), torch.func.hessian(energy(ref))(w))


def test_forward_mode_ad_matches_nn_gru(path: str) -> None:
    ref, model = pair(num_layers=2)
    x, tangent = data(5, 2, 3), data(5, 2, 3, seed=4)
    results = []
    for module in (ref, model):
        with fwAD.dual_level():
            out, h_n = module(fwAD.make_dual(x, tangent))
            results.append([fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(h_n).tangent])
    assert_all_close(results[1], results[0])


@pytest.mark.parametrize("reverse,bias", [(False, True), (True, False)])
def test_gradcheck_batched_and_forward_mode(path: str, reverse: bool, bias: bool) -> None:
    """gradcheck with the batched-gradient check (vmap over backward) and forward mode, padded lengths."""
    args = [data(4, 3, 3), data(3, 2, seed=2), data(6, 3, seed=3) * 0.5, data(6, 2, seed=4) * 0.5]
    args += [data(6, seed=5), data(6, seed=6)] if bias else []
    args = [a.requires_grad_() for a in args]
    lengths = torch.tensor([4, 2, 3])

    def scan(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, *b: Tensor) -> tuple[Tensor, Tensor]:
        b_ih, b_hh = b if bias else (None, None)
        return fast_gru_scan(x, h0, lengths, w_ih, w_hh, b_ih, b_hh, reverse)

    assert torch.autograd.gradcheck(
        scan, args, check_batched_grad=True, check_forward_ad=True, check_batched_forward_grad=True
    )


# ---- double backward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_gradgradcheck_float64(path: str, reverse: bool) -> None:
    args = [data(4, 3, 3), data(3, 2, seed=2), data(6, 3, seed=3) * 0.5, data(6, 2, seed=4) * 0.5]
    args += [data(6, seed=5), data(6, seed=6)]
    args = [a.requires_grad_() for a in args]
    lengths = torch.tensor([4, 1, 3])

    def scan(*a: Tensor) -> tuple[Tensor, Tensor]:
        return fast_gru_scan(a[0], a[1], lengths, *a[2:], reverse)

    assert torch.autograd.gradgradcheck(scan, args, check_batched_grad=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (F64, 1e-10)])
def test_gradient_penalty_step_matches_nn_gru(path: str, dtype: torch.dtype, tol: float) -> None:
    """loss + |d loss / d x|^2 (a gradient penalty), one SGD step: the same new weights as nn.GRU's."""
    new_weights = []
    for module in pair(dtype, num_layers=2, bidirectional=True, batch_first=True):
        x = data(2, 5, 3, dtype=dtype).requires_grad_()
        packed = pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True)
        out, h_n = module(packed)
        loss = pad_packed_sequence(out, batch_first=True)[0].tanh().sum() + h_n.pow(2).sum()
        (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
        (loss + grad_x.pow(2).sum()).backward()
        torch.optim.SGD(module.parameters(), lr=0.1).step()
        new_weights.append([p.detach().clone() for p in module.parameters()])
    assert_all_close(new_weights[1], new_weights[0], tol)


def test_hessian_vector_product_matches_nn_gru(path: str) -> None:
    products = []
    for module in pair(num_layers=2):
        x = data(5, 2, 3)
        params = list(module.parameters())
        out, h_n = module(x)
        grads = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), params, create_graph=True)
        vector = [data(*p.shape, seed=10 + i) for i, p in enumerate(params)]
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        products.append(torch.autograd.grad(dot, params))
    assert all(p is not None for p in products[1])
    assert_all_close(products[1], products[0])


def test_create_graph_gradients_equal_the_hand_written_ones(path: str) -> None:
    """The differentiable backward (create_graph=True) and the hand-written BPTT give the same gradients."""
    _, model = pair(bidirectional=True)
    x = data(6, 3, 3).requires_grad_()
    results = []
    for create_graph in (False, True):
        out, h_n = model(pack_padded_sequence(x, torch.tensor([6, 4, 2])))
        loss = out.data.sin().sum() + h_n.sum()
        results.append(torch.autograd.grad(loss, [x, *model.parameters()], create_graph=create_graph))
    assert_all_close(results[1], results[0], 1e-12)


def test_ordinary_backward_keeps_the_hand_written_bptt(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain float32 training step never runs the differentiable (slower) derivative path."""

    def forbidden(*_: Any) -> None:
        raise AssertionError("the ordinary backward took the differentiable path")

    monkeypatch.setattr(fast, "_differentiable_backward", forbidden)
    ref, model = pair(torch.float32, num_layers=2, bidirectional=True)
    grads = []
    for module in (ref, model):
        out, h_n = module(data(7, 2, 3, dtype=torch.float32))
        (out.sum() + h_n.sum()).backward()
        grads.append([p.grad for p in module.parameters()])
    assert_all_close(grads[1], grads[0], 1e-5)


@pytest.mark.parametrize("use", ["output", "h_n"])
def test_gradient_of_one_output_only(path: str, use: str) -> None:
    """A loss on the output alone, or on h_n alone (a classifier's case): the other gradient is absent."""
    grads = []
    for module in pair(bidirectional=True):
        out, h_n = module(data(5, 2, 3))
        (out if use == "output" else h_n).pow(2).sum().backward()
        grads.append([p.grad for p in module.parameters()])
    assert_all_close(grads[1], grads[0])


# ---- float16 and bfloat16 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_low_precision_matches_nn_gru(path: str, dtype: torch.dtype, tol: float) -> None:
    """float16 / bfloat16 parameters on the CPU: outputs and gradients in that dtype, as near nn.GRU's (and the
    float64 result) as that dtype's rounding allows: ``tol`` of each tensor's largest value."""
    assert fast.backend_name("cpu", dtype) == "torch"  # the C++ loop computes in float32 / float64 only
    options = {"input_size": 5, "hidden_size": 7, "num_layers": 2, "bidirectional": True}
    ref64, _ = pair(F64, **options)
    ref, model = (module_class(**options) for module_class in (nn.GRU, FastGRU))
    for module in (ref, model):
        module.load_state_dict(ref64.state_dict())
        module.to(dtype)
    x = data(30, 4, 5)
    results = []
    for module, module_dtype in ((ref64, F64), (ref, dtype), (model, dtype)):
        xs = x.to(module_dtype).detach().requires_grad_()
        out, h_n = module(pack_padded_sequence(xs, torch.tensor([30, 20, 7, 1]), enforce_sorted=False))
        out = pad_packed_sequence(out)[0]
        assert out.dtype == module_dtype and h_n.dtype == module_dtype
        (out.float().sin().sum() + h_n.float().sum()).backward()
        results.append([out, h_n, xs.grad] + [p.grad for p in module.parameters()])
    exact, theirs, ours = results
    for want, their, our in zip(exact, theirs, ours, strict=True):
        assert our.dtype == dtype
        scale = want.abs().max().item()
        torch.testing.assert_close(our.double(), their.double(), atol=tol * scale, rtol=0)
        torch.testing.assert_close(our.double(), want, atol=tol * scale, rtol=0)


# ---- graph capture (inherited from gru_lib.layer.GRU: nn.GRU's fused operator, the same Parameters) ----------


def test_trace_and_export_compute_nn_grus_function() -> None:
    """Tracing and export record nn.GRU.forward (aten::gru) with FastGRU's Parameters, not the time loop."""
    ref, model = pair(torch.float32, num_layers=2, bidirectional=True)
    x, longer = data(5, 2, 3, dtype=torch.float32), data(9, 2, 3, dtype=torch.float32, seed=3)
    traced = torch.jit.trace(model, (x,))
    exported = torch.export.export(model, (x,)).module()
    assert_all_close(traced(longer), ref(longer), 1e-6)  # a trace runs at any sequence length
    assert_all_close(exported(x), ref(x), 1e-6)
