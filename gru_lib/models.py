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
For comparison (the interlude after chapter 3), the same packed interface around other cells: ``"rnn"``
:class:`torch.nn.RNN` (tanh) and ``"lstm"`` :class:`torch.nn.LSTM` (which returns ``(output, (h_n, c_n))``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gru_lib.cell import GRUGates, gru_gate_trace
from gru_lib.config import BACKENDS, MODEL_FIELDS, POOLINGS, ModelConfig, parse_pooling
from gru_lib.fast import FastGRU
from gru_lib.layer import GRU
from gru_lib.lengths import length_mask, reverse_within_lengths
from gru_lib.mingru import MinGRU

__all__ = ["BACKENDS", "POOLINGS", "ModelConfig", "NewsClassifier", "parse_pooling"]  # settings: gru_lib.config

_RECURRENT_CLASSES: dict[str, type[nn.Module]] = {
    "torch": nn.GRU, "gru_lib": GRU, "fast": FastGRU, "rnn": nn.RNN, "lstm": nn.LSTM,
}
_GRU_BACKENDS: tuple[str, ...] = ("torch", "gru_lib", "fast")


class _MinGRUStack(nn.Module):
    """Stacked (optionally bidirectional) minGRU layers over a right-padded, batch-first batch.

    minGRU's recurrence is causal, so with right padding the outputs at valid steps never see the padding;
    the reverse direction runs on each sequence reversed within its length, and its outputs are reversed back.
    Dropout between layers, as in ``nn.GRU``. Parameters: ``layers.{l}.{fwd|bwd}``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, dropout: float):
        super().__init__()
        directions = ("fwd", "bwd") if bidirectional else ("fwd",)
        self.layers = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * len(directions)
            self.layers.append(nn.ModuleDict({d: MinGRU(size, hidden_size, batch_first=True) for d in directions}))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            if index > 0:
                x = self.dropout(x)
            outputs = [layer["fwd"](x)[0]]
            if "bwd" in layer:
                outputs.append(reverse_within_lengths(layer["bwd"](reverse_within_lengths(x, lengths))[0], lengths))
            x = torch.cat(outputs, dim=-1)
        return x


class NewsClassifier(nn.Module):
    """Embedding -> GRU (``backend``) -> masked ``pooling`` -> dropout -> linear (module docstring).

    ``NewsClassifier(vocab_size, config)`` with a :class:`ModelConfig`; settings given by name replace the
    config's (``NewsClassifier(v, hidden_size=32)`` is ``NewsClassifier(v, ModelConfig(hidden_size=32))``).
    ``forward(ids, lengths) -> logits``: ``ids`` (B, T) int64 right-padded with ``padding_idx``, ``lengths``
    (B,) int64 (any order, each >= 1); returns (B, ``num_classes``). ``config()`` returns every constructor
    argument as plain types, so ``NewsClassifier(**model.config())`` rebuilds the model (checkpoints).
    """

    def __init__(
        self,
        vocab_size: int,
        config: ModelConfig | None = None,
        *,
        num_classes: int = 4,
        padding_idx: int = 0,
        unk_idx: int = 1,
        **settings: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(settings) - MODEL_FIELDS)
        if unknown:
            raise TypeError(f"NewsClassifier: unknown setting(s) {', '.join(unknown)}")
        self.settings = dataclasses.replace(config or ModelConfig(), **settings)
        self._data = {"vocab_size": vocab_size, "num_classes": num_classes, "padding_idx": padding_idx,
                      "unk_idx": unk_idx}
        cfg = self.settings
        self.pools = parse_pooling(cfg.pooling)
        self.word_dropout = cfg.word_dropout
        self.unk_idx = unk_idx
        self.backend = cfg.backend
        self.num_directions = 2 if cfg.bidirectional else 1
        self.hidden_size = cfg.hidden_size
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rnn = self._recurrent_layers(cfg)
        features = sum(cfg.embed_dim if p == "emb" else self.num_directions * cfg.hidden_size for p in self.pools)
        self.head = nn.Linear(features, num_classes)

    @staticmethod
    def _recurrent_layers(cfg: ModelConfig) -> nn.Module:
        inter_layer = cfg.dropout if cfg.num_layers > 1 else 0.0
        if cfg.backend == "mingru":
            return _MinGRUStack(cfg.embed_dim, cfg.hidden_size, cfg.num_layers, cfg.bidirectional, inter_layer)
        return _RECURRENT_CLASSES[cfg.backend](
            cfg.embed_dim, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True, dropout=inter_layer,
            bidirectional=cfg.bidirectional,
        )

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as plain types: the data's sizes and every :class:`ModelConfig` field."""
        return {**self._data, **dataclasses.asdict(self.settings)}

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
            mask = length_mask(lengths.to(ids.device), ids.shape[1])
            return out * mask[:, :, None].to(out.dtype)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return out

    def pool(self, out: Tensor, lengths: Tensor, x: Tensor | None = None) -> Tensor:
        """Masked pooling of ``out`` (B, T, F) over each sequence's valid steps -> (B, features); ``x`` (B, T,
        E): the embeddings, needed by the ``emb`` pooling."""
        lengths = lengths.to(out.device)
        valid = length_mask(lengths, out.shape[1])[:, :, None]
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
        ``r``, ``z``, ``n`` and ``h``, each (T, H), computed with :func:`gru_lib.cell.gru_gate_trace` from the
        layer's own weights (``weight_ih_l0`` ...), in the model's current (usually eval) mode."""
        if self.backend not in _GRU_BACKENDS:
            raise ValueError(f"gate_trace: the {self.backend} backend has no GRU gates; use one of "
                             f"{', '.join(_GRU_BACKENDS)}")
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"gate_trace: expected the ids of one text, shape (T,) with T >= 1, got {tuple(ids.shape)}")
        x = self.embedding(ids.to(self.embedding.weight.device))
        rnn = self.rnn
        return gru_gate_trace(x, x.new_zeros(self.hidden_size), rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                              rnn.bias_hh_l0)
