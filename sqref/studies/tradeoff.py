"""`sqref study tradeoff`: LeNet-5's accuracy against payload ratio over rank x bits,
no clipping (max) against the dynamic boundary, with and without fine-tuning."""
from __future__ import annotations

from sqref.compress import factor_model, finetune
from sqref.data import load_split
from sqref.model import predict
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.studies.common import load_model, payload_ratio, score, tick

RANKS = (10, 20, 40)
BITS = (2, 3, 4, 6, 8)
FINETUNE_MAX_BITS = 4  # fine-tuned columns only up to here, where it matters


def tradeoff_study(progress=False, finetune_epochs=5, collect=None) -> str:
    """Accuracy against payload ratio for rank x bits, max vs dynamic, with and without fine-tuning.
    `collect`, a list, receives {label, ratio, accuracy} rows for sqref.plots.accuracy_curves."""
    x, y = load_split(split="test")
    train_xy, val = load_split(split="train"), load_split(split="val")
    model = load_model("lenet5")
    float_preds = predict(model, x)
    lines = ["## Trade-off: LeNet-5, rank x bits, no clipping (max) vs the dynamic boundary", "",
             "Command: `sqref study tradeoff`. Uniform bits for every layer, float32 biases, per tensor. "
             f"Cells: test accuracy % (agreement %); 'ft' columns after {finetune_epochs} epochs of fine-tuning "
             "on the labels only, without distillation (only for 2 to 4 bits, where it matters).", "",
             "| rank | bits | payload ratio | max | dynamic | max, ft | dynamic, ft |", "|---|---|---|---|---|---|---|"]
    bar = Progress(len(RANKS) * len(BITS), "tradeoff (rank x bits)", enabled=progress)
    for rank in RANKS:
        factored = factor_model(model, rank=rank)[0]
        for k in BITS:
            row, ratio = [], None
            for tune in (False, True):
                for rule in ("max", "dynamic"):
                    qkw = dict(bits=k, rule=rule)
                    if tune and k > FINETUNE_MAX_BITS:
                        row.append("-")
                        continue
                    base = finetune(factored, train_xy, val, epochs=finetune_epochs, quantize_kwargs=qkw,
                                    progress=False)[0] if tune else factored
                    qm = quantize_model(base, **qkw)
                    ratio = ratio or payload_ratio(qm)
                    acc, agree = score(qm, float_preds, x, y)
                    row.append(f"{100 * acc:.1f} ({100 * agree:.1f})")
                    if collect is not None:
                        collect.append({"label": f"{rule}{', fine-tuned' if tune else ''}", "ratio": ratio,
                                        "accuracy": acc})
            lines.append(f"| {rank} | {k} | {ratio:.1f}x | " + " | ".join(row) + " |")
            tick(bar)
    bar.close()
    return "\n".join(lines) + "\n"
