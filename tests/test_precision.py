"""gru_lib.precision: which precision runs where (one-line errors otherwise), what autocast computes in, and
the loss scaler the trainer's optimization_step drives: disabled for fp32/bf16, skipping inf/NaN steps for fp16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gru_lib.errors import GruLibError
from gru_lib.precision import PRECISIONS, Precision, resolve_precision


def test_cpu_precisions_and_their_properties() -> None:
    fp32, bf16 = resolve_precision("fp32", "cpu"), resolve_precision("bf16", torch.device("cpu"))
    assert (fp32.dtype, fp32.enabled, fp32.needs_scaler) == (torch.float32, False, False)
    assert (bf16.dtype, bf16.enabled, bf16.needs_scaler) == (torch.bfloat16, True, False)
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert not fp32.grad_scaler().is_enabled() and not bf16.grad_scaler().is_enabled()


@pytest.mark.parametrize("name,device,message", [
    ("fp16", "cpu", "--precision fp16 needs a CUDA device"),
    ("fp8", "cpu", "--precision 'fp8' is not one of fp32, bf16, fp16"),
    ("bf16", "meta", "--precision bf16 is supported on cpu and cuda only, not on meta"),
])
def test_unsupported_combinations_are_one_line_errors(name: str, device: str, message: str) -> None:
    with pytest.raises(GruLibError) as caught:
        resolve_precision(name, device)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_fp32_on_other_devices_is_allowed() -> None:
    assert resolve_precision("fp32", "meta") == Precision("fp32", "meta")


def test_autocast_computes_products_in_its_dtype_and_fp32_leaves_them_alone() -> None:
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with resolve_precision("bf16", "cpu").autocast():
        assert layer(x).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # parameters stay float32


def test_an_enabled_scaler_skips_a_step_with_an_inf_gradient_and_lowers_its_scale() -> None:
    # fp16 needs CUDA; its scaler's logic is the same on the CPU, which is where this test can run.
    scaler = Precision("fp16", "cpu").grad_scaler()
    assert scaler.is_enabled()
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scale = scaler.get_scale()
    scaler.scale((weight * torch.tensor([1.0, float("inf"), 1.0])).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(weight.detach(), torch.ones(3)) and scaler.get_scale() < scale
    optimizer.zero_grad()
    scaler.scale(weight.sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 0.9))  # unscaled before the step
