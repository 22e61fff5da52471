"""Recurrent cells: one module per cell family, and a registry by name."""

from .base import AssociativeCell, Cell
from .elman import Elman, ForgetElman
from .gru import GRU
from .linear import LinearRecurrence
from .lstm import LSTM
from .mgu import MGU

CELLS: dict[str, type[Cell]] = {
    "linear": LinearRecurrence,
    "elman": Elman,
    "forget-elman": ForgetElman,
    "mgu": MGU,
    "gru": GRU,
    "lstm": LSTM,
}


def get_cell_class(name: str) -> type[Cell]:
    """The cell class registered as ``name`` (e.g. ``"lstm"``); unknown names raise listing the choices."""
    key = name.lower()
    if key not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(CELLS)}")
    return CELLS[key]


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
    "get_cell_class",
]
