"""Command-line values shared by the benchmark scripts."""

from __future__ import annotations


def positive_ints(text: str, name: str) -> list[int]:
    """``text`` as a list of positive integers separated by commas; exits naming ``--name`` if it is not one."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SystemExit(f"--{name} must be positive integers separated by commas, got {text!r}")
    return values
