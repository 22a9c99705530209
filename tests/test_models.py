"""NewsClassifier: padding never changes a prediction (every backend), pooling, gates, state_dict layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gru_lib.lengths import length_mask, reverse_within_lengths, reverse_within_lengths_index
from gru_lib.models import BACKENDS, ModelConfig, NewsClassifier, parse_pooling


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(lengths: list[int], vocab: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(2, vocab, (length,), generator=generator)
    return ids, torch.tensor(lengths)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling,bidirectional,layers", [("mean+max", True, 1), ("last+mean", True, 2),
                                                          ("max+last+emb", False, 1)])
def test_padding_never_changes_a_prediction(backend: str, pooling: str, bidirectional: bool, layers: int) -> None:
    torch.manual_seed(0)
    model = NewsClassifier(50, embed_dim=8, hidden_size=6, num_layers=layers, bidirectional=bidirectional,
                           backend=backend, pooling=pooling, dropout=0.3).eval()
    ids, lengths = _batch([3, 9, 1, 6, 9], 50, torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = model(ids, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone = model(ids[row : row + 1, :length], lengths[row : row + 1])
            torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=1e-5)
            # Garbage (not just pad ids) after the end changes nothing either.
            noisy = ids[row : row + 1].clone()
            noisy[0, length:] = 7
            torch.testing.assert_close(model(noisy, lengths[row : row + 1]), alone, atol=1e-5, rtol=1e-5)


def test_backends_share_weights_and_compute_the_same_function() -> None:
    torch.manual_seed(0)
    reference = NewsClassifier(40, embed_dim=8, hidden_size=5, num_layers=2, backend="torch").eval()
    ids, lengths = _batch([4, 7, 2], 40, torch.Generator().manual_seed(2))
    for backend in ("gru_lib", "fast"):
        other = NewsClassifier(40, embed_dim=8, hidden_size=5, num_layers=2, backend=backend).eval()
        assert list(other.state_dict()) == list(reference.state_dict())
        other.load_state_dict(reference.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(other(ids, lengths), reference(ids, lengths), atol=1e-5, rtol=1e-5)


def test_pooling_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    model = NewsClassifier(30, embed_dim=4, hidden_size=3, pooling="mean+max+last", dropout=0.0).eval()
    ids, lengths = _batch([5, 2], 30, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model.sequence_outputs(ids, lengths)
        pooled = model.pool(out, lengths)
        gru = model.rnn
        for row, length in enumerate(lengths.tolist()):
            o, h_n = gru(model.embedding(ids[row, :length])[None])
            o = o[0]
            expected = torch.cat([o.mean(0), o.max(0).values, h_n[0, 0], h_n[1, 0]])
            torch.testing.assert_close(pooled[row], expected, atol=1e-6, rtol=1e-6)
        assert torch.all(out[1, 2:] == 0)


def test_gate_trace_reproduces_the_first_layer() -> None:
    torch.manual_seed(0)
    model = NewsClassifier(30, embed_dim=6, hidden_size=4, num_layers=2, bidirectional=True).eval()
    ids = torch.tensor([3, 8, 2, 9, 4])
    gates = model.gate_trace(ids)
    assert gates.r.shape == gates.z.shape == gates.h.shape == (5, 4)
    assert bool(((gates.r > 0) & (gates.r < 1) & (gates.z > 0) & (gates.z < 1)).all())
    first = nn.GRU(6, 4, batch_first=True)
    first.load_state_dict({k: v for k, v in model.rnn.state_dict().items() if k.endswith("_l0")})
    with torch.no_grad():
        out, _ = first(model.embedding(ids)[None])
    torch.testing.assert_close(gates.h, out[0], atol=1e-6, rtol=1e-6)


def test_reverse_within_lengths_is_an_involution_that_keeps_padding() -> None:
    x = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    lengths = torch.tensor([3, 4])
    flipped = reverse_within_lengths(x, lengths)
    assert flipped[:, :, 0].tolist() == [[2.0, 1.0, 0.0, 3.0], [7.0, 6.0, 5.0, 4.0]]
    torch.testing.assert_close(reverse_within_lengths(flipped, lengths), x)
    time_major = reverse_within_lengths(x.transpose(0, 1), lengths, time_major=True)
    torch.testing.assert_close(time_major, flipped.transpose(0, 1))
    assert torch.equal(reverse_within_lengths_index(lengths, 4, time_major=True),
                       reverse_within_lengths_index(lengths, 4).T)


def test_length_mask_in_both_layouts() -> None:
    lengths = torch.tensor([1, 3])
    assert length_mask(lengths, 3).tolist() == [[True, False, False], [True, True, True]]
    assert torch.equal(length_mask(lengths, 3, time_major=True), length_mask(lengths, 3).T)


def test_config_rebuilds_the_model_and_errors_are_clear() -> None:
    model = NewsClassifier(20, embed_dim=4, hidden_size=3, pooling="max+mean")
    clone = NewsClassifier(**model.config())
    clone.load_state_dict(model.state_dict())
    assert parse_pooling("mean+max") == ("mean", "max")
    assert clone.settings == model.settings == ModelConfig(embed_dim=4, hidden_size=3, pooling="max+mean")
    assert NewsClassifier(20, ModelConfig(hidden_size=3)).config() == NewsClassifier(20, hidden_size=3).config()
    with pytest.raises(ValueError, match="pooling"):
        NewsClassifier(20, pooling="mean+median")
    with pytest.raises(ValueError, match="backend"):
        NewsClassifier(20, backend="transformer")
    with pytest.raises(TypeError, match="hidden"):
        NewsClassifier(20, hidden=3)


@pytest.mark.parametrize("backend", ["mingru", "rnn", "lstm"])
def test_gate_trace_rejects_cells_without_gru_gates(backend: str) -> None:
    model = NewsClassifier(20, embed_dim=4, hidden_size=3, backend=backend)
    with pytest.raises(ValueError, match=backend):
        model.gate_trace(torch.tensor([2, 3]))


@pytest.mark.parametrize("backend,module,blocks", [("rnn", nn.RNN, 1), ("lstm", nn.LSTM, 4), ("torch", nn.GRU, 3)])
def test_rnn_and_lstm_backends_are_the_torch_cells(backend: str, module: type, blocks: int) -> None:
    """rnn / lstm hold nn.RNN / nn.LSTM: blocks x (H(D + H) + 2H) per direction, and the packed path computes
    what the module computes on each text alone."""
    torch.manual_seed(0)
    model = NewsClassifier(30, embed_dim=5, hidden_size=4, backend=backend, pooling="last", dropout=0.0).eval()
    assert type(model.rnn) is module and model.rnn.bidirectional and model.rnn.batch_first
    assert sum(p.numel() for p in model.rnn.parameters()) == 2 * blocks * (4 * (5 + 4) + 2 * 4)
    ids, lengths = _batch([5, 2, 4], 30, torch.Generator().manual_seed(4))
    with torch.no_grad():
        pooled = model.pool(model.sequence_outputs(ids, lengths), lengths)
        for row, length in enumerate(lengths.tolist()):
            _, state = model.rnn(model.embedding(ids[row, :length])[None])
            h_n = state[0] if backend == "lstm" else state  # nn.LSTM: (h_n, c_n)
            torch.testing.assert_close(pooled[row], torch.cat([h_n[0, 0], h_n[1, 0]]), atol=1e-6, rtol=1e-6)


def test_word_dropout_replaces_tokens_by_unk_in_training_only() -> None:
    torch.manual_seed(0)
    model = NewsClassifier(30, embed_dim=4, hidden_size=3, dropout=0.0, word_dropout=0.5, unk_idx=1)
    seen: list[torch.Tensor] = []
    model.embedding.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([8, 3])
    model.train()(ids, lengths)
    dropped = seen[-1] != ids
    assert dropped.any() and (seen[-1][dropped] == 1).all()
    assert (seen[-1][ids == 0] == 0).all()  # padding stays padding
    model.eval()(ids, lengths)
    assert torch.equal(seen[-1], ids)
