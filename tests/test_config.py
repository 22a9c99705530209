"""The settings: ModelConfig and TrainConfig validate with one-line errors naming the setting, round-trip
through plain dictionaries, and the ``train`` command's flags are generated from their fields: every field has a
flag, with one set of defaults, and the model the command line builds is the one the configuration builds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gru_lib.cli import build_parser, config_flags, config_from_args
from gru_lib.config import MODEL_FIELDS, ModelConfig, TrainConfig
from gru_lib.errors import ConfigError, GruLibError
from gru_lib.models import NewsClassifier
from gru_lib.prepare import build_classifier
from gru_lib.text import Vocab


@pytest.mark.parametrize("settings,culprit", [
    ({"max_len": 0}, "max_len"), ({"min_freq": 0}, "min_freq"), ({"max_vocab": 2}, "max_vocab"),
    ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"warmup": 1.0}, "warmup"), ({"schedule": "step"}, "schedule"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"precision": "fp8"}, "precision"), ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"embedding_init": "glove"}, "embedding_init"), ({"hidden_size": 0}, "hidden_size"),
    ({"dropout": 1.0}, "dropout"), ({"word_dropout": -0.1}, "word_dropout"), ({"backend": "cudnn"}, "backend"),
    ({"pooling": "mean+median"}, "pooling"),
])
def test_bad_settings_raise_one_line_naming_the_setting(settings: dict, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit) as caught:
        TrainConfig(**settings)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, GruLibError) and isinstance(caught.value, ValueError)


def test_the_model_settings_live_in_one_model_config() -> None:
    config = TrainConfig(hidden_size=32, epochs=2)
    assert config.model == ModelConfig(hidden_size=32) and config.hidden_size == 32
    assert dataclasses.replace(TrainConfig(), backend="fast").model.backend == "fast"
    assert TrainConfig(model=ModelConfig(embed_dim=8), embed_dim=16).model.embed_dim == 16  # by name wins
    assert set(config.to_dict()) == {f.name for f in dataclasses.fields(TrainConfig)} - {"model"} | MODEL_FIELDS
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"epochs": 2, "model": {"hidden_size": 32}}) == config
    with pytest.raises(ConfigError, match="unknown training setting.*hidden_dim"):
        TrainConfig.from_dict({"hidden_dim": 3})
    with pytest.raises(AttributeError, match="hidden_dim"):
        config.hidden_dim  # noqa: B018
    assert ModelConfig(pooling="max + mean").pooling == "max+mean"  # normalised once, where it is validated


def test_every_setting_has_a_flag_with_its_help_and_default() -> None:
    fields = [*dataclasses.fields(ModelConfig), *(f for f in dataclasses.fields(TrainConfig) if f.name != "model")]
    assert all(f.metadata.get("help") for f in fields), [f.name for f in fields if not f.metadata.get("help")]
    flags = config_flags()
    assert set(flags) == {f.name for f in fields}
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    by_dest = {action.dest: action for action in train_parser._actions}
    defaults = TrainConfig().to_dict()
    for name, (flag, item, _) in flags.items():
        action = by_dest[name]
        assert flag in action.option_strings and action.default is None  # unset flags keep the dataclass default
        assert item.metadata["help"] in action.help and f"(default: {defaults[name]})" in action.help
        if "choices" in item.metadata:
            assert tuple(action.choices) == tuple(item.metadata["choices"])
    # A setting that may be None parses as its real type (max_vocab: int | None -> int).
    args = build_parser().parse_args(["train", "--out", "x", "--max-vocab", "50", "--no-bidirectional"])
    assert config_from_args(args) == TrainConfig(max_vocab=50, bidirectional=False)
    assert config_from_args(build_parser().parse_args(["train", "--out", "x"])) == TrainConfig()


def test_the_command_line_builds_the_model_the_configuration_builds() -> None:
    argv = ["train", "--out", "x", "--embed-dim", "8", "--hidden-size", "6", "--num-layers", "2", "--no-bidirectional",
            "--dropout", "0.25", "--word-dropout", "0.1", "--backend", "gru_lib", "--pooling", "last+emb"]
    from_cli = config_from_args(build_parser().parse_args(argv))
    settings = ModelConfig(embed_dim=8, hidden_size=6, num_layers=2, bidirectional=False, dropout=0.25,
                           word_dropout=0.1, backend="gru_lib", pooling="last+emb")
    assert from_cli.model == settings
    vocab = Vocab.build([["a", "b", "c"]])
    torch.manual_seed(0)
    built, _ = build_classifier(vocab, from_cli)
    torch.manual_seed(0)
    direct = NewsClassifier(len(vocab), settings, padding_idx=vocab.pad_index, unk_idx=vocab.unk_index)
    assert built.config() == direct.config()
    assert built.state_dict().keys() == direct.state_dict().keys()
    for name, value in direct.state_dict().items():
        assert torch.equal(built.state_dict()[name], value), name
