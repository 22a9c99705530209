"""gru_lib: the library of the GRU book. Each module maps to a chapter:

- ``cell``: the GRU cell from its equations (chapter 1)
- ``bptt``: the cell's backward pass derived by hand, and backpropagation through time (chapter 2)
- ``gradients``: vanishing and exploding gradients measured; an explosive GRU setting (chapter 2)
- ``tasks``: the adding problem, a long-range task, and its small trainer (chapter 2)
- ``layer``: the full GRU layer, a drop-in for ``torch.nn.GRU`` (chapter 3)
- ``data``: AG News from its official CSV files, validated, downloaded into a cache when missing (chapter 4)
- ``text``: tokenizer, vocabulary, numericalisation, length-bucketed batching: what replaced torchtext (chapter 4)
- ``models``: the news classifier: embedding, GRU backend, masked pooling, linear (chapter 5)
- ``embeddings``: word vectors from the training rows' co-occurrences, PPMI + SVD (chapter 5)
- ``metrics``: accuracy, macro-F1, confusion matrix, per-class scores (chapter 5)
- ``train``: the trainer and the ``train``/``evaluate``/``predict`` commands (chapter 5)
- ``checkpoint``: atomic, weights-only checkpoints with everything an exact resume needs (chapter 5)
- ``fast``: FastGRU, nn.GRU's function with a C++ time loop and a hand-written backward (chapter 6)
- ``bench``: the ``bench`` command, timings of every GRU backend against ``nn.GRU`` and ``torch.mm`` (chapter 6)
- ``scan``, ``mingru``: the parallel log-space scan and MinGRU, parallel in time (chapter 7)
- ``distributed``: data-parallel training under torchrun, DDP (chapter 8)
- ``precision``: mixed precision, bf16/fp16 autocast and loss scaling (chapter 8)
"""

from gru_lib.cell import GRUCell, GRUGates, gru_cell, gru_cell_gates, gru_gates_from_projection
from gru_lib.distributed import DistContext, init_distributed, wrap_model
from gru_lib.data import CLASSES, NewsExample, describe_ag_news, ensure_ag_news, load_ag_news
from gru_lib.errors import CheckpointError, DataError, GruLibError
from gru_lib.fast import FastGRU
from gru_lib.layer import GRU
from gru_lib.mingru import MinGRU
from gru_lib.metrics import classification_report, confusion_matrix
from gru_lib.models import NewsClassifier
from gru_lib.repro import seed_everything
from gru_lib.train import TrainConfig, load_classifier
from gru_lib.text import BucketBatchSampler, EncodedDataset, Vocab, collate_padded, numericalize, tokenize

__all__ = [
    "DistContext",
    "init_distributed",
    "wrap_model",
    "GRUCell",
    "GRUGates",
    "gru_cell",
    "gru_cell_gates",
    "gru_gates_from_projection",
    "GRU",
    "FastGRU",
    "MinGRU",
    "GruLibError",
    "DataError",
    "CheckpointError",
    "seed_everything",
    "CLASSES",
    "NewsExample",
    "load_ag_news",
    "ensure_ag_news",
    "describe_ag_news",
    "tokenize",
    "Vocab",
    "numericalize",
    "EncodedDataset",
    "BucketBatchSampler",
    "collate_padded",
    "NewsClassifier",
    "confusion_matrix",
    "classification_report",
    "TrainConfig",
    "load_classifier",
]
