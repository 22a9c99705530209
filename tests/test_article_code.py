"""The facts that book/claims.md (claim 6) states about the source article's code (its section 4.3), checked.

The code below is the article's, unchanged apart from layout: the claims page says it fails, and how; if a future
torch made it run, these tests would fail and the page would have to change."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


class ArticleGRU(nn.Module):
    """The article's ``GRU`` (section 4.3), verbatim."""

    def __init__(self, h0, c0, h1):
        super(ArticleGRU, self).__init__()
        self.h0 = h0
        self.c0 = c0
        self.h1 = h1
        self.hidden2 = self.hidden1
        self.hidden3 = self.hidden2

    def forward(self, inputs, hidden):
        c, hidden2 = self.h0, self.hidden2
        c_new = self.c0 * c + self.h1 * self.hidden2
        c_control = self.h0 * c + self.c0 * self.hidden1
        h_2 = c_new + self.h1 * hidden2
        h_3 = c_new + self.h2 * hidden  # noqa: F841 (the article's)
        outputs = torch.sigmoid(h_2)
        loss = inputs * (1 - outputs)
        loss.backward()
        self.h2, self.h0, self.c0, self.hidden1, self.hidden2 = hidden, h_2, c_control, c_new, hidden2
        return outputs, (self.h2, self.h0, self.c0, self.hidden1, self.hidden2)


# The article's "parameters" (section 4.1).
H0 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float32)


def test_constructing_the_model_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="hidden1"):
        ArticleGRU(H0, H0.clone(), H0.clone())


def test_its_states_are_not_parameters() -> None:
    """Even with the missing attribute supplied, h0, c0 and h1 are plain tensors: no optimiser sees them."""

    class Patched(ArticleGRU):
        hidden1 = torch.zeros(6)

    model = Patched(H0, H0.clone(), H0.clone())
    assert list(model.parameters()) == []


def test_its_example_data_cannot_be_built() -> None:
    h = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float32)
    with pytest.raises(RuntimeError, match="invalid for input of size 6"):
        h.view(128, 1)
    with pytest.raises(ValueError, match="expected sequence of length"):
        torch.tensor(
            [
                [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                [0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            ],
            dtype=torch.float32,
        )


def test_forward_reads_an_attribute_never_set() -> None:
    class Patched(ArticleGRU):
        hidden1 = torch.zeros(6)

    model = Patched(H0, H0.clone(), H0.clone())
    with pytest.raises(AttributeError, match="h2"):
        model(torch.ones(6), torch.zeros(6))


def test_backward_on_its_non_scalar_loss_raises() -> None:
    """With both missing attributes supplied and a state that needs grad, ``loss.backward()`` on the elementwise
    "loss" still fails."""

    class Patched(ArticleGRU):
        hidden1 = torch.zeros(6)
        h2 = torch.zeros(6)

    model = Patched(H0.clone().requires_grad_(), H0.clone(), H0.clone())
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        model(torch.ones(6), torch.zeros(6))
