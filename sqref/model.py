"""Layers as small frozen dataclasses, a model as a graph of them, and `run`.

A layer holds its arrays and hyperparameters and nothing else; calling it on
its input tensors applies the matching op from `sqref.ops`.

A model is a directed acyclic graph of named tensors. Its inputs are named
tensors ("input" for the first); every layer writes one tensor named by the
layer's name and reads the tensors its `wiring` entry names, each an input or
an earlier layer (the layers are stored in topological order, so a graph
read from a file cannot hold a cycle). A chain, the model sqref started with,
is the special case where each layer reads the previous one: `Model(layers,
input_shape)` without wiring builds it. Running a model is a loop over the
layers that keeps each tensor only until its last reader has run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqref import ops

INPUT = "input"  # the name of a model's first input tensor


# --------------------------------------------------------------------------
# layers with weights (quantizable)
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# one-input layers without weights
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReLU:
    kind = "relu"

    def __call__(self, x):
        return ops.relu(x)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True)
class MaxPool2d:
    """max_pool2d; padding (PH, PW) or ONNX-ordered (top, left, bottom, right)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    kind = "max_pool2d"

    def __call__(self, x):
        return ops.max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, ceil_mode=self.ceil_mode)

    def hyper(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "ceil_mode": self.ceil_mode}


@dataclass(frozen=True)
class AvgPool2d:
    """avg_pool2d; count_include_pad=True is torch's default (ONNX's is False)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True
    kind = "avg_pool2d"

    def __call__(self, x):
        return ops.avg_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                              dilation=self.dilation, ceil_mode=self.ceil_mode,
                              count_include_pad=self.count_include_pad)

    def hyper(self) -> dict:
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad}


@dataclass(frozen=True)
class GlobalAvgPool:
    """global_avg_pool: (C, H, W) -> (C, 1, 1), or (C,) without keepdims
    (ONNX GlobalAveragePool; ReduceMean over H, W)."""

    keepdims: bool = True
    kind = "global_avg_pool"

    def __call__(self, x):
        y = ops.global_avg_pool(x)
        return y if self.keepdims else y.reshape(y.shape[:2])

    def hyper(self) -> dict:
        return {"keepdims": self.keepdims}


@dataclass(frozen=True)
class Flatten:
    kind = "flatten"

    def __call__(self, x):
        return ops.flatten(x)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True)
class Reshape:
    """reshape to (N, *shape): `shape` is the per-sample shape, fully resolved
    (no 0 or -1: the importer resolves ONNX's)."""

    shape: tuple[int, ...]
    kind = "reshape"

    def __call__(self, x):
        return ops.reshape(x, (x.shape[0],) + tuple(self.shape))

    def hyper(self) -> dict:
        return {"shape": self.shape}


@dataclass(frozen=True)
class Pad:
    """pad2d with zeros: `pads` (top, left, bottom, right), e.g. TensorFlow's SAME
    padding before a stride-2 convolution."""

    pads: tuple[int, int, int, int]
    kind = "pad"

    def __call__(self, x):
        return ops.pad2d(x, self.pads)

    def hyper(self) -> dict:
        return {"pads": self.pads}


@dataclass(frozen=True)
class Clip:
    """clip(x, lo, hi); ReLU6 is Clip(0.0, 6.0). An infinite bound is no bound."""

    lo: float = -np.inf
    hi: float = np.inf
    kind = "clip"

    def __call__(self, x):
        return ops.clip(x, None if self.lo == -np.inf else self.lo, None if self.hi == np.inf else self.hi)

    def hyper(self) -> dict:
        return {"lo": float(self.lo), "hi": float(self.hi)}


@dataclass(frozen=True)
class Sigmoid:
    kind = "sigmoid"

    def __call__(self, x):
        return ops.sigmoid(x)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True)
class HardSigmoid:
    """max(0, min(1, alpha*x + beta)); ONNX's defaults (torch's alpha is 1/6)."""

    alpha: float = 0.2
    beta: float = 0.5
    kind = "hard_sigmoid"

    def __call__(self, x):
        return ops.hard_sigmoid(x, self.alpha, self.beta)

    def hyper(self) -> dict:
        return {"alpha": float(self.alpha), "beta": float(self.beta)}


