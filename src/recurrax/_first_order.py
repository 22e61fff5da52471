"""A guard that makes a hand-written VJP refuse second-order derivatives instead of missing terms."""

from __future__ import annotations

import jax


@jax.custom_jvp
def first_order_only(out, inputs):
    """``out``; differentiating it with respect to ``inputs`` (at a second level) raises.

    The fused VJPs (:mod:`recurrax.fused`, :mod:`recurrax.fused_native`) compute their outputs from
    values whose gradient was stopped, so a second-order derivative through them would silently
    miss terms; this guard sits in a VJP's forward rule, which only a higher-order derivative
    differentiates.
    """
    del inputs
    return out


@first_order_only.defjvp
def _first_order_only_jvp(primals, tangents):
    raise NotImplementedError(
        "the fused scan has first-order reverse-mode derivatives only; for higher-order derivatives run the "
        "plain loop: recurrax.scan(..., fused=False), or trace under `with recurrax.fused.disabled(): ...`"
    )
