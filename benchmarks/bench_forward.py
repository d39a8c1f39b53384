"""Float forward throughput: sqref vs PyTorch (CPU) and onnxruntime, measured side by side.

    python benchmarks/bench_forward.py [--repeats 7] [--threads 2]

Prints images/s for each model (LeNet-5, LeNet-300-100, the small VGG, and
the graph models ResNet-mini and MobileNetV2-mini from data/resnet_mini.h5 and
data/mobilenet_mini.h5: residual adds, depthwise convolutions, ReLU6,
hard-swish, global average pool) and batch size (64, 1), the ratios sqref / PyTorch and sqref / onnxruntime
(both with `--threads` intra-op threads; onnxruntime runs the same float
graph, built by `float_onnx`), sqref's achieved GFLOP/s, and numpy's own
float32 GEMM peak measured in the same run (so the ratios, not the
absolute numbers, are what to compare across noisy machines). Median of
`--repeats` timed runs after one warm-up; the three engines alternate
model by model, and their outputs are compared before timing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import sqref
from sqref import zoo
from sqref.model import INPUT, Add, Clip, Conv2d, Flatten, GlobalAvgPool, HardSwish, Linear, MaxPool2d, ReLU, \
    infer_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAPH_MODELS = {"resnet_mini": "data/resnet_mini.h5", "mobilenet_mini": "data/mobilenet_mini.h5"}


# PyTorch's and onnxruntime's worker threads spin-wait for a while after a call;
# timed right after them, sqref's BLAS threads would share the two cores with
# those spinners (most visible on the short batch-1 runs). Every measurement
# therefore starts with this pause.
SETTLE_SECONDS = 0.5


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after a pause and one warm-up call."""
    time.sleep(SETTLE_SECONDS)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the conv and linear layers for one image."""
    flops = 0
    for layer, out in zip(model.layers, infer_shapes(model)):  # a grouped conv's weight holds C/groups
        if isinstance(layer, Conv2d):
            K, CG, KH, KW = layer.weight.shape
            flops += 2 * K * CG * KH * KW * out[1] * out[2]
        elif isinstance(layer, Linear):
            flops += 2 * layer.weight.size
    return flops


def gemm_peak(repeats: int) -> float:
    """numpy float32 GEMM GFLOP/s on a 1024^3 product (a compute-bound size)."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
    return 2 * 1024**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def float_onnx(model):
    """The float ONNX graph (opset 21) of a sqref model of Conv2d/MaxPool2d/Flatten/Linear/ReLU, and for the
    graph models Add (of two tensors)/Clip/HardSwish/GlobalAvgPool, wired as model.wiring."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for name, layer, reads in zip(model.names, model.layers, model.wiring):
        out, prev = name, list(reads)
        if isinstance(layer, Conv2d):
            inits += [numpy_helper.from_array(layer.weight, f"{name}.w"),
                      numpy_helper.from_array(layer.bias, f"{name}.b")]
            ph, pw = layer.padding
            nodes.append(helper.make_node("Conv", prev + [f"{name}.w", f"{name}.b"], [out], strides=list(layer.stride),
                                          pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups))
        elif isinstance(layer, MaxPool2d):
            ph, pw = layer.padding
            nodes.append(helper.make_node("MaxPool", prev, [out], kernel_shape=list(layer.kernel_size),
                                          strides=list(layer.stride), pads=[ph, pw, ph, pw]))
        elif isinstance(layer, Flatten):
            nodes.append(helper.make_node("Flatten", prev, [out], axis=1))
        elif isinstance(layer, Linear):
            inits += [numpy_helper.from_array(layer.weight, f"{name}.w"),
                      numpy_helper.from_array(layer.bias, f"{name}.b")]
            nodes.append(helper.make_node("Gemm", prev + [f"{name}.w", f"{name}.b"], [out], transB=1))
        elif isinstance(layer, ReLU):
            nodes.append(helper.make_node("Relu", prev, [out]))
        elif isinstance(layer, Add) and layer.const is None:
            nodes.append(helper.make_node("Add", prev, [out]))
        elif isinstance(layer, Clip):
            inits += [numpy_helper.from_array(np.float32(layer.lo), f"{name}.lo"),
                      numpy_helper.from_array(np.float32(layer.hi), f"{name}.hi")]
            nodes.append(helper.make_node("Clip", prev + [f"{name}.lo", f"{name}.hi"], [out]))
        elif isinstance(layer, HardSwish):
            nodes.append(helper.make_node("HardSwish", prev, [out]))
        elif isinstance(layer, GlobalAvgPool):
            pooled = out if layer.keepdims else f"{name}.4d"
            nodes.append(helper.make_node("GlobalAveragePool", prev, [pooled]))
            if not layer.keepdims:
                nodes.append(helper.make_node("Flatten", [pooled], [out], axis=1))
        else:
            raise ValueError(f"no ONNX op for {type(layer).__name__}")
    graph = helper.make_graph(nodes, "sqref_float",
                              [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *model.input_shape])],
                              [helper.make_tensor_value_info(model.outputs[0], TensorProto.FLOAT, ["N", None])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(proto)
    return proto


def torch_model(model):
    """A torch module computing `model` from its weights: nn.Sequential for a chain, a graph module otherwise."""
    import torch

    layers = []
    for layer in model.layers:
        kind = layer.kind
        if kind == "conv2d":
            m = torch.nn.Conv2d(layer.weight.shape[1] * layer.groups, layer.weight.shape[0], layer.weight.shape[2:],
                                stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            m.weight.data = torch.from_numpy(layer.weight.copy())
            m.bias.data = torch.from_numpy(layer.bias.copy())
        elif kind == "linear":
            m = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data = torch.from_numpy(layer.weight.copy())
            m.bias.data = torch.from_numpy(layer.bias.copy())
        elif kind == "max_pool2d":
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif kind == "relu":
            m = torch.nn.ReLU()
        elif kind == "flatten":
            m = torch.nn.Flatten()
        elif kind == "clip":
            m = torch.nn.Hardtanh(float(layer.lo), float(layer.hi))
        elif kind == "hard_swish":
            m = torch.nn.Hardswish()
        elif kind == "global_avg_pool":
            m = torch.nn.AdaptiveAvgPool2d(1) if layer.keepdims else torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1),
                                                                                          torch.nn.Flatten())
        elif kind == "add" and layer.const is None:
            m = None  # torch.add in GraphModule.forward
        else:
            raise ValueError(f"no torch equivalent for {kind}")
        layers.append(m)
    chain = all(reads == (prev,) for reads, prev in zip(model.wiring, (INPUT,) + tuple(model.names)))
    if chain and None not in layers:
        return torch.nn.Sequential(*layers).eval()

    class GraphModule(torch.nn.Module):
        """model.wiring run in layer order, as sqref.run does."""

        def __init__(self):
            super().__init__()
            self.ops = torch.nn.ModuleList([torch.nn.Identity() if m is None else m for m in layers])

        def forward(self, x):
            env = {INPUT: x}
            for name, op, m, reads in zip(model.names, self.ops, layers, model.wiring):
                env[name] = torch.add(env[reads[0]], env[reads[1]]) if m is None else op(env[reads[0]])
            return env[model.outputs[0]]

    return GraphModule().eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2,
                        help="PyTorch and onnxruntime intra-op threads (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch is not installed (pip install -e '.[backends]'): its column is empty")
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("onnxruntime is not installed (pip install -e '.[backends]'): its column is empty")
    peak = gemm_peak(args.repeats)
    print(f"numpy float32 GEMM peak (1024^3): {peak:.1f} GFLOP/s; torch and onnxruntime threads {args.threads}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    header = (f"{'model':<14} {'batch':>5} {'sqref img/s':>12} {'torch img/s':>12} {'ort img/s':>10} "
              f"{'vs torch':>8} {'vs ort':>7} {'sqref GFLOP/s':>14} {'% of peak':>9}")
    print(header)
    print("-" * len(header))
    for name in ("lenet5", "lenet300", "small_vgg", *GRAPH_MODELS):
        if name in GRAPH_MODELS:
            model = sqref.load(os.path.join(ROOT, GRAPH_MODELS[name]))
        else:
            model = zoo.ARCHITECTURES[name](0)
        flops = forward_flops(model)
        tm = torch_model(model) if torch is not None else None
        session = None
        if ort is not None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(float_onnx(model).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
        for batch in (64, 1):
            x = np.random.default_rng(0).random((batch, *model.input_shape), dtype=np.float32)
            want = sqref.run(model, x)
            t_sqref = median_seconds(lambda: sqref.run(model, x), args.repeats)
            cells = []
            if tm is not None:
                tx = torch.from_numpy(x)
                with torch.inference_mode():
                    # float32 sums in different orders: agreement to 1e-3 shows they run the same model
                    np.testing.assert_allclose(want, tm(tx).numpy(), rtol=1e-3, atol=1e-3)
                    t_torch = median_seconds(lambda: tm(tx), args.repeats)
                cells.append(t_torch)
            else:
                cells.append(None)
            if session is not None:
                np.testing.assert_allclose(want, session.run(None, {"input": x})[0], rtol=1e-3, atol=1e-3)  # as above
                cells.append(median_seconds(lambda: session.run(None, {"input": x}), args.repeats))
            else:
                cells.append(None)
            rates = [f"{batch / t:{w}.0f}" if t else f"{'-':>{w}}" for t, w in zip(cells, (12, 10))]
            ratios = [f"{t / t_sqref:{w}.2f}" if t else f"{'-':>{w}}" for t, w in zip(cells, (8, 7))]
            gflops = flops * batch / t_sqref / 1e9
            print(f"{name:<14} {batch:>5} {batch / t_sqref:12.0f} {rates[0]} {rates[1]} {ratios[0]} {ratios[1]} "
                  f"{gflops:14.1f} {100 * gflops / peak:8.0f}%")


if __name__ == "__main__":
    main()