@dataclass(frozen=True)
class HardSwish:
    kind = "hard_swish"

    def __call__(self, x):
        return ops.hard_swish(x)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True, eq=False)
class BatchNorm:
    """batch_norm in inference mode over axis 1 (channels), when it cannot be
    folded into a preceding conv or linear layer."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = 1e-5
    kind = "batch_norm"

    def __call__(self, x):
        return ops.batch_norm(x, self.gamma, self.beta, self.mean, self.var, eps=self.eps)

    def hyper(self) -> dict:
        return {"eps": float(self.eps)}


# --------------------------------------------------------------------------
# layers that combine tensors
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Binary:
    """An elementwise op of two tensors (NumPy broadcasting), or of one tensor
    and the constant `const` (its per-sample shape: no batch axis)."""

    const: np.ndarray | None = None

    def __call__(self, a, b=None):
        if (b is None) == (self.const is None):
            raise ValueError(f"{self.kind} takes two tensors, or one tensor and its constant")
        return self.op(a, self.const if b is None else b)

    def hyper(self) -> dict:
        return {}


@dataclass(frozen=True, eq=False)
class Add(_Binary):
    kind = "add"
    op = staticmethod(lambda a, b: ops.add(a, b))


@dataclass(frozen=True, eq=False)
class Mul(_Binary):
    kind = "mul"
    op = staticmethod(lambda a, b: ops.mul(a, b))


@dataclass(frozen=True, eq=False)
class Div(_Binary):
    """a / b in float32; with a constant, the constant is the divisor."""

    kind = "div"
    op = staticmethod(lambda a, b: ops.div(a, b))


@dataclass(frozen=True)
class Concat:
    """concat along `axis` of the (N, ...) tensors; axis >= 1 (never the batch)."""

    axis: int = 1
    kind = "concat"

    def __call__(self, *xs):
        return ops.concat(xs, axis=self.axis)

    def hyper(self) -> dict:
        return {"axis": self.axis}


LAYER_TYPES = (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, GlobalAvgPool, Flatten, Reshape, Pad, Clip, Sigmoid,
               HardSigmoid, HardSwish, BatchNorm, Add, Mul, Div, Concat)
PARAM_LAYERS = (Conv2d, Linear)  # the layers with weights to train, quantize and factor
# the fields of each layer type that hold arrays (the others are hyperparameters)
ARRAY_FIELDS = {Conv2d: ("weight", "bias"), Linear: ("weight", "bias"), BatchNorm: ("gamma", "beta", "mean", "var"),
                Add: ("const",), Mul: ("const",), Div: ("const",)}


def arity(layer) -> tuple[int, int]:
    """(fewest, most) input tensors a layer reads."""
    if isinstance(layer, Concat):
        return 1, 1024
    if isinstance(layer, _Binary):
        return (1, 1) if layer.const is not None else (2, 2)
    return 1, 1


# --------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Model:
    """A graph of layers run on (N, *input_shape) batches.

    layers        in topological order
    input_shape   the first input's shape without the batch axis
    names         one per layer, unique: the name of the tensor it writes and
                  of its file group (default: conv1, conv2, ..., fc1, ...)
    meta          free-form metadata saved with the file (recipe, source)
    wiring        per layer, the names of the tensors it reads: model inputs
                  or earlier layers; () = a chain (layer i reads layer i-1)
    outputs       the tensors `run` returns; () = the last layer's
    extra_inputs  ((name, shape), ...) of inputs beyond the first
    """

    layers: tuple
    input_shape: tuple[int, ...]
    names: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)
    wiring: tuple[tuple[str, ...], ...] = ()
    outputs: tuple[str, ...] = ()
    extra_inputs: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731 (frozen)
        set_("layers", tuple(self.layers))
        set_("input_shape", tuple(int(d) for d in self.input_shape))
        set_("names", tuple(self.names) or default_names(self.layers))
        if len(self.names) != len(self.layers):
            raise ValueError(f"{len(self.names)} names for {len(self.layers)} layers")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"layer names must be unique, got {self.names}")
        set_("extra_inputs", tuple((str(n), tuple(int(d) for d in s)) for n, s in self.extra_inputs))
        if not self.wiring:
            set_("wiring", chain_wiring(self.names))
        set_("wiring", tuple(tuple(reads) for reads in self.wiring))
        if not self.outputs and self.names:
            set_("outputs", (self.names[-1],))
        set_("outputs", tuple(self.outputs))
        check_wiring(self)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (INPUT,) + tuple(name for name, _ in self.extra_inputs)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {INPUT: self.input_shape, **dict(self.extra_inputs)}

    @property
    def is_chain(self) -> bool:
        """One input, one output (the last layer), each layer reading the previous one."""
        return not self.extra_inputs and self.wiring == chain_wiring(self.names) and \
            self.outputs == self.names[-1:]

    def param_count(self) -> int:
        return sum(a.size for layer in self.layers for a in layer_arrays(layer).values())


class GraphBuilder:
    """Builds a graph model layer by layer: `add(name, layer, *reads)` returns the
    name of the tensor it writes, so a block reads like the network it builds
    (sqref.zoo, sqref.pretrained); `model(input_shape, meta)` makes the Model."""

    def __init__(self):
        self.layers, self.names, self.wiring = [], [], []

    def add(self, name, layer, *reads):
        self.layers.append(layer), self.names.append(name), self.wiring.append(tuple(reads))
        return name

    def model(self, input_shape, meta=None) -> "Model":
        return Model(tuple(self.layers), input_shape, tuple(self.names), dict(meta or {}), tuple(self.wiring))


def chain_wiring(names) -> tuple[tuple[str, ...], ...]:
    return tuple(((INPUT,) if i == 0 else (names[i - 1],)) for i in range(len(names)))


def check_wiring(model: Model) -> None:
    """Every layer reads as many tensors as it takes, each a model input or an
    earlier layer; outputs name tensors that exist; no name is both an input and
    a layer. One-line ValueError naming the layer otherwise."""
    if len(model.wiring) != len(model.layers):
        raise ValueError(f"wiring has {len(model.wiring)} entries for {len(model.layers)} layers")
    inputs = model.input_names
    if len(set(inputs)) != len(inputs) or set(inputs) & set(model.names):
        raise ValueError(f"input names {list(inputs)} must be unique and differ from the layer names")
    known = set(inputs)
    position = {name: i for i, name in enumerate(model.names)}
    for name, layer, reads in zip(model.names, model.layers, model.wiring):
        lo, hi = arity(layer)
        if not lo <= len(reads) <= hi:
            raise ValueError(f"layer {name!r} ({layer.kind}) reads {len(reads)} tensors {list(reads)}, "
                             f"takes {lo if lo == hi else f'{lo} to {hi}'}")
        for r in reads:
            if r not in known:
                if r in position:
                    raise ValueError(f"layer {name!r} reads {r!r}, which comes later: the layers must be in "
                                     f"topological order (sqref.model.toposort), and a cycle has none")
                raise ValueError(f"layer {name!r} reads {r!r}, which is no input and no layer (dangling)")
        known.add(name)
    if not model.outputs or len(set(model.outputs)) != len(model.outputs):
        raise ValueError(f"outputs {list(model.outputs)} must be one or more distinct tensor names")
    for out in model.outputs:
        if out not in known:
            raise ValueError(f"output {out!r} is no input and no layer")


def toposort(nodes, inputs) -> list:
    """Order `nodes`, a list of (name, reads) pairs, so that every node follows
    the nodes it reads (a stable Kahn sort: ties keep the given order). `inputs`
    are the names available from the start. ValueError names a node on a cycle,
    or a dangling name, otherwise. Returns the sorted (name, reads) pairs."""
    producers = {name: i for i, (name, _) in enumerate(nodes)}
    if len(producers) != len(nodes):
        raise ValueError("node names must be unique")
    pending = [0] * len(nodes)
    readers = [[] for _ in nodes]
    for i, (name, reads) in enumerate(nodes):
        for r in set(reads):
            if r in producers:
                pending[i] += 1
                readers[producers[r]].append(i)
            elif r not in inputs:
                raise ValueError(f"node {name!r} reads {r!r}, which no node writes and no input provides (dangling)")
    import heapq
    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in readers[i]:
            pending[j] -= 1
            if pending[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(name for (name, _), p in zip(nodes, pending) if p)
        raise ValueError(f"the graph has a cycle through node {stuck!r}")
    return order


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
    """The arrays of a layer by field name ({} for layers without any)."""
    return {key: getattr(layer, key) for key in ARRAY_FIELDS.get(type(layer), ()) if getattr(layer, key) is not None}


def substitute(model: Model, name: str, new_names, new_layers) -> Model:
    """`model` with layer `name` replaced by a chain of layers: the first reads
    what `name` read, each next one the previous, and every reader of `name`
    (and the outputs) reads the last. Used to split a layer into SVD factors."""
    i = model.names.index(name)
    new_names, new_layers = tuple(new_names), tuple(new_layers)
    last = new_names[-1]
    rename = lambda reads: tuple(last if r == name else r for r in reads)  # noqa: E731
    wiring = (tuple(rename(w) for w in model.wiring[:i]) + (model.wiring[i],)
              + tuple((n,) for n in new_names[:-1]) + tuple(rename(w) for w in model.wiring[i + 1:]))
    return Model(model.layers[:i] + new_layers + model.layers[i + 1:], model.input_shape,
                 model.names[:i] + new_names + model.names[i + 1:], model.meta, wiring,
                 rename(model.outputs), model.extra_inputs)


def _feeds(model: Model, x) -> dict:
    """The input tensors by name, checked against the model's input shapes."""
    if isinstance(x, dict):
        if set(x) != set(model.input_names):
            raise ValueError(f"inputs {sorted(x)} do not match the model's inputs {list(model.input_names)}")
        feeds = {name: np.asarray(v) for name, v in x.items()}
    elif model.extra_inputs:
        raise ValueError(f"the model has inputs {list(model.input_names)}: pass a dict of arrays")
    else:
        feeds = {INPUT: np.asarray(x)}
    batch = None
    for name, shape in model.input_shapes.items():
        a = feeds[name]
        if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape or (batch is not None and len(a) != batch):
            label = "input" if name == INPUT else f"input {name!r}"
            raise ValueError(f"{label} shape {a.shape} does not match the model's (N, {', '.join(map(str, shape))})")
        batch = len(a)
    return feeds


