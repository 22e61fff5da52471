"""A run directory: the configuration, the metrics log, checkpoints and the loss-curve plot.

    RUN_DIR/config.json       everything needed to rebuild the model and data and to resume
    RUN_DIR/metrics.jsonl     one JSON object per line: training steps and evaluations
    RUN_DIR/checkpoint.eqx    the latest training state (model, optimiser, step); .prev before it
    RUN_DIR/best.eqx          the model with the best validation loss so far
    RUN_DIR/loss.png          training and validation loss against steps
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import atomic_write_bytes

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.eqx"
BEST = "best.eqx"
PLOT = "loss.png"


class RunDirError(ValueError):
    """A path that is not a usable run directory."""


def write_json(path: str | os.PathLike, value: dict) -> None:
    """Write ``value`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    write_json(Path(run_dir) / CONFIG, config)


def read_config(run_dir: str | os.PathLike) -> dict:
    """The configuration of an existing run; a clear error when ``run_dir`` is not a run."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunDirError(f"{run_dir} is not a run directory (it does not exist)")
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}; runs are made by `recurrax train`)")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise RunDirError(f"{path} is corrupt: {error}") from error


class MetricsLog:
    """Append-only JSON-lines log of metrics, cut back to a step when a run resumes."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / METRICS

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (written after the checkpoint a resumed run starts from)."""
        if not self.path.exists():
            return
        kept = [record for record in self.read() if record["step"] <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(record) + "\n" for record in kept).encode())

    def append(self, records: list[dict]) -> None:
        if records:
            with self.path.open("a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)

    def read(self) -> list[dict]:
        """The records; a last line cut short (the process stopped while appending it) is left out."""
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                record = json.loads(line)
                record["step"]
            except (ValueError, TypeError, KeyError) as error:
                if number == len(lines):
                    break
                raise RunDirError(f"{self.path}, line {number}, is not a metrics record: {error}") from error
            records.append(record)
        return records


def plot_losses(run_dir: str | os.PathLike, records: list[dict], *, ylabel: str = "loss") -> Path:
    """Write the loss curves of ``records`` (training ``loss``, validation ``valid_loss``) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    valid = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.7, label="training")
    if valid:
        ax.plot(*zip(*valid), "o-", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if all(v > 0 for _, v in train + valid):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / PLOT
    tmp = out.with_name(".loss.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
