"""Chapter 5: the settings of a training run, in two dataclasses with one set of defaults (the book's
recommended settings, from chapter 5 and the ablations that chose them).

- :class:`ModelConfig`: the classifier's architecture; :class:`gru_lib.models.NewsClassifier` takes it.
- :class:`TrainConfig`: data, vocabulary, optimisation and run settings, and the ``model`` it trains.

Every field carries its help text (and its choices) in its metadata: the ``train`` command makes one flag per
field from them (:mod:`gru_lib.cli`), so a new setting needs no second edit. Bad values raise
:class:`gru_lib.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gru_lib.errors import ConfigError
from gru_lib.precision import PRECISIONS

__all__ = [
    "BACKENDS", "POOLINGS", "SCHEDULES", "EMBEDDING_INITS", "MODEL_FIELDS", "ModelConfig", "TrainConfig",
    "parse_pooling", "setting", "check_types",
]

BACKENDS: tuple[str, ...] = ("torch", "gru_lib", "fast", "mingru", "rnn", "lstm")
POOLINGS: tuple[str, ...] = ("mean", "max", "last", "emb")


def parse_pooling(pooling: str) -> tuple[str, ...]:
    """``"mean+max"`` -> ``("mean", "max")``; each part one of :data:`POOLINGS`, no repeats."""
    parts = tuple(part.strip() for part in pooling.split("+"))
    if not parts or any(p not in POOLINGS for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"pooling {pooling!r}: expected one or more of {', '.join(POOLINGS)} joined by '+'")
    return parts


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A configuration field whose ``help`` (and ``choices``) the command line turns into a flag."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class ModelConfig:
    """The classifier's architecture, one home for its settings and their defaults (the book's recommended
    ones, chapter 5). :class:`NewsClassifier` takes it; :class:`gru_lib.config.TrainConfig` holds it; the
    ``train`` command makes one flag per field. The vocabulary size, padding and ``<unk>`` indices and the
    number of classes come from the data, not from here."""

    embed_dim: int = setting(128, "embedding size")
    hidden_size: int = setting(64, "GRU hidden size per direction")
    num_layers: int = setting(1, "stacked GRU layers")
    bidirectional: bool = setting(True, "read each text in both directions")
    dropout: float = setting(0.5, "dropout on embeddings, between layers and on the pooled features")
    word_dropout: float = setting(0.2, "probability of replacing a training token by <unk>")
    backend: str = setting("torch", "recurrent layer", choices=BACKENDS)
    pooling: str = setting("mean+max+emb", "pooling over time: mean, max, last (GRU outputs), emb "
                            "(embeddings), joined by '+'")

    def __post_init__(self) -> None:
        checks = [
            (self.embed_dim >= 1 and self.hidden_size >= 1 and self.num_layers >= 1,
             "embed_dim, hidden_size and num_layers must be >= 1"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (0.0 <= self.word_dropout < 1.0, f"word_dropout must be in [0, 1), got {self.word_dropout}"),
            (self.backend in BACKENDS, f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid model configuration: {message}")
        try:
            object.__setattr__(self, "pooling", "+".join(parse_pooling(self.pooling)))
        except ValueError as error:
            raise ConfigError(f"invalid model configuration: {error}") from None


MODEL_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(ModelConfig))


SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
EMBEDDING_INITS: tuple[str, ...] = ("ppmi", "random")


# What a setting read from a file may hold, by its annotation: bool is no number here, an int is a float.
_KINDS: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                                       "int | None": (int, type(None))}


def check_types(cls: type, values: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first value of ``values`` whose type does not fit ``cls``'s field
    of that name (``max_len: 3.5``, ``epochs: "2"``, ``bidirectional: 1``); names that are not fields are left
    to the caller. Settings read from a checkpoint or a shipped model are checked this way before use."""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.type not in _KINDS:
            continue
        value, kinds = values[f.name], _KINDS[f.type]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"setting {f.name!r}: expected {f.type}, got {type(value).__name__} {value!r:.40}")


def _raise_first_failure(what: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"invalid {what} configuration: {message}")


