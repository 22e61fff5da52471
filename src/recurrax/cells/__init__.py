"""Recurrent cells: one module per cell family, and a registry by name."""

from .base import AssociativeCell, Cell
from .elman import Elman, ForgetElman
from .ffm import FFM
from .gated_deltanet import GatedDeltaNet
from .gru import GRU
from .linear import LinearRecurrence
from .linear_attention import LinearAttention
from .lru import LRU
from .lstm import LSTM
from .mgu import MGU
from .minrnn import MinGRU, MinLSTM
from .rglru import RGLRU
from .s6 import S6

CELLS: dict[str, type[Cell]] = {
    "linear": LinearRecurrence,
    "elman": Elman,
    "forget-elman": ForgetElman,
    "mgu": MGU,
    "gru": GRU,
    "lstm": LSTM,
    "lru": LRU,
    "mingru": MinGRU,
    "minlstm": MinLSTM,
    "s6": S6,
    "rglru": RGLRU,
    "ffm": FFM,
    "linear-attention": LinearAttention,
    "gated-deltanet": GatedDeltaNet,
}


def get_cell_class(name: str) -> type[Cell]:
    """The cell class registered as ``name`` (e.g. ``"lstm"``), or named so (``"LinearRecurrence"``),
    either in any case; unknown names raise listing the choices."""
    key = name.lower()
    if key in CELLS:
        return CELLS[key]
    for cls in CELLS.values():
        if cls.__name__.lower() == key:
            return cls
    raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(CELLS)} (or their class names)")


__all__ = [
    "AssociativeCell",
    "CELLS",
    "Cell",
    "Elman",
    "ForgetElman",
    "GRU",
    "LSTM",
    "LinearRecurrence",
    "MGU",
    "LRU",
    "MinGRU",
    "MinLSTM",
    "S6",
    "RGLRU",
    "FFM",
    "LinearAttention",
    "GatedDeltaNet",
    "get_cell_class",
]
