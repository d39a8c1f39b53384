"""Layers as small frozen dataclasses, a sequential model, and `run`.

A layer holds its arrays and hyperparameters and nothing else; calling it
applies the matching op from `sqref.ops`. Running a model is a loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqref import ops


@dataclass(frozen=True, eq=False)
class Conv2d:
    """conv2d(x, weight, bias, stride, padding, dilation, groups). weight OIHW.
    `weight` is always the float array the engine runs; for a quantized layer
    it is the dequantized codes (see sqref.qmodel)."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    quant: object = None  # sqref.qmodel.LayerQuant when the weight is k-bit codes
    kind = "conv2d"

    def __call__(self, x):
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=self.groups)

    def hyper(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


@dataclass(frozen=True, eq=False)
class Linear:
    """linear(x, weight, bias). weight (OUT, IN); bias may be None (SVD factors)."""

    weight: np.ndarray
    bias: np.ndarray | None
    quant: object = None  # sqref.qmodel.LayerQuant when the weight is k-bit codes
    kind = "linear"

    def __call__(self, x):
        return ops.linear(x, self.weight, self.bias)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True)
class ReLU:
    kind = "relu"

    def __call__(self, x):
        return ops.relu(x)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True)
class MaxPool2d:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    kind = "max_pool2d"

    def __call__(self, x):
        return ops.max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def hyper(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


@dataclass(frozen=True)
class AvgPool2d:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    kind = "avg_pool2d"

    def __call__(self, x):
        return ops.avg_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def hyper(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}


@dataclass(frozen=True)
class Flatten:
    kind = "flatten"

    def __call__(self, x):
        return ops.flatten(x)

    def hyper(self) -> dict:
        return {}


LAYER_TYPES = (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten)
PARAM_LAYERS = (Conv2d, Linear)


@dataclass(frozen=True, eq=False)
class Model:
    """A sequential model: `layers` applied in order to an (N, *input_shape) batch.

    `names` gives each layer a stable name (e.g. "conv1", "fc2") used in
    reports, file groups and error messages. `meta` holds free-form string
    metadata (training recipe, preprocessing) saved with the file.
    """

    layers: tuple
    input_shape: tuple[int, ...]
    names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.names:
            object.__setattr__(self, "names", default_names(self.layers))
        if len(self.names) != len(self.layers):
            raise ValueError(f"{len(self.names)} names for {len(self.layers)} layers")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"layer names must be unique, got {self.names}")

    def param_count(self) -> int:
        return sum(a.size for layer in self.layers for a in layer_arrays(layer).values())


def default_names(layers) -> tuple[str, ...]:
    """conv1, conv2, ... for Conv2d; fc1, fc2, ... for Linear; kind + index otherwise."""
    counts: dict[str, int] = {}
    names = []
    for index, layer in enumerate(layers):
        prefix = {"conv2d": "conv", "linear": "fc"}.get(layer.kind)
        if prefix is None:
            names.append(f"{layer.kind}{index}")
        else:
            counts[prefix] = counts.get(prefix, 0) + 1
            names.append(f"{prefix}{counts[prefix]}")
    return tuple(names)


def layer_arrays(layer) -> dict[str, np.ndarray]:
    """The parameter arrays of a layer by name ({} for parameter-free layers)."""
    if isinstance(layer, PARAM_LAYERS):
        arrays = {"weight": layer.weight}
        if layer.bias is not None:
            arrays["bias"] = layer.bias
        return arrays
    return {}


def run(model: Model, x, return_intermediates: bool = False):
    """Apply the model's layers in order.

    Shapes: x (N, *model.input_shape) -> logits (N, classes).
    Returns the output, or (output, [output of each layer]) when
    `return_intermediates` is true.
    """
    x = np.asarray(x)
    if x.ndim != len(model.input_shape) + 1 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ValueError(f"input shape {x.shape} does not match the model's (N, {', '.join(map(str, model.input_shape))})")
    outputs = []
    for layer in model.layers:
        x = layer(x)
        if return_intermediates:
            outputs.append(x)
    return (x, outputs) if return_intermediates else x


