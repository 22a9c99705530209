"""gru_lib: the library of the GRU book. Each module maps to a chapter:

- ``cell``: the GRU cell from its equations (chapter 1)
- ``bptt``: the cell's backward pass derived by hand, and backpropagation through time (chapter 2)
- ``gradients``: vanishing and exploding gradients measured; an explosive GRU setting (chapter 2)
- ``tasks``: the adding problem, a long-range task, and its small trainer (chapter 2)
- ``layer``: the full GRU layer, a drop-in for ``torch.nn.GRU`` (chapter 3)
- ``lengths``: the length mask and the reverse-within-lengths index of padded batches (chapters 3, 5, 6)
- ``data``: AG News from its official CSV files, validated, downloaded into a cache when missing (chapter 4)
- ``text``: tokenizer, vocabulary, numericalisation, length-bucketed batching: what replaced torchtext (chapter 4)
- ``config``: ``ModelConfig`` and ``TrainConfig``, every setting of a run and its default (chapter 5)
- ``models``: the news classifier: embedding, GRU backend, masked pooling, linear (chapter 5)
- ``embeddings``: word vectors from the training rows' co-occurrences, PPMI + SVD (chapter 5)
- ``prepare``: rows to tokens, vocabulary, ids and an initialised classifier (chapter 5)
- ``train``: the trainer: ``optimization_step``, one epoch, ``train`` (chapter 5)
- ``train_state``: where a run stands, to and from a checkpoint (chapter 5)
- ``evaluate``: logits, exact sharded evaluation, loading a trained classifier (chapter 5)
- ``metrics``: accuracy, macro-F1, confusion matrix, per-class scores (chapter 5)
- ``checkpoint``: atomic, weights-only checkpoints with everything an exact resume needs (chapter 5)
- ``shipped``: the small trained classifier that ships with the book, read without pickle (chapter 5)
- ``baseline``: TF-IDF + logistic regression, the classical baseline (chapter 5)
- ``ablation``: chapter 5's study, the classifier's parts over 3 seeds against tuned linear baselines (chapter 5)
- ``cli``: ``python -m gru_lib data | train | evaluate | predict | export | bench``, all argument parsing
- ``fast``: FastGRU, nn.GRU's function with a C++ time loop and a hand-written backward (chapter 6)
- ``inference``: FastGRU's gradient-free forward for the CPU, one C++ loop with its own product (appendix)
- ``isa``: which instruction set the C++ kernels run (AVX-512, AVX2, portable), ``GRU_LIB_ISA`` (appendix)
- ``native``: building and loading the C++ kernels of ``gru_lib/csrc`` (chapters 6 and 7)
- ``infer_bench``: that kernel's hardware bound (cache bandwidth, FMA peak) and its timings against the peers
- ``bench``: timings of every GRU backend against ``nn.GRU`` and ``torch.mm`` (chapter 6)
- ``peers``: the same GRU in ONNX Runtime and OpenVINO, checked and timed beside ours (appendix)
- ``export``: the classifier and GRU layers as ONNX, checked in ONNX Runtime (appendix)
- ``scan``, ``mingru``: the parallel log-space scan and MinGRU, parallel in time (chapter 7)
- ``distributed``: data-parallel training under torchrun, DDP (chapter 8)
- ``precision``: mixed precision, bf16/fp16 autocast and loss scaling (chapter 8)

``import gru_lib`` loads PyTorch and the standard library only: the names below are imported from their
modules on first use, and the optional packages (scikit-learn, SciPy, tqdm, pandas, matplotlib) where the
code that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["GRUCell", "GRUGates", "gru_cell", "gru_cell_gates", "gru_gates_from_projection"], "cell"),
    **dict.fromkeys(["DistContext", "init_distributed", "wrap_model"], "distributed"),
    **dict.fromkeys(["CLASSES", "NewsExample", "describe_ag_news", "ensure_ag_news", "load_ag_news"], "data"),
    **dict.fromkeys(["CheckpointError", "ConfigError", "DataError", "GruLibError"], "errors"),
    "FastGRU": "fast",
    **dict.fromkeys(["GRU", "to_torch_modules"], "layer"),
    "MinGRU": "mingru",
    **dict.fromkeys(["classification_report", "confusion_matrix"], "metrics"),
    **dict.fromkeys(["ModelConfig", "TrainConfig"], "config"),
    "NewsClassifier": "models",
    "seed_everything": "repro",
    "load_classifier": "evaluate",
    **dict.fromkeys(["BucketBatchSampler", "EncodedDataset", "Vocab", "collate_padded", "numericalize", "tokenize"],
                    "text"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use (PEP 562); submodules import as usual."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gru_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gru_lib.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
