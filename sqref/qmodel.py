"""Weight-quantized models: the per-layer quantization record and
`quantize_model`, which turns a float model into one whose Conv2d/Linear
weights are k-bit codes on a grid chosen by a clipping rule.

A quantized layer keeps two views of its weight: `layer.quant.codes` (what
the file stores, packed) and `layer.weight`, the dequantized float32 values
s * (q - z) that the float engine runs. Both are derived from the same codes
by `LayerQuant.dequantize`, so a saved and reloaded model computes exactly
what the in-memory one did.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sqref import clipping, quant
from sqref.model import PARAM_LAYERS, Model

BIAS_BITS = (32, 16)


@dataclass(frozen=True, eq=False)
class LayerQuant:
    """How one layer's weight was quantized.

    codes       int8 (symmetric) or uint8 (asymmetric), the weight's shape
    scale       float32, scalar (per tensor) or (K,) (per output channel, axis 0)
    zero_point  int32, same shape as scale (0 for the symmetric grid)
    bits        code width k in [2, 8]
    axis        None (per tensor) or 0 (per output channel)
    scheme      "symmetric" or "asymmetric"
    rule        the clipping rule that chose alpha (sqref.clipping.RULES)
    alpha       float64 boundary, scalar or (K,)
    rounding    "half_even" or "half_away"
    bias_bits   32 (float32 biases) or 16 (float16 biases, counted as 2 bytes)
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: int | None
    scheme: str
    rule: str
    alpha: np.ndarray
    rounding: str
    bias_bits: int = 32

    def dequantize(self) -> np.ndarray:
        """w_hat = s * (q - z) as float32 (exact: s is float32 and |q - z| <= 255)."""
        return quant.dequantize(self.codes, self.scale, self.zero_point, axis=self.axis, dtype=np.float32)


def check_layer_quant(q: LayerQuant, where: str = "layer") -> None:
    """Check that a quantization record means something (save and load both call
    this, so sqref never writes a file it cannot read): bits in [2, 8], a known
    scheme, rule and rounding, codes on the scheme's grid (symmetric
    [-(2**(k-1)-1), 2**(k-1)-1], asymmetric [0, 2**k-1]), zero points 0 on the
    symmetric grid and in [0, 2**k-1] on the asymmetric one, scales finite and
    > 0, alphas finite, and scale/zero_point/alpha shaped () or (K,) by axis.
    Raises ValueError naming the layer and the value."""
    if isinstance(q.bits, bool) or not isinstance(q.bits, (int, np.integer)) or not 2 <= q.bits <= 8:
        raise ValueError(f"{where}: bits {q.bits!r} must be an integer in [2, 8]")
    if q.scheme not in quant.SCHEMES or q.rule not in clipping.RULES or q.rounding not in quant.ROUNDINGS:
        raise ValueError(f"{where}: unknown scheme {q.scheme!r}, rule {q.rule!r} or rounding {q.rounding!r}")
    if q.bias_bits not in BIAS_BITS or q.axis not in (None, 0):
        raise ValueError(f"{where}: bias_bits {q.bias_bits!r} must be 32 or 16 and axis {q.axis!r} None or 0")
    codes = np.asarray(q.codes)
    if codes.dtype.kind not in "iu" or codes.ndim < 1:
        raise ValueError(f"{where}: codes must be an integer array, got {codes.dtype} {codes.shape}")
    k = int(q.bits)
    lo, hi = (-(2 ** (k - 1) - 1), 2 ** (k - 1) - 1) if q.scheme == "symmetric" else (0, 2**k - 1)
    if codes.size and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"{where}: codes span [{int(codes.min())}, {int(codes.max())}], outside the {q.scheme} "
                         f"{k}-bit grid [{lo}, {hi}]")
    expected = () if q.axis is None else (codes.shape[0],)
    for key in ("scale", "zero_point", "alpha"):
        a = np.asarray(getattr(q, key))
        if a.shape != expected:
            raise ValueError(f"{where}: {key} has shape {a.shape}, expected {expected} for axis {q.axis}")
    scale, zp, alpha = np.asarray(q.scale), np.asarray(q.zero_point), np.asarray(q.alpha)
    if scale.dtype.kind != "f" or not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError(f"{where}: scales must be finite and > 0, got {scale.tolist()!r}"[:300])
    if alpha.dtype.kind != "f" or not np.all(np.isfinite(alpha)):
        raise ValueError(f"{where}: alpha must be finite, got {alpha.tolist()!r}"[:300])
    if zp.dtype.kind not in "iu":
        raise ValueError(f"{where}: zero_point must be integers, got {zp.dtype}")
    if q.scheme == "symmetric" and np.any(zp != 0):
        raise ValueError(f"{where}: zero_point {zp.tolist()!r} must be 0 on the symmetric grid"[:300])
    if q.scheme == "asymmetric" and (np.any(zp < 0) or np.any(zp > 2**k - 1)):
        raise ValueError(f"{where}: zero_point {zp.tolist()!r} must lie in [0, {2**k - 1}]"[:300])


