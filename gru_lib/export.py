"""ONNX export of the news classifier and of a GRU layer, checked in ONNX Runtime against PyTorch.

The classifier's ``forward`` packs its padded batch (``pack_padded_sequence``), which an ONNX graph cannot
hold. The exported graph computes the same function on the padded batch instead, with inputs ``ids`` (B, T)
int64 right-padded and ``lengths`` (B,) int64 (each in 1..T), output ``logits`` (B, C), B and T dynamic::

    x       = E[ids]                                         the embedding
    fwd     = GRU_fwd(x)                                     valid steps t < L never read a padded step (causal)
    bwd     = rev_L(GRU_bwd(rev_L(x)))                       rev_L reverses each row within its length
                                                             (gru_lib.lengths' index, a gather), so the reverse direction starts
                                                             at step L-1 from h = 0, as the packed GRU does
    o       = [fwd ; bwd] * mask                             zero at padded steps, as pad_packed_sequence leaves
    logits  = head(pool(o, lengths, x))                      the classifier's own masked pooling and head

layer after layer. Each direction is an ``nn.GRU`` holding that direction's weights (``weight_ih_l0_reverse``
...), so every GRU backend of the classifier (``torch``, ``gru_lib``, ``fast``: the same parameter names)
exports as ONNX ``GRU`` nodes; padding changes no logit, exactly as in PyTorch. :func:`check_onnx_classifier`
runs the file in ONNX Runtime and compares. Needs ``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gru_lib.errors import GruLibError
from gru_lib.lengths import length_mask, reverse_within_lengths_index
from gru_lib.models import NewsClassifier

__all__ = ["OPSET", "PaddedClassifier", "export_classifier", "check_onnx_classifier", "onnx_logits",
           "export_gru_layer", "ort_session", "missing_packages", "REQUIRED"]

OPSET = 18
REQUIRED: tuple[str, ...] = ("onnx", "onnxscript", "onnxruntime")  # the exporter's and the check's packages
_GRU_BACKENDS = ("torch", "gru_lib", "fast")


def _direction_gru(rnn: nn.Module, layer: int, suffix: str) -> nn.GRU:
    """A one-layer, one-direction, batch-first ``nn.GRU`` holding ``rnn``'s weights of ``layer`` and the
    direction ``suffix`` ("" forward, "_reverse")."""
    state = rnn.state_dict()
    w_ih = state[f"weight_ih_l{layer}{suffix}"]
    gru = nn.GRU(w_ih.shape[1], w_ih.shape[0] // 3, batch_first=True, bias=f"bias_ih_l{layer}{suffix}" in state)
    gru.load_state_dict({f"{name}_l0": state[f"{name}_l{layer}{suffix}"] for name in
                         ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if f"{name}_l{layer}{suffix}" in state})
    return gru.to(w_ih.dtype)


class PaddedClassifier(nn.Module):
    """``forward(ids, lengths) -> logits``: a :class:`NewsClassifier` (eval mode) without packing (module
    docstring). Built from the model's modules; the GRU weights are copied, one ``nn.GRU`` per direction."""

    def __init__(self, model: NewsClassifier) -> None:
        super().__init__()
        if model.backend not in _GRU_BACKENDS:
            raise GruLibError(f"export: the {model.backend!r} backend cannot be exported (use one of "
                              f"{', '.join(_GRU_BACKENDS)})")
        self.embedding, self.head = model.embedding, model.head
        self._pool = model.pool  # no parameters: masked mean / max / emb, the model's own code
        suffixes = ("", "_reverse")[: model.num_directions]
        layers = model.settings.num_layers
        self.directions = nn.ModuleList(
            nn.ModuleList(_direction_gru(model.rnn, k, s) for s in suffixes) for k in range(layers))

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding(ids)
        mask = length_mask(lengths, ids.shape[1])[:, :, None].to(x.dtype)
        index = reverse_within_lengths_index(lengths, ids.shape[1])[:, :, None]  # an involution
        out = x
        for layer in self.directions:
            outputs = [layer[0](out)[0]]
            if len(layer) == 2:  # expand(-1, -1, F): B and T stay symbolic in the graph
                backward = layer[1](out.gather(1, index.expand(-1, -1, out.shape[2])))[0]
                outputs.append(backward.gather(1, index.expand(-1, -1, backward.shape[2])))
            out = torch.cat(outputs, dim=-1) * mask
        return self.head(self._pool(out, lengths, x))


