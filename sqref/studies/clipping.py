"""`sqref study clipping`: every clipping rule at every bit width, weight-only quantization."""
from __future__ import annotations

import numpy as np

from sqref import clipping
from sqref.data import load_split
from sqref.model import predict
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.studies.common import MODELS, load_model, score, tick

BITS = range(2, 9)


def clipping_study(progress=False) -> str:
    """Weight-only quantization, bits 2..8 x every rule, per tensor and per channel."""
    x, y = load_split(split="test")
    lines = ["## Clipping rules at every bit width (weight-only, no SVD, no fine-tuning)", "",
             "Command: `sqref study clipping`. Test accuracy in % and, in brackets, the prediction agreement "
             "with the float model in %. Symmetric grid, round half to even; activations stay float.", ""]
    for name in MODELS:
        model = load_model(name)
        float_preds = predict(model, x)
        float_acc = float(np.mean(float_preds == y))
        for per_channel in (False, True):
            grid = "per channel" if per_channel else "per tensor"
            bar = Progress(len(clipping.RULES) * len(BITS), f"clipping {name} {grid}", enabled=progress)
            lines += [f"### {name}, {'per output channel' if per_channel else 'per tensor'} "
                      f"(float accuracy {100 * float_acc:.1f}%)", "",
                      "| rule | " + " | ".join(f"{k} bits" for k in BITS) + " |",
                      "|---|" + "---|" * len(BITS)]
            for rule in clipping.RULES:
                row = []
                for k in BITS:
                    qm = quantize_model(model, bits=k, rule=rule, per_channel=per_channel)
                    acc, agree = score(qm, float_preds, x, y)
                    row.append(f"{100 * acc:.1f} ({100 * agree:.1f})")
                    tick(bar)
                lines.append(f"| {rule} | " + " | ".join(row) + " |")
            bar.close()
            lines.append("")
    return "\n".join(lines)
