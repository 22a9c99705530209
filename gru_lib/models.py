"""Chapter 5: the news classifier. Token ids -> embedding -> recurrent layers -> masked pooling -> linear.

For a right-padded batch ``ids`` (B, T) with ``lengths`` (B,)::

    e_t  = E[ids_t]                                   embedding (row ``padding_idx`` stays zero)
    o_t  = GRU(e_1 .. e_L)_t                          over the valid steps only (a PackedSequence)
    mean = (1 / L) * sum_{t < L} o_t                  masked mean
    emb  = (1 / L) * sum_{t < L} e_t                  masked mean of the embeddings (a bag-of-words skip path)
    max  = max_{t < L} o_t                            masked max (per feature)
    last = [forward o_{L-1} ; reverse o_0]            the final state of each direction
    logits = W dropout([pooled features]) + b

Every pooled feature reads only the valid steps, and the recurrent backends run packed (or, for minGRU, a
causal scan over right padding), so padding never changes a prediction: a text gives the same logits alone
and inside a padded batch (``tests/test_models.py`` checks it for every backend).

Backends (the same ``state_dict`` names for the first three, PyTorch's ``rnn.weight_ih_l0`` ...):
``"torch"`` :class:`torch.nn.GRU`; ``"gru_lib"`` :class:`gru_lib.layer.GRU` (chapter 3); ``"fast"``
:class:`gru_lib.fast.FastGRU` (chapter 6); ``"mingru"`` a stack of :class:`gru_lib.MinGRU` layers (chapter 7).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gru_lib.cell import GRUGates, gru_cell_gates

__all__ = ["BACKENDS", "POOLINGS", "NewsClassifier", "parse_pooling"]

BACKENDS: tuple[str, ...] = ("torch", "gru_lib", "fast", "mingru")
POOLINGS: tuple[str, ...] = ("mean", "max", "last", "emb")


def parse_pooling(pooling: str) -> tuple[str, ...]:
    """``"mean+max"`` -> ``("mean", "max")``; each part one of :data:`POOLINGS`, no repeats."""
    parts = tuple(part.strip() for part in pooling.split("+"))
    if not parts or any(p not in POOLINGS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"pooling {pooling!r}: expected one or more of {', '.join(POOLINGS)} joined by '+'")
    return parts


def _gru_class(backend: str) -> type[nn.Module]:
    if backend == "torch":
        return nn.GRU
    if backend == "gru_lib":
        return importlib.import_module("gru_lib.layer").GRU
    if backend == "fast":
        return importlib.import_module("gru_lib.fast").FastGRU
    raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def _reverse_within_lengths(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of the batch-first ``x`` (B, T, D) within its length; padding stays in place.
    Applying it twice is the identity."""
    steps = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    return x.gather(1, index[:, :, None].expand_as(x))


