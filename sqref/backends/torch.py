"""PyTorch (fbgemm) as a backend: an IntegerModel run with torch.ops.quantized.

fbgemm computes as sqref's mode "fbgemm": the float bias is added to the
int32 accumulator in float, then one float32 multiply and round half even
(docs/backends.md). torch is an optional dependency, imported here only.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from sqref.integer.model import (IntAvgPool2d, IntConv2d, IntegerModel, IntFlatten, IntLinear, IntMaxPool2d,
                                 IntReLU)
from sqref.integer.requant import dequantize_linear


@contextlib.contextmanager
def fbgemm_engine():
    """torch with its quantized engine set to fbgemm for the duration (the previous one restored);
    a ValueError when the build has none. Yields the torch module."""
    import torch

    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("this torch build has no fbgemm quantized engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield torch
    finally:
        torch.backends.quantized.engine = previous


def run_torch_model(imodel: IntegerModel, codes) -> dict:
    """The integer model as PyTorch quantized ops (fbgemm engine): quantized::conv2d(_relu),
    quantized::linear(_relu) with the float bias, max/avg pooling and reshape on quint8.

    Returns {"input": codes, layer name: uint8 codes, "logits": float32}, as
    sqref.integer.verify compares them.
    """
    with fbgemm_engine() as torch:
        p = imodel.input
        q = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(codes)), p.scale, p.zero_point)
        out = {"input": codes}
        for name, layer in zip(imodel.names, imodel.layers):
            q = _torch_layer(torch, layer, q)
            out[name] = q.int_repr().numpy().copy()
        last = imodel.layers[-1].y
        out["logits"] = dequantize_linear(out[imodel.names[-1]], last.scale, last.zero_point)
        return out


def _torch_weight(torch, layer):
    w = torch.from_numpy(np.ascontiguousarray(layer.weight))
    s = np.asarray(layer.w_scale)
    if s.ndim == 0:
        return torch._make_per_tensor_quantized_tensor(w, float(s), 0)
    return torch._make_per_channel_quantized_tensor(w, torch.from_numpy(s.astype(np.float64)),
                                                    torch.zeros(s.size, dtype=torch.int64), 0)


def _torch_layer(torch, layer, q):
    import torch.nn.functional as F

    if isinstance(layer, IntConv2d):
        bias = torch.from_numpy(layer.bias_float.copy())
        packed = torch.ops.quantized.conv2d_prepack(_torch_weight(torch, layer), bias, list(layer.stride),
                                                    list(layer.padding), list(layer.dilation), layer.groups)
        op = torch.ops.quantized.conv2d_relu if layer.relu else torch.ops.quantized.conv2d
        return op(q, packed, layer.y.scale, layer.y.zero_point)
    if isinstance(layer, IntLinear):
        packed = torch.ops.quantized.linear_prepack(_torch_weight(torch, layer), torch.from_numpy(layer.bias_float.copy()))
        op = torch.ops.quantized.linear_relu if layer.relu else torch.ops.quantized.linear
        return op(q, packed, layer.y.scale, layer.y.zero_point)
    if isinstance(layer, IntMaxPool2d):
        return F.max_pool2d(q, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, IntAvgPool2d):
        return F.avg_pool2d(q, layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, IntFlatten):
        return q.reshape(q.shape[0], -1)
    if isinstance(layer, IntReLU):
        return q if layer.fused else F.relu(q)
    raise TypeError(f"no PyTorch version of {type(layer).__name__}")
