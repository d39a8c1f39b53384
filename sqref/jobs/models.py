"""Jobs about one model: evaluation."""
from __future__ import annotations

import numpy as np

from sqref.model import predict
from sqref.progress import Progress


def evaluate(model, x, y, *, progress=False, label="eval") -> dict:
    """Accuracy and predictions of `model` on (x, y), with a progress bar."""
    bar = Progress(len(x), label, enabled=progress)
    preds = predict(model, x, batch_size=250, progress=bar.update)
    acc = float(np.mean(preds == y))
    bar.close(f"accuracy {100 * acc:.2f}%")
    return {"accuracy": acc, "correct": int(np.sum(preds == y)), "count": int(len(y)), "predictions": preds}