def last_reads(model: Model) -> dict[str, int]:
    """For every tensor, the index of the last layer that reads it (len(layers)
    for the model's outputs, which live to the end)."""
    last = {}
    for i, reads in enumerate(model.wiring):
        for r in reads:
            last[r] = i
    for out in model.outputs:
        last[out] = len(model.layers)
    return last


def run(model: Model, x, return_intermediates: bool = False):
    """Run the layers in order on the input batch.

    x         an (N, *model.input_shape) array, or a dict of arrays by input
              name for a model with several inputs
    returns   the output, (N, ...), or a tuple of them in `model.outputs`
              order when there are several; with `return_intermediates`,
              (output, {layer name: its output}) in layer order, every tensor
              kept. Otherwise a tensor is freed after its last reader.
    """
    env = _feeds(model, x)
    last = last_reads(model)
    kept = {}
    for i, (name, layer, reads) in enumerate(zip(model.names, model.layers, model.wiring)):
        env[name] = layer(*(env[r] for r in reads))
        if return_intermediates:
            kept[name] = env[name]
        else:
            for r in set(reads):
                if last.get(r, -1) <= i:
                    del env[r]
    out = env[model.outputs[0]] if len(model.outputs) == 1 else tuple(env[o] for o in model.outputs)
    return (out, kept) if return_intermediates else out