@dataclass
class TrainConfig:
    """Everything that defines a training run: the settings below and the ``model`` (a :class:`ModelConfig`).

    The model's settings may also be given and read by name, as a shortcut:
    ``TrainConfig(hidden_size=32)`` is ``TrainConfig(model=ModelConfig(hidden_size=32))`` and
    ``config.hidden_size`` is ``config.model.hidden_size``. :meth:`to_dict` is flat in the same way."""

    # data and vocabulary
    max_len: int = setting(64, "keep the first N tokens of each text")
    min_freq: int = setting(1, "vocabulary: minimum count of a token in the training rows")
    max_vocab: int | None = setting(None, "vocabulary: maximum size, specials included (default: no limit)")
    clean_text: bool = setting(True, "repair AG News' HTML-entity debris before tokenizing")
    val_fraction: float = setting(0.0, "hold out this fraction of each class's training rows (seeded) for the "
                                  "per-epoch evaluation and score the test rows once, at the end (0: every "
                                  "epoch is scored on the test rows)")
    # model
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding_init: str = setting("ppmi", "ppmi: word vectors from the training rows' co-occurrences "
                                  "(gru_lib.embeddings); random: N(0, 1)", choices=EMBEDDING_INITS)
    # optimisation
    epochs: int = setting(6, "passes over the training rows")
    batch_size: int = setting(64, "texts per optimisation step (per process)")
    lr: float = setting(3e-3, "peak learning rate of AdamW")
    weight_decay: float = setting(0.01, "AdamW weight decay (not on biases and embeddings)")
    warmup: float = setting(0.06, "fraction of the steps with a linear learning-rate warmup")
    schedule: str = setting("cosine", "learning-rate decay after warmup", choices=SCHEDULES)
    max_grad_norm: float = setting(1.0, "clip the gradient's global L2 norm to this (0: no clipping)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    # run
    seed: int = setting(0, "random seed (weights, dropout, batch order)")
    precision: str = setting("fp32", "fp32, bf16 (CPU or CUDA autocast) or fp16 (CUDA, with a gradient "
                             "scaler)", choices=PRECISIONS)
    checkpoint_every: int = setting(0, "also checkpoint every N steps (0: at the end of each epoch only)")
    eval_batch_size: int = setting(256, "texts per evaluation batch")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        _raise_first_failure("training", [
            (self.max_len >= 1, "max_len must be >= 1"),
            (self.min_freq >= 1, "min_freq must be >= 1"),
            (self.max_vocab is None or self.max_vocab >= 3, "max_vocab must be >= 3"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (isinstance(self.model, ModelConfig), "model must be a ModelConfig"),
            (self.embedding_init in EMBEDDING_INITS, f"embedding_init must be one of {', '.join(EMBEDDING_INITS)}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.eval_batch_size >= 1,
             "epochs and batch sizes must be >= 1"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (0.0 <= self.warmup < 1.0, "warmup is a fraction of the steps in [0, 1)"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0 disables clipping)"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
        ])

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the model's settings read through (class docstring).
        if name in MODEL_FIELDS and "model" in self.__dict__:
            return getattr(self.__dict__["model"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain types, the model's inline (what checkpoints and ``config.json`` store)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        return {**values, **dataclasses.asdict(self.model)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (a nested ``model`` dictionary is accepted too); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)} | MODEL_FIELDS
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        check_types(cls, values)
        check_types(ModelConfig, values if not isinstance(values.get("model"), dict) else values["model"])
        return cls(**values)


def _accept_model_settings(generated: Any) -> Any:
    """Wrap the generated ``__init__`` so that the model's settings may be passed by name (and so that
    ``dataclasses.replace(config, hidden_size=32)`` works)."""

    def __init__(self: TrainConfig, *args: Any, **kwargs: Any) -> None:
        named = {key: kwargs.pop(key) for key in MODEL_FIELDS & kwargs.keys()}
        if named:
            model = kwargs.get("model") or ModelConfig()
            kwargs["model"] = dataclasses.replace(ModelConfig(**model) if isinstance(model, dict) else model, **named)
        generated(self, *args, **kwargs)

    __init__.__doc__ = generated.__doc__
    return __init__


TrainConfig.__init__ = _accept_model_settings(TrainConfig.__init__)  # type: ignore[method-assign]
