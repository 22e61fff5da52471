"""recurrax: recurrent sequence models in JAX.

The recurrence f : H × X × Θ → H is a *cell*; :func:`scan` runs it over a sequence; layers
(:class:`Recurrent`, :class:`Bidirectional`, :class:`Stack`) compose cells; a :class:`Head` is the
output map g : H × X × Θ → Y.
"""

from .cells import (
    CELLS,
    FFM,
    GRU,
    LRU,
    LSTM,
    MGU,
    RGLRU,
    S6,
    AssociativeCell,
    Cell,
    Elman,
    ForgetElman,
    GatedDeltaNet,
    LinearAttention,
    LinearRecurrence,
    MinGRU,
    MinLSTM,
    get_cell_class,
)
from .layers import Bidirectional, Head, Recurrent, Stack, make_stack
from .models import SequenceModel
from .scan import scan

__version__ = "0.1.0"

__all__ = [
    "AssociativeCell",
    "Bidirectional",
    "CELLS",
    "Cell",
    "Elman",
    "ForgetElman",
    "GRU",
    "Head",
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
    "Recurrent",
    "SequenceModel",
    "Stack",
    "get_cell_class",
    "make_stack",
    "scan",
]
