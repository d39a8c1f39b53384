"""The figures every job reports, named and rounded one way (docs/cli.md, "JSON schema").

    ratio      compression ratios, 2 decimals            payload_ratio 29.31
    fraction   accuracies and agreements, 4 decimals     accuracy 0.9712 (a fraction, not percent)
    points     accuracy drops in percentage points, 2    drop_points 0.4
    seconds    wall-clock seconds, 2 decimals            seconds 1.23

Layer rows share one set of names: ``name``, ``kind``, ``weight_shape``, ``params``,
``bits`` and, for a quantized layer, ``rule``, ``alpha``, ``alpha_range``, ``scheme``,
``per_channel``, ``rounding`` (`quant_fields`).
"""
from __future__ import annotations

import os

import numpy as np

from sqref.hdf5 import file_sha256

RATIO_KEYS = ("payload_ratio", "huffman_ratio", "file_ratio")


def ratio(x) -> float:
    return round(float(x), 2)


def fraction(x) -> float:
    return round(float(x), 4)


def points(x) -> float:
    return round(float(x), 2)


def seconds(x) -> float:
    return round(float(x), 2)


def rounded_total(total: dict) -> dict:
    """sqref.accounting.sizes()["total"] with its ratios rounded to 2 decimals."""
    return {k: ratio(v) if k in RATIO_KEYS else v for k, v in total.items()}


def quant_fields(q) -> dict:
    """How a layer's weight is stored: 32-bit float (q is None) or k-bit codes (sqref.qmodel.LayerQuant).

    alpha is a float (per tensor) or a list of K floats (per output channel);
    alpha_range is [min, max] over it either way.
    """
    if q is None:
        return {"rule": None, "alpha": None, "alpha_range": None, "scheme": None, "per_channel": None,
                "rounding": None}
    alpha = np.asarray(q.alpha, np.float64)
    return {"rule": q.rule, "alpha": float(alpha) if alpha.ndim == 0 else alpha.tolist(),
            "alpha_range": [float(alpha.min()), float(alpha.max())], "scheme": q.scheme,
            "per_channel": q.axis is not None, "rounding": q.rounding}


def alpha_text(row) -> str:
    """'0.123' for a per-tensor boundary, '0.05..0.31' (min..max) for per-channel ones."""
    if row.get("alpha") is None:
        return "-"
    lo, hi = row["alpha_range"]
    return f"{lo:.3g}..{hi:.3g}" if isinstance(row["alpha"], list) else f"{row['alpha']:.4g}"


def layer_rows(before, after, size_rows) -> list[dict]:
    """Per-layer statistics of a quantized model ``after`` against the float model ``before``
    that it quantized (same layer names); ``size_rows`` is sqref.accounting.sizes()["layers"]."""
    by_name = {r["name"]: r for r in size_rows}
    original = dict(zip(before.names, before.layers))
    rows = []
    for name, layer in zip(after.names, after.layers):
        if name not in by_name:
            continue
        size = dict(by_name[name])
        size["weight_shape"] = size.pop("shape")
        w = np.asarray(original[name].weight, np.float64)
        w_hat = np.asarray(layer.weight, np.float64)
        err = np.sum((w - w_hat) ** 2)
        fields = quant_fields(layer.quant)
        amax = np.abs(w).max() if w.size else 0.0
        rows.append({**size, **fields,
                     "alpha_over_max": None if fields["alpha"] is None or amax == 0
                     else fraction(fields["alpha_range"][1] / amax),
                     "mse": float(err / max(w.size, 1)),
                     "sqnr_db": round(float(10 * np.log10(np.sum(w**2) / err)), 2) if err > 0 else float("inf")})
    return rows


# Keys of a model's meta that describe that model itself: a derived model must not inherit them.
OWN_KEYS = ("settings", "evaluation", "source", "rank_search", "finetune", "data_source")


def derived_meta(meta: dict, *, source_path, source_meta: dict, settings: dict, qual: dict | None,
                 extra: dict | None = None) -> dict:
    """The meta of a model file derived from ``source_path`` (quantized or compressed).

    Keeps what still holds (architecture, training recipe, ``original_params``, ``svd``),
    records the settings, the source (file name, SHA-256, and its own accuracy figures,
    renamed under ``source`` so no stale figure looks like this model's) and this
    model's measured accuracy in ``evaluation`` ({"measured": false} when skipped; accuracies
    null when the data has no labels) with its agreement with the source model.
    """
    stale = {k for k in source_meta if "accuracy" in k or k in OWN_KEYS}
    kept = {k: v for k, v in meta.items() if k not in stale}
    source = {"file": os.path.basename(os.fspath(source_path)), "sha256": file_sha256(source_path),
              **{k: source_meta[k] for k in sorted(stale)}}
    evaluation = {"measured": False} if qual is None else {
        "measured": True, "split": qual["split"], "count": qual["count"], "accuracy": qual["compressed_accuracy"],
        "source_accuracy": qual["float_accuracy"], "drop_points": qual["drop_points"],
        "agreement": qual["agreement"], "labels": qual.get("labels", True),
        **{k: qual.get(k) for k in ("top5_agreement", "logit_sqnr_db", "identical_logits")}}
    return {**kept, **(extra or {}), "settings": settings, "source": source, "evaluation": evaluation}
