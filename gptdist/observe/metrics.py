"""Rank 0's run record: metrics.jsonl and the loss plot (the book's figure 5.12)."""

import json
import time
from pathlib import Path


class MetricsLog:
    """Appends JSON rows to out_dir/metrics.jsonl (a resumed run appends to the same file)."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)

    def write(self, row: dict) -> None:
        self._file.write(json.dumps({**row, "time": round(time.time(), 3)}) + "\n")

    def close(self) -> None:
        self._file.close()


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics file, but for a line a kill cut short (a resumed run writes on after it)."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def eval_history(path: Path) -> list[dict]:
    """The eval rows of a metrics file, one per step (a resumed run's repeat of a step wins)."""
    by_step = {row["step"]: row for row in read_rows(path) if "val_loss" in row}
    return [by_step[s] for s in sorted(by_step)]


def plot_losses(metrics_path: Path, out_png: Path) -> bool:
    """Train and val loss against epochs, with tokens seen on a second axis; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    history = eval_history(metrics_path)
    if not history:
        return False
    epochs = [row["epoch"] for row in history]
    # a Figure of its own (no pyplot state), margins fixed: measuring the labels for a tight layout took
    # most of a redraw (0.25 of 0.4 s on a CPU)
    fig = Figure(figsize=(5, 3))
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.16, top=0.82)
    ax1 = fig.add_subplot()
    ax1.plot(epochs, [row["train_loss"] for row in history], label="Training loss")
    ax1.plot(epochs, [row["val_loss"] for row in history], linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()  # same curves against tokens seen, drawn invisibly to align the axis
    ax2.plot([row["tokens_seen"] for row in history], [row["train_loss"] for row in history], alpha=0)
    ax2.set_xlabel("Tokens seen")
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(out_png)
    return True