def predict(model: Model, x, *, batch_size: int = 500, progress=None) -> np.ndarray:
    """Class predictions (argmax of the logits), computed in batches."""
    preds = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        preds[start : start + batch_size] = np.argmax(run(model, x[start : start + batch_size]), axis=1)
        if progress is not None:
            progress(min(start + batch_size, len(x)))
    return preds


def infer_shapes(model: Model) -> list[tuple[int, ...]]:
    """Output shape (without the batch axis) of every layer, checking that
    each layer's arrays and hyperparameters fit its input. Touches no data, so
    it is safe on a model read from an untrusted file before running it."""
    shape = tuple(model.input_shape)
    shapes = []
    for name, layer in zip(model.names, model.layers):
        shape = _layer_output_shape(name, layer, shape)
        shapes.append(shape)
    return shapes


def _layer_output_shape(name, layer, shape):
    where = f"layer {name!r} ({layer.kind})"
    if isinstance(layer, Conv2d):
        if len(shape) != 3:
            raise ValueError(f"{where} needs a (C, H, W) input, got {shape}")
        if layer.weight.ndim != 4:
            raise ValueError(f"{where}: weight must be 4-D (K, C/groups, KH, KW), got {layer.weight.shape}")
        C, H, W = shape
        K, CG, KH, KW = layer.weight.shape
        g = layer.groups
        if g < 1 or C % g or K % g or CG * g != C:
            raise ValueError(f"{where}: weight {layer.weight.shape} with groups={g} does not fit input channels C={C}")
        if layer.bias is not None and layer.bias.shape != (K,):
            raise ValueError(f"{where}: bias must have shape ({K},), got {layer.bias.shape}")
        if min(layer.stride) < 1 or min(layer.dilation) < 1 or min(layer.padding) < 0:
            raise ValueError(f"{where}: stride {layer.stride} and dilation {layer.dilation} must be >= 1, padding {layer.padding} >= 0")
        OH = ops.output_size(H, KH, stride=layer.stride[0], padding=layer.padding[0], dilation=layer.dilation[0])
        OW = ops.output_size(W, KW, stride=layer.stride[1], padding=layer.padding[1], dilation=layer.dilation[1])
        if OH < 1 or OW < 1:
            raise ValueError(f"{where}: kernel {KH}x{KW} does not fit input {H}x{W}")
        return (K, OH, OW)
    if isinstance(layer, Linear):
        if len(shape) != 1:
            raise ValueError(f"{where} needs a flat (IN,) input, got {shape}; add a flatten layer")
        if layer.weight.ndim != 2 or layer.weight.shape[1] != shape[0]:
            raise ValueError(f"{where}: weight must have shape (OUT, {shape[0]}), got {layer.weight.shape}")
        if layer.bias is not None and layer.bias.shape != (layer.weight.shape[0],):
            raise ValueError(f"{where}: bias must have shape ({layer.weight.shape[0]},), got {layer.bias.shape}")
        return (layer.weight.shape[0],)
    if isinstance(layer, (MaxPool2d, AvgPool2d)):
        if len(shape) != 3:
            raise ValueError(f"{where} needs a (C, H, W) input, got {shape}")
        (KH, KW), (SH, SW), (PH, PW) = layer.kernel_size, layer.stride, layer.padding
        if min(KH, KW, SH, SW) < 1 or min(PH, PW) < 0 or PH > KH // 2 or PW > KW // 2:
            raise ValueError(f"{where}: kernel {layer.kernel_size}, stride {layer.stride}, padding {layer.padding} are invalid")
        OH = ops.output_size(shape[1], KH, stride=SH, padding=PH)
        OW = ops.output_size(shape[2], KW, stride=SW, padding=PW)
        if OH < 1 or OW < 1:
            raise ValueError(f"{where}: kernel {KH}x{KW} does not fit input {shape[1]}x{shape[2]}")
        return (shape[0], OH, OW)
    if isinstance(layer, Flatten):
        size = 1
        for d in shape:
            size *= d
        return (size,)
    if isinstance(layer, ReLU):
        return shape
    raise TypeError(f"{where}: unknown layer type {type(layer).__name__}")