class _MinGRUStack(nn.Module):
    """Stacked (optionally bidirectional) minGRU layers over a right-padded, batch-first batch.

    minGRU's recurrence is causal, so with right padding the outputs at valid steps never see the padding;
    the reverse direction runs on each sequence reversed within its length, and its outputs are reversed back.
    Dropout between layers, as in ``nn.GRU``. Parameters: ``layers.{l}.{fwd|bwd}``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        min_gru = importlib.import_module("gru_lib").MinGRU
        directions = ("fwd", "bwd") if bidirectional else ("fwd",)
        self.layers = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * len(directions)
            self.layers.append(nn.ModuleDict({d: min_gru(size, hidden_size, batch_first=True) for d in directions}))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            outputs = [layer["fwd"](x)[0]]
            if "bwd" in layer:
                outputs.append(_reverse_within_lengths(layer["bwd"](_reverse_within_lengths(x, lengths))[0], lengths))
            x = torch.cat(outputs, dim=-1)
        return x


class NewsClassifier(nn.Module):
    """Embedding -> GRU (``backend``) -> masked ``pooling`` -> dropout -> linear (module docstring).

    ``forward(ids, lengths) -> logits``: ``ids`` (B, T) int64 right-padded with ``padding_idx``, ``lengths``
    (B,) int64 (any order, each >= 1); returns (B, ``num_classes``). Dropout ``dropout`` acts on the
    embeddings, between recurrent layers and on the pooled features. ``config()`` returns the constructor
    arguments (plain types) so a checkpoint can rebuild the model.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 4,
        embed_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.5,
        backend: str = "torch",
        pooling: str = "mean+max",
        padding_idx: int = 0,
        word_dropout: float = 0.0,
        unk_idx: int = 1,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.pools = parse_pooling(pooling)
        self._config: dict[str, Any] = {
            "vocab_size": vocab_size,
            "num_classes": num_classes,
            "embed_dim": embed_dim,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "bidirectional": bidirectional,
            "dropout": dropout,
            "backend": backend,
            "pooling": "+".join(self.pools),
            "padding_idx": padding_idx,
            "word_dropout": word_dropout,
            "unk_idx": unk_idx,
        }
        self.word_dropout = word_dropout
        self.unk_idx = unk_idx
        self.backend = backend
        self.num_directions = 2 if bidirectional else 1
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        inter_layer = dropout if num_layers > 1 else 0.0
        if backend == "mingru":
            self.rnn: nn.Module = _MinGRUStack(embed_dim, hidden_size, num_layers, bidirectional, inter_layer)
        else:
            self.rnn = _gru_class(backend)(
                embed_dim, hidden_size, num_layers=num_layers, batch_first=True, dropout=inter_layer,
                bidirectional=bidirectional,
            )
        features = sum(embed_dim if p == "emb" else self.num_directions * hidden_size for p in self.pools)
        self.head = nn.Linear(features, num_classes)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def embed(self, ids: Tensor) -> Tensor:
        """Embeddings (B, T, E) after word dropout (training only: each token becomes ``<unk>`` with
        probability ``word_dropout``) and dropout."""
        if self.training and self.word_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.word_dropout
            ids = ids.masked_fill(drop & (ids != self.embedding.padding_idx), self.unk_idx)
        return self.dropout(self.embedding(ids))

    def sequence_outputs(self, ids: Tensor, lengths: Tensor, x: Tensor | None = None) -> Tensor:
        """The last recurrent layer's outputs (B, T, num_directions * H), zero at padded steps
        (``x``: the embeddings, when already computed)."""
        x = self.embed(ids) if x is None else x
        if self.backend == "mingru":
            out = self.rnn(x, lengths)
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
            return out * mask[:, :, None].to(out.dtype)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out

    def pool(self, out: Tensor, lengths: Tensor, x: Tensor | None = None) -> Tensor:
        """Masked pooling of ``out`` (B, T, F) over each sequence's valid steps -> (B, features); ``x`` (B, T,
        E): the embeddings, needed by the ``emb`` pooling."""
        lengths = lengths.to(out.device)
        valid = (torch.arange(out.shape[1], device=out.device)[None, :] < lengths[:, None])[:, :, None]
        features = []
        for kind in self.pools:
            if kind == "emb":
                if x is None:
                    raise ValueError("pool: the 'emb' pooling needs the embeddings x")
                features.append(x.masked_fill(~valid, 0.0).sum(dim=1) / lengths[:, None].to(x.dtype))
            elif kind == "mean":
                features.append(out.masked_fill(~valid, 0.0).sum(dim=1) / lengths[:, None].to(out.dtype))
            elif kind == "max":
                features.append(out.masked_fill(~valid, float("-inf")).amax(dim=1))
            else:  # last: forward direction at step L-1, reverse direction at step 0
                index = (lengths - 1)[:, None, None].expand(-1, 1, out.shape[2])
                last = out.gather(1, index)[:, 0]
                if self.num_directions == 2:
                    last = torch.cat([last[:, : self.hidden_size], out[:, 0, self.hidden_size :]], dim=-1)
                features.append(last)
        return torch.cat(features, dim=-1)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(ids)
        return self.head(self.dropout(self.pool(self.sequence_outputs(ids, lengths, x), lengths, x)))

    @torch.no_grad()
    def gate_trace(self, ids: Tensor) -> GRUGates:
        """The gates of the first GRU layer's forward direction at each step of one text ``ids`` (T,):
        ``r``, ``z``, ``n`` and ``h``, each (T, H), computed with :func:`gru_lib.cell.gru_cell_gates` from the
        layer's own weights (``weight_ih_l0`` ...), in the model's current (usually eval) mode."""
        if self.backend == "mingru":
            raise ValueError("gate_trace: the mingru backend has no reset gate; use a GRU backend")
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"gate_trace: expected the ids of one text, shape (T,) with T >= 1, got {tuple(ids.shape)}")
        x = self.embedding(ids.to(self.embedding.weight.device))
        rnn = self.rnn
        h = x.new_zeros(self.hidden_size)
        steps = []
        for x_t in x:
            gates = gru_cell_gates(x_t, h, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            steps.append(gates)
            h = gates.h
        return GRUGates(*(torch.stack(parts) for parts in zip(*steps)))
