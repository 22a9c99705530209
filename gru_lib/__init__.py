"""gru_lib: the library of the GRU book. Each module maps to a chapter:

- ``cell``: the GRU cell from its equations (chapter 1)
- ``layer``: the full GRU layer, a drop-in for ``torch.nn.GRU`` (chapter 3)
- ``distributed``: data-parallel training under torchrun, DDP (chapter 8)
- ``precision``: mixed precision, bf16/fp16 autocast and loss scaling (chapter 8)
"""

from gru_lib.cell import GRUCell, GRUGates, gru_cell, gru_cell_gates, gru_gates_from_projection
from gru_lib.distributed import DistContext, init_distributed, wrap_model
from gru_lib.errors import CheckpointError, DataError, GruLibError
from gru_lib.layer import GRU
from gru_lib.repro import seed_everything

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
    "GruLibError",
    "DataError",
    "CheckpointError",
    "seed_everything",
]
