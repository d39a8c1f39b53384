"""What every study shares: the models, the scoring, the results-table row
and one tick of the progress bar over a study's cells.

Accuracy is always given with the prediction agreement between the
compressed and the float model (1,000 test images: one image is 0.1 point,
the standard error near 98% about 0.45 points).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

import sqref
from sqref.accounting import sizes
from sqref.data import DATA_DIR
from sqref.model import predict
from sqref.progress import Progress

MODELS = ("lenet5", "lenet300")

HEADER = ["| model | settings | float % | compressed % | drop (points) | agreement % | payload B | payload ratio | "
          "file ratio | Huffman ratio |", "|---|---|---|---|---|---|---|---|---|---|"]


def load_model(name):
    """A shipped model, data/NAME.h5."""
    return sqref.load(DATA_DIR / f"{name}.h5")


def score(model, float_preds, x, y) -> tuple[float, float]:
    """(accuracy, agreement with `float_preds`) of `model` on (x, y), as fractions."""
    preds = predict(model, x)
    return float(np.mean(preds == y)), float(np.mean(preds == float_preds))


def payload_ratio(model) -> float:
    return sizes(model)["total"]["payload_ratio"]


def table_row(label, model, compressed, float_preds, x, y, extra="") -> str:
    """One row under HEADER: accuracy, drop and agreement on (x, y), and the
    payload, file and Huffman ratios of `compressed` written to a .h5 file."""
    acc, agree = score(compressed, float_preds, x, y)
    float_acc = float(np.mean(float_preds == y))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.h5")
        sqref.save(compressed, path)
        total = sizes(compressed, path)["total"]
    return (f"| {label} | {extra} | {100 * float_acc:.1f} | {100 * acc:.1f} | {100 * (float_acc - acc):+.1f} | "
            f"{100 * agree:.1f} | {total['payload_bytes']:,} | **{total['payload_ratio']:.1f}x** | "
            f"{total['file_ratio']:.1f}x | {total['huffman_ratio']:.1f}x |")


def tick(bar: Progress) -> None:
    """One more cell of a study done: every study counts its cells (table
    cells, training epochs, child processes) on a sqref.progress.Progress,
    which prints the ETA from the mean pace so far."""
    bar.update(bar.done + 1)