def predict(model: Model, x, *, batch_size: int = 500, progress=None) -> np.ndarray:
    """Class predictions (argmax of the logits), computed in batches."""
    preds = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        preds[start : start + batch_size] = np.argmax(run(model, x[start : start + batch_size]), axis=1)
        if progress is not None:
            progress(min(start + batch_size, len(x)))
    return preds


# --------------------------------------------------------------------------
# shape inference
# --------------------------------------------------------------------------
def tensor_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    """The shape (without the batch axis) of every tensor, inputs and layers,
    checking that each layer's arrays and hyperparameters fit its inputs.
    Touches no data, so it is safe on a model read from an untrusted file
    before running it."""
    shapes = dict(model.input_shapes)
    for name, layer, reads in zip(model.names, model.layers, model.wiring):
        shapes[name] = _layer_output_shape(name, layer, [shapes[r] for r in reads])
    return shapes


def infer_shapes(model: Model) -> list[tuple[int, ...]]:
    """Output shape (without the batch axis) of every layer, in layer order."""
    shapes = tensor_shapes(model)
    return [shapes[name] for name in model.names]


def _broadcast(where, a, b):
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        raise ValueError(f"{where}: shapes {a} and {b} do not broadcast") from None


def _layer_output_shape(name, layer, inputs):
    where = f"layer {name!r} ({layer.kind})"
    shape = inputs[0]
    if isinstance(layer, (Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool, BatchNorm, Pad)) and len(shape) != 3:
        raise ValueError(f"{where} needs a (C, H, W) input, got {shape}")
    if isinstance(layer, Conv2d):
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
        if len(layer.padding) not in (2, 4):
            raise ValueError(f"{where}: padding {layer.padding} must be (PH, PW) or (top, left, bottom, right)")
        try:
            geometry = ops.pool_geometry((1,) + shape, layer.kernel_size, layer.stride, layer.padding,
                                         layer.dilation, layer.ceil_mode)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        counts = ops.pool_counts(shape, geometry, count_include_pad=getattr(layer, "count_include_pad", False))
        if counts.min() == 0:
            raise ValueError(f"{where}: with dilation {layer.dilation} and padding {layer.padding} a window covers "
                             f"no element of the {shape[1]}x{shape[2]} input")
        return (shape[0],) + geometry[4]
    if isinstance(layer, GlobalAvgPool):
        return (shape[0], 1, 1) if layer.keepdims else (shape[0],)
    if isinstance(layer, Pad):
        if len(layer.pads) != 4 or min(layer.pads) < 0:
            raise ValueError(f"{where}: pads {layer.pads} must be 4 integers >= 0 (top, left, bottom, right)")
        top, left, bottom, right = layer.pads
        return (shape[0], top + shape[1] + bottom, left + shape[2] + right)
    if isinstance(layer, Flatten):
        return (int(np.prod(shape, dtype=np.int64)),)
    if isinstance(layer, Reshape):
        target = tuple(layer.shape)
        if not target or min(target) < 1 or np.prod(target, dtype=np.int64) != np.prod(shape, dtype=np.int64):
            raise ValueError(f"{where}: cannot reshape {shape} to {target}")
        return target
    if isinstance(layer, BatchNorm):
        for key in ("gamma", "beta", "mean", "var"):
            if getattr(layer, key).shape != (shape[0],):
                raise ValueError(f"{where}: {key} must have shape ({shape[0]},), got {getattr(layer, key).shape}")
        if not layer.eps > 0:
            raise ValueError(f"{where}: eps must be > 0, got {layer.eps}")
        return shape
    if isinstance(layer, Clip):
        if layer.lo > layer.hi:
            raise ValueError(f"{where}: lo {layer.lo} exceeds hi {layer.hi}")
        return shape
    if isinstance(layer, (ReLU, Sigmoid, HardSigmoid, HardSwish)):
        return shape
    if isinstance(layer, _Binary):
        other = layer.const.shape if layer.const is not None else inputs[1]
        if layer.const is not None and layer.const.ndim > len(shape):
            raise ValueError(f"{where}: constant of shape {other} has more axes than the input {shape}")
        out = _broadcast(where, shape, other)
        if layer.const is not None and out != shape:
            raise ValueError(f"{where}: constant of shape {other} would grow the input {shape} to {out}")
        return out
    if isinstance(layer, Concat):
        axis = layer.axis - 1  # per-sample axis
        if not 0 <= axis < len(shape):
            raise ValueError(f"{where}: axis {layer.axis} must be in [1, {len(shape)}] for inputs {shape}")
        for other in inputs[1:]:
            if len(other) != len(shape) or any(a != b for k, (a, b) in enumerate(zip(shape, other)) if k != axis):
                raise ValueError(f"{where}: input shapes {inputs} differ off axis {layer.axis}")
        return shape[:axis] + (sum(s[axis] for s in inputs),) + shape[axis + 1:]
    raise TypeError(f"{where}: unknown layer type {type(layer).__name__}")