def _clear_rnn_dispatch_caches() -> None:
    """Forget the kernels PyTorch cached for ``aten::gru`` / ``aten::lstm``. The exporter swaps in a loop
    decomposition for them while it captures a graph and then restores the old kernel without clearing the
    op's dispatch cache (torch 2.13), so a second export in one process fixed T to the example's length."""
    for packet in (torch.ops.aten.gru, torch.ops.aten.lstm):
        for name in packet.overloads():
            cache = getattr(getattr(packet, name), "_dispatch_cache", None)
            if isinstance(cache, dict):
                cache.clear()


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """Around ``torch.onnx.export``: no gradients, the RNN kernels fresh (:func:`_clear_rnn_dispatch_caches`),
    and the exporter's progress lines, log records and warnings kept off the terminal (errors still raise)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    _clear_rnn_dispatch_caches()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            logger.setLevel(logging.ERROR)
            yield
    finally:
        logger.setLevel(level)
        _clear_rnn_dispatch_caches()


def _example_batch(vocab_size: int, batch: int = 3, steps: int = 7) -> tuple[Tensor, Tensor]:
    """A padded batch with distinct lengths (the exporter must not specialise B or T to the example's)."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([steps, steps - 2, 2][:batch], dtype=torch.long)
    ids = torch.randint(1, vocab_size, (batch, steps), generator=gen)
    return ids.masked_fill(~length_mask(lengths, steps), 0), lengths


def export_classifier(model: NewsClassifier, out: str | Path, *, opset: int = OPSET) -> Path:
    """Write ``model`` (any GRU backend, uni- or bidirectional, any depth and pooling) as an ONNX file with
    inputs ``ids`` (B, T) int64 and ``lengths`` (B,) int64, output ``logits`` (B, C), B and T dynamic
    (module docstring), from an eval-mode copy of ``model`` on the CPU (``model`` is left as it is). Returns
    the path."""
    model = copy.deepcopy(model).cpu().eval()
    ids, lengths = _example_batch(model.embedding.num_embeddings)
    wrapper = PaddedClassifier(model).eval()
    batch, steps = torch.export.Dim("batch", min=1), torch.export.Dim("steps", min=1)
    out = Path(out)
    with _exporting():
        program = torch.onnx.export(wrapper, (ids, lengths), dynamo=True, opset_version=opset,
                                    input_names=["ids", "lengths"], output_names=["logits"],
                                    dynamic_shapes={"ids": {0: batch, 1: steps}, "lengths": {0: batch}})
    program.save(str(out))  # one file: weights embedded (the classifier is small)
    return out


class _FirstOutput(nn.Module):
    """A recurrent layer's output sequence only (``layer(x)[0]``): the graph's one output."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)[0]


def export_gru_layer(layer: nn.GRU, out: str | Path, *, opset: int = OPSET) -> Path:
    """Write a GRU layer (``nn.GRU``, or a subclass such as :class:`gru_lib.GRU` and
    :class:`gru_lib.fast.FastGRU` that exports as one) as ONNX: input ``x`` laid out as the layer's ((T, B, D),
    or (B, T, D) when batch first), output ``y``, its output sequence; T and B dynamic. Returns the path.

    Through the TorchScript exporter (``dynamo=False``): it records ``aten::gru`` as one ONNX ``GRU`` node per
    layer that runs at any T and B. The dynamo exporter (torch 2.13) fixed a time-major layer's T and B to the
    example's in a Reshape after the node."""
    names = ("batch", "steps") if layer.batch_first else ("steps", "batch")
    shape = (3, 5, layer.input_size) if layer.batch_first else (5, 3, layer.input_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    axes = dict(enumerate(names))
    out = Path(out)
    with _exporting():
        torch.onnx.export(_FirstOutput(copy.deepcopy(layer).cpu().eval()), (x,), str(out), dynamo=False,
                          opset_version=opset, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes})
    return out


def missing_packages(names: Sequence[str] = REQUIRED) -> list[str]:
    """Which of the packages ``names`` are not installed (export needs :data:`REQUIRED`)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def ort_session(model: str | Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``model`` (a file, or a serialized model's bytes) with ``threads``
    intra-op threads (default: torch's count), one inter-op thread, sequential execution."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, ids: Sequence[Sequence[int]], *, batch_size: int = 256, pad_index: int = 0) -> Tensor:
    """Logits (N, C) of every sequence in ``ids`` from an exported classifier's ONNX Runtime ``session``,
    batched by length as :func:`gru_lib.evaluate.predict_logits` batches them, in the input order."""
    from gru_lib.text import collate_padded

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        tokens, lengths, _ = collate_padded([(ids[i], 0) for i in order[start: start + batch_size]], pad_index)
        (logits,) = session.run(None, {"ids": tokens.numpy(), "lengths": lengths.numpy()})
        chunks.append(torch.from_numpy(logits))
    out = torch.empty(len(ids), chunks[0].shape[1]) if chunks else torch.empty(0, 0)
    if chunks:
        out[torch.tensor(order)] = torch.cat(chunks)
    return out


def check_onnx_classifier(path: str | Path, model: NewsClassifier, ids: Sequence[Sequence[int]], *,
                          batch_size: int = 256, pad_index: int = 0) -> dict[str, Any]:
    """Run the exported ``path`` in ONNX Runtime and ``model`` in PyTorch on ``ids`` (token id lists):
    ``{"rows", "max_abs_diff"`` (of the logits), ``"same_predictions"`` (rows with the same argmax)``}``."""
    from gru_lib.evaluate import predict_logits

    torch_logits = predict_logits(model, ids, batch_size=batch_size, pad_index=pad_index)
    onnx_out = onnx_logits(ort_session(path), ids, batch_size=batch_size, pad_index=pad_index)
    same = int((torch_logits.argmax(dim=1) == onnx_out.argmax(dim=1)).sum())
    diff = float((torch_logits - onnx_out).abs().max()) if len(ids) else 0.0
    return {"rows": len(ids), "max_abs_diff": diff, "same_predictions": same}
