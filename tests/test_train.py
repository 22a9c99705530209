"""The trainer: reproducible, exactly resumable (interrupted in process or by SIGTERM), stops on a non-finite
loss keeping the last good checkpoint; the learning-rate schedule."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from synthetic_news import make_examples

from gru_lib.checkpoint import checkpoint_path, load_checkpoint
from gru_lib.data import NewsExample
from gru_lib.errors import CheckpointError, GruLibError
from gru_lib.prepare import split_validation
from gru_lib.train import (
    NonFiniteLossError,
    TrainConfig,
    TrainingInterrupted,
    build_vocab,
    encode_examples,
    load_classifier,
    lr_factor,
    tokenize_examples,
    train,
)

TRAIN = make_examples(64, 0)
TEST = make_examples(24, 1)


def tiny(**changes) -> TrainConfig:
    settings = dict(embed_dim=16, hidden_size=16, batch_size=8, epochs=2, lr=3e-2, dropout=0.1, eval_batch_size=16)
    settings.update(changes)
    return TrainConfig(**settings)


pytestmark = pytest.mark.usefixtures("one_thread")


def _metrics(history: list[dict]) -> list[dict]:
    """The history without its wall times."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_lr_schedule() -> None:
    factors = [lr_factor(s, 100, 0.1, "cosine") for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(b <= a for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(50, 100, 0.0, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.0, "constant") == 1.0


@pytest.mark.slow
def test_learns_and_is_reproducible() -> None:
    first = train(tiny(epochs=3), TRAIN, TEST, log=None)
    second = train(tiny(epochs=3), TRAIN, TEST, log=None)
    assert _metrics(first.history) == _metrics(second.history)
    _same_weights(first.model, second.model)
    assert first.report["accuracy"] >= 0.9, first.history
    assert [h["epoch"] for h in first.history] == [1, 2, 3]
    other = train(tiny(epochs=3, seed=1), TRAIN, TEST, log=None)
    assert _metrics(other.history) != _metrics(first.history)


@pytest.mark.slow
def test_resume_after_an_interruption_gives_identical_weights(tmp_path: Path) -> None:
    reference = train(tiny(checkpoint_every=3), TRAIN, TEST, out_dir=tmp_path / "ref", log=None)

    class Killed(Exception):
        pass

    def kill_at_step_5(step: int, model: torch.nn.Module) -> None:
        if step == 5:
            raise Killed  # like SIGKILL: nothing saved since the checkpoint at step 3

    with pytest.raises(Killed):
        train(tiny(checkpoint_every=3), TRAIN, TEST, out_dir=tmp_path / "run", log=None, on_step=kill_at_step_5)
    assert load_checkpoint(checkpoint_path(tmp_path / "run"))["training"]["step"] == 3
    resumed = train(tiny(checkpoint_every=3), TRAIN, TEST, out_dir=tmp_path / "run", resume=True, log=None)
    _same_weights(resumed.model, reference.model)
    assert _metrics(resumed.history) == _metrics(reference.history)
    assert resumed.steps == reference.steps


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_is_exact(tmp_path: Path) -> None:
    reference = train(tiny(), TRAIN, TEST, log=None)

    def terminate_at_step_6(step: int, model: torch.nn.Module) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="resume"):
        train(tiny(), TRAIN, TEST, out_dir=tmp_path, log=None, on_step=terminate_at_step_6, handle_sigterm=True)
    state = load_checkpoint(checkpoint_path(tmp_path), require_training=True)
    assert (state["training"]["step"], state["training"]["batch_in_epoch"]) == (6, 6)
    resumed = train(tiny(), TRAIN, TEST, out_dir=tmp_path, resume=True, log=None)
    _same_weights(resumed.model, reference.model)
    assert _metrics(resumed.history) == _metrics(reference.history)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def poison_at_step_5(step: int, model: torch.nn.Module) -> None:
        if step == 5:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* step 6.*last good checkpoint"):
        train(tiny(checkpoint_every=4), TRAIN, TEST, out_dir=tmp_path, log=None, on_step=poison_at_step_5)
    state = load_checkpoint(checkpoint_path(tmp_path), require_training=True)
    assert state["training"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_resume_refuses_a_different_configuration(tmp_path: Path) -> None:
    train(tiny(epochs=1), TRAIN, TEST, out_dir=tmp_path, log=None)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: incompatible .*hidden_size=16 \(now 8\)"):
        train(tiny(epochs=1, hidden_size=8), TRAIN, TEST, out_dir=tmp_path, resume=True, log=None)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(tiny(), TRAIN, TEST, out_dir=tmp_path / "empty", resume=True, log=None)


def test_checkpoint_rebuilds_the_trained_model(tmp_path: Path) -> None:
    result = train(tiny(epochs=1, pooling="last+mean", bidirectional=False), TRAIN, TEST, out_dir=tmp_path,
                   log=None)
    model, vocab, config, _ = load_classifier(tmp_path)
    assert vocab == result.vocab and config == result.config
    _same_weights(model, result.model)
    assert not model.training


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu() -> None:
    """bf16 really computes in bf16 (the weights end up different from the fp32 run's) and still learns."""
    bf16 = train(tiny(epochs=3, precision="bf16"), TRAIN, TEST, log=None)
    fp32 = train(tiny(epochs=3), TRAIN, TEST, log=None)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in bf16.model.parameters())
    assert not torch.equal(bf16.model.head.weight, fp32.model.head.weight)
    assert bf16.report["accuracy"] >= 0.9, bf16.history


def test_pre_tokenized_texts_give_the_same_vocab_and_ids() -> None:
    """train() tokenizes the training texts once and passes the tokens on; the result must not change."""
    rows = make_examples(40, seed=3) + [NewsExample(1, "Goal &lt;b&gt;", "#39;" + " match" * 80)]
    config = tiny(max_len=8, min_freq=2)
    tokens = tokenize_examples(rows, config)
    vocab = build_vocab(rows, config)
    assert build_vocab(rows, config, tokens=tokens) == vocab
    plain, given = encode_examples(rows, vocab, config), encode_examples(rows, vocab, config, tokens=tokens)
    assert given.ids == plain.ids and given.labels == plain.labels
    assert max(given.lengths) == 8


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    rows = make_examples(40, seed=5)
    kept, held = split_validation(rows, 0.25, seed=3)
    assert len(held) == 8 and all(sum(e.label == k for e in held) == 2 for k in range(4))
    assert sorted(map(id, kept + held)) == sorted(map(id, rows))  # every row once
    assert [rows.index(e) for e in held] == sorted(rows.index(e) for e in held)  # the rows' order is kept
    assert split_validation(rows, 0.25, seed=3) == (kept, held)
    assert split_validation(rows, 0.25, seed=4)[1] != held
    assert split_validation(rows, 0.0, seed=3) == (rows, [])
    with pytest.raises(GruLibError, match="val_fraction"):
        split_validation(rows[:2], 0.1, seed=0)


@pytest.mark.slow
def test_validation_rows_score_every_epoch_and_the_test_rows_score_once() -> None:
    result = train(tiny(epochs=2, val_fraction=0.25), TRAIN, TEST, log=None)
    assert result.extra["train_rows"] == 48 and result.extra["validation_rows"] == 16
    for row in result.history:
        assert sum(map(sum, row["eval"]["confusion_matrix"])) == 16
    assert result.extra["validation"] == result.history[-1]["eval"]
    assert sum(map(sum, result.report["confusion_matrix"])) == len(TEST)
    kept, _ = split_validation(TRAIN, 0.25, seed=0)
    assert result.vocab == build_vocab(kept, tiny())  # the vocabulary never saw the validation rows