def parse_bits(spec, names: tuple[str, ...], kinds: tuple[str, ...]) -> dict[str, int]:
    """Bits per parameter layer from an int or a spec string.

    "4" -> every layer 4 bits. "conv=8,fc=4" -> conv layers 8, linear layers 4.
    "8,conv2=2,fc1=3" -> 8 by default, then the named layers (exact names, or a
    name's prefix such as "fc1" for the SVD factors "fc1.v", "fc1.u"). Later
    entries override earlier ones. Unknown layer names are an error; the kind
    keywords "conv" and "fc" may match no layer.
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return {n: quant.check_bits(int(spec)) for n, k in zip(names, kinds) if k in ("conv2d", "linear")}
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"bits must be an int or a spec like 'conv=8,fc=4', got {spec!r}")
    result: dict[str, int] = {}
    targets = [(n, k) for n, k in zip(names, kinds) if k in ("conv2d", "linear")]
    for item in spec.split(","):
        key, _, value = item.strip().rpartition("=")
        try:
            bits = quant.check_bits(int(value))
        except ValueError:
            raise ValueError(f"bits {value.strip()!r} in {spec!r} must be an integer in [2, 8]") from None
        if key == "":
            matched = targets
        elif key == "conv":
            matched = [(n, k) for n, k in targets if k == "conv2d"]
        elif key == "fc":
            matched = [(n, k) for n, k in targets if k == "linear"]
        else:
            matched = [(n, k) for n, k in targets if n == key or n.startswith(key + ".")]
        if not matched and key not in ("conv", "fc"):  # a kind keyword may match nothing (no conv in LeNet-300)
            raise ValueError(f"'{key}' in bits spec {spec!r} names no conv or linear layer "
                             f"(layers: {', '.join(n for n, _ in targets)})")
        for n, _ in matched:
            result[n] = bits
    missing = [n for n, _ in targets if n not in result]
    if missing:
        raise ValueError(f"bits spec {spec!r} gives no width for {', '.join(missing)}; start it with a default, e.g. '8,{spec}'")
    return result


def quantize_layer(layer, name: str, *, bits: int, rule: str = "dynamic", per_channel: bool = False,
                   scheme: str = "symmetric", rounding: str = "half_even", bias_bits: int = 32, rule_params=None):
    """Quantize one Conv2d/Linear layer's weight; returns the new layer.

    alpha = clipping.boundary(w, bits, rule=rule, axis=0 if per_channel else None);
    codes, scale, zero_point = quant.quantize(w, bits, alpha, ...);
    the new layer's weight is the dequantized float32 weight, its bias is
    rounded to float16 when bias_bits == 16.
    """
    if bias_bits not in BIAS_BITS:
        raise ValueError(f"bias_bits must be 32 or 16, got {bias_bits!r}")
    w = np.asarray(layer.weight)
    axis = 0 if per_channel else None
    params = dict(rule_params or {})
    if rule == "dynamic":
        params.setdefault("rounding", rounding)
    alpha = clipping.boundary(w, bits, rule=rule, axis=axis, name=name, **params)
    codes, scale, zero_point = quant.quantize(w, bits=bits, alpha=alpha, scheme=scheme, axis=axis,
                                              rounding=rounding, name=name)
    q = LayerQuant(codes, np.asarray(scale, np.float32), np.asarray(zero_point, np.int32), int(bits), axis, scheme,
                   rule, np.asarray(alpha, np.float64), rounding, bias_bits)
    bias = layer.bias
    if bias is not None and bias_bits == 16:
        bias = bias.astype(np.float16).astype(np.float32)
    return dataclasses.replace(layer, weight=q.dequantize(), bias=bias, quant=q)


def quantize_model(model: Model, *, bits, rule: str = "dynamic", per_channel: bool = False,
                   scheme: str = "symmetric", rounding: str = "half_even", bias_bits: int = 32,
                   rule_params=None) -> Model:
    """Quantize the weights of every Conv2d/Linear layer (activations stay float).

    `bits`: an int for every layer, a dict {layer name: bits}, or a spec
    string for `parse_bits`. Every layer's boundary is derived from its own
    current weights and bit width (the dynamic rule re-derives it for SVD
    factors too: their distributions differ from the original layer's).
    """
    if rule not in clipping.RULES:
        raise ValueError(f"unknown clipping rule {rule!r}; choose one of {', '.join(clipping.RULES)}")
    kinds = tuple(layer.kind for layer in model.layers)
    per_layer = bits if isinstance(bits, dict) else parse_bits(bits, model.names, kinds)
    layers = []
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, PARAM_LAYERS):
            if name not in per_layer:
                raise ValueError(f"no bit width given for layer {name!r}")
            layer = quantize_layer(layer, name, bits=per_layer[name], rule=rule, per_channel=per_channel,
                                   scheme=scheme, rounding=rounding, bias_bits=bias_bits, rule_params=rule_params)
        layers.append(layer)
    meta = {**model.meta, "original_params": model.meta.get("original_params", model.param_count())}
    return dataclasses.replace(model, layers=tuple(layers), meta=meta)
