"""Storage and compression accounting, in real bytes (docs/method.md section 4).

original   32 bits x every parameter of the original (float) model
payload    the exact bytes needed to rebuild the model:
             packed codes ceil(k * n / 8) per quantized weight tensor
           + 4 bytes per scale (float32)
           + 1 byte per zero point of the asymmetric grid (the symmetric
             grid's zero point is 0 by definition and is not stored)
           + biases: 4 bytes each (float32) or 2 (float16, bias_bits=16)
           + 4 bytes per SVD rank (an int32 per factored layer)
           + 4 bytes per parameter of any layer left in float32
file       the bytes of the .h5 file on disk (HDF5 metadata, names,
           checksums and the recorded alpha included)

Ratios are original / payload and original / file; report both. The
clipping boundary alpha is recorded in the file but not counted in the
payload: the scale alone rebuilds the weights.
"""
from __future__ import annotations

import heapq
import os

import numpy as np

from sqref.model import Model, layer_arrays


def layer_payload(layer) -> dict:
    """Payload bytes of one layer, split into codes, scales, zero points, biases and float weights."""
    q = getattr(layer, "quant", None)
    bias = getattr(layer, "bias", None)
    n_bias = 0 if bias is None else int(bias.size)
    if q is None:  # float: a weight, or the arrays of a batch norm or an elementwise constant
        weights = sum(int(a.size) for key, a in layer_arrays(layer).items() if key != "bias")
        return {"codes": 0, "scales": 0, "zero_points": 0, "biases": 4 * n_bias, "float_weights": 4 * weights}
    n = int(q.codes.size)
    return {"codes": (q.bits * n + 7) // 8,
            "scales": 4 * int(np.size(q.scale)),
            "zero_points": int(np.size(q.zero_point)) if q.scheme == "asymmetric" else 0,
            "biases": (q.bias_bits // 8) * n_bias,
            "float_weights": 0}


def huffman_bits(codes) -> int:
    """Bits of a Huffman code over the code values (the table itself not
    counted): the entropy-coded size, for comparison with Deep Compression."""
    _, counts = np.unique(np.asarray(codes).reshape(-1), return_counts=True)
    if counts.size <= 1:
        return int(counts.sum())  # one symbol: 1 bit each is the least a prefix code spends
    heap = [int(c) for c in counts]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:  # each merge adds one bit to every symbol under it
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        total += a + b
        heapq.heappush(heap, a + b)
    return total


def sizes(model: Model, path=None) -> dict:
    """Per-layer and total sizes of a (possibly quantized and factored) model.

    The original parameter count is `model.meta["original_params"]` when the
    model was derived from another (SVD, quantization), else its own count.
    """
    rows = []
    for name, layer in zip(model.names, model.layers):
        arrays = layer_arrays(layer)
        if not arrays:
            continue
        parts = layer_payload(layer)
        q = getattr(layer, "quant", None)
        params = sum(a.size for a in arrays.values())
        huff = (huffman_bits(q.codes) + 7) // 8 if q is not None else parts["float_weights"]
        shape = next(iter(arrays.values())).shape
        rows.append({"name": name, "kind": layer.kind, "shape": list(shape), "params": int(params),
                     "bits": q.bits if q is not None else 32, "payload_bytes": sum(parts.values()),
                     "huffman_payload_bytes": sum(parts.values()) - parts["codes"] - parts["float_weights"] + huff,
                     **{f"{k}_bytes": v for k, v in parts.items()}})
    svd = model.meta.get("svd", {})
    rank_bytes = 4 * len(svd)
    original_params = int(model.meta.get("original_params", model.param_count()))
    payload = sum(r["payload_bytes"] for r in rows) + rank_bytes
    huffman = sum(r["huffman_payload_bytes"] for r in rows) + rank_bytes
    total = {"original_params": original_params, "params": int(model.param_count()),
             "original_bytes": 4 * original_params, "payload_bytes": payload, "rank_bytes": rank_bytes,
             "payload_ratio": 4 * original_params / payload, "huffman_payload_bytes": huffman,
             "huffman_ratio": 4 * original_params / huffman}
    if path is not None:
        total["file_bytes"] = os.path.getsize(path)
        total["file_ratio"] = 4 * original_params / total["file_bytes"]
    return {"layers": rows, "total": total}
