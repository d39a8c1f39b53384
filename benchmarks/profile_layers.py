"""Where the time goes: per layer and per phase, for the float path and the integer path.

    python benchmarks/profile_layers.py [--batch 64] [--repeats 7] [--models lenet5 lenet300 small_vgg]

For LeNet-5 and LeNet-300-100 (data/*.h5, MNIST test images) and the small VGG (random
weights from sqref.zoo, random 3x32x32 images), the float path (sqref.run's
layer loop) and the integer path (sqref.integer.run_integer on the 8-bit
IntegerModel, "max" calibration on 300 inputs, mode onnxruntime, exact
accumulation) are run `--repeats` times; each cell is the median over the
runs of the time spent in one phase of one layer, in ms (self time: a
phase nested in another is not counted twice).

Phases, measured by wrapping the library's own functions for the duration of
the profile (the functions that run are the shipped ones):

    im2col    ops.grid_im2col / ops.im2col: the column matrix
    GEMM      np.matmul (the float conv's GEMM, and every float32 block of
              integer.exact_matmul); x @ w.T of a float linear layer
    copy      the rest of ops.conv_gemm (chunks, cropping the padded grid,
              the transpose to NCHW, the cast into the int64 accumulator) and
              of integer.exact_matmul (int64 block sums); flatten
    cast      the rest of integer.conv2d_accumulate / linear_accumulate (and of the
              fused conv2d_requant / linear_requant): checks and the float32
              (x - z_x) of the uint8 codes
    bias/act  the float bias add and ReLU layers
    pool      pooling layers
    requant   integer.requantize_layer (int32 bias, requantization, uint8 codes),
              or kernels.requant_in_place on each chunk of the fused path;
              the input QUANTIZE of the integer path is its own row
    other     what no phase above claims (the layer's own checks and glue)

The numbers are for reading proportions: the wrappers add a few microseconds
per call, and on a shared machine only the medians mean anything.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections import defaultdict

import numpy as np

import sqref
from sqref import data, integer, ops, qmodel, zoo
from sqref.integer import kernels
from sqref.integer import run as irun
from sqref.model import INPUT, Conv2d, Flatten, Linear, MaxPool2d, ReLU, last_reads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("im2col", "GEMM", "copy", "cast", "bias/act", "pool", "requant", "other")


class PhaseClock:
    """Self time per (layer, phase): a stack of running phases, each charged its time minus its children's."""

    def __init__(self):
        self.times = defaultdict(float)
        self.layer = None
        self._stack = []  # [phase, start, time spent in children]

    @contextlib.contextmanager
    def phase(self, name):
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            name, start, children = self._stack.pop()
            spent = time.perf_counter() - start
            self.times[(self.layer, name)] += spent - children
            if self._stack:
                self._stack[-1][2] += spent

    def wrap(self, fn, name):
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return timed


@contextlib.contextmanager
def patched(clock):
    """Route the library's phase functions through `clock` (restored on exit)."""
    targets = [(ops, "grid_im2col", "im2col"), (ops, "im2col", "im2col"), (ops, "conv_gemm", "copy"),
               (kernels, "conv_gemm", "copy"), (kernels, "exact_matmul", "copy"),
               (irun, "conv2d_accumulate", "cast"), (irun, "linear_accumulate", "cast"),
               (irun, "conv2d_requant", "cast"), (irun, "linear_requant", "cast"),
               (irun, "requantize_layer", "requant"), (kernels, "requant_in_place", "requant"),
               (irun, "max_pool2d_codes", "pool"),
               (np, "matmul", "GEMM")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in targets]
    try:
        for mod, attr, name in targets:
            setattr(mod, attr, clock.wrap(getattr(mod, attr), name))
        # conv_gemm's default matmul was bound at import: pass the timed one explicitly
        float_gemm = ops.conv_gemm
        ops.conv_gemm = lambda *a, **k: float_gemm(*a, **{"matmul": np.matmul, **k})
        yield
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


def float_layer(clock, layer, inputs):
    """One float layer, its phases charged to `clock` (the same calls as the layer's __call__)."""
    if isinstance(layer, Linear):  # ops.linear's two steps, timed apart
        x, = inputs
        with clock.phase("GEMM"):
            y = x @ layer.weight.T
        with clock.phase("bias/act"):
            return y + layer.bias
    kind = "bias/act" if isinstance(layer, (Conv2d, ReLU)) else "pool" if isinstance(layer, MaxPool2d) else \
        "copy" if isinstance(layer, Flatten) else "other"
    with clock.phase(kind):
        return layer(*inputs)


def profile_float(model, x, clock):
    """sqref.run's loop (model.run), each layer under clock; a conv's self time (ops.conv2d's checks and
    bias add, outside conv_gemm) is its bias/act."""
    env, last = {INPUT: x}, last_reads(model)
    for i, (name, layer, reads) in enumerate(zip(model.names, model.layers, model.wiring)):
        clock.layer = name
        env[name] = float_layer(clock, layer, [env[r] for r in reads])
        for r in set(reads):
            if last.get(r, -1) <= i:
                del env[r]
    return env[model.outputs[0]]


def profile_integer(imodel, x, clock):
    """run_integer with the current layer's name charged: apply_layer is wrapped to set it."""
    apply_layer, quantize_input = irun.apply_layer, irun.quantize_input
    names = {id(layer): name for name, layer in zip(imodel.names, imodel.layers)}

    def named(layer, *args, **kwargs):
        clock.layer = names[id(layer)]
        with clock.phase("other"):
            return apply_layer(layer, *args, **kwargs)

    def quantize(*args, **kwargs):
        clock.layer = "input QUANTIZE"
        with clock.phase("requant"):
            return quantize_input(*args, **kwargs)

    irun.apply_layer, irun.quantize_input = named, quantize
    try:
        return integer.run_integer(imodel, x)
    finally:
        irun.apply_layer, irun.quantize_input = apply_layer, quantize_input


def build(name, batch, calibration):
    """(float model, IntegerModel, input batch) for a profile."""
    if name in ("lenet5", "lenet300"):
        model = sqref.load(os.path.join(ROOT, f"data/{name}.h5"))
        x_train, _ = data.load_split(split="train")
        x, _ = data.load_split(split="test")
        calib, x = x_train[:calibration], x[:batch]
    else:
        model = zoo.ARCHITECTURES[name](0)
        rng = np.random.default_rng(0)
        calib = rng.random((calibration, *model.input_shape), dtype=np.float32)
        x = rng.random((batch, *model.input_shape), dtype=np.float32)
    qm = qmodel.quantize_model(model, bits=8)
    imodel = integer.build_integer_model(qm, integer.calibrate(qm, calib))
    return qm, imodel, x


def median_table(runs, rows):
    """{(layer, phase): median ms over the runs} for the given layer rows."""
    return {(r, p): 1e3 * statistics.median(run.get((r, p), 0.0) for run in runs) for r in rows for p in PHASES}


def print_table(title, rows, cells, wall):
    used = [p for p in PHASES if any(cells[(r, p)] >= 0.005 for r in rows)]
    print(f"\n{title}: median of the runs, ms; wall {wall:.2f} ms (median, same runs)")
    print("| layer | " + " | ".join(used) + " | total |")
    print("|---|" + "---|" * (len(used) + 1))
    totals = defaultdict(float)
    for r in rows:
        row = [cells[(r, p)] for p in used]
        for p, v in zip(used, row):
            totals[p] += v
        print(f"| {r} | " + " | ".join(f"{v:.2f}" if v >= 0.005 else "" for v in row) + f" | {sum(row):.2f} |")
    grand = sum(totals.values())
    print("| **total** | " + " | ".join(f"**{totals[p]:.2f}**" for p in used) + f" | **{grand:.2f}** |")
    print("| share | " + " | ".join(f"{100 * totals[p] / grand:.0f}%" for p in used) + " | |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calibration", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["lenet5", "small_vgg"],
                        choices=["lenet5", "lenet300", "small_vgg"])
    args = parser.parse_args(argv)
    print(f"batch {args.batch}; median of {args.repeats} profiled runs after one warm-up; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for name in args.models:
        qm, imodel, x = build(name, args.batch, args.calibration)
        want_f, want_i = sqref.run(qm, x), integer.run_integer(imodel, x)
        for path, fn, rows, want in (("float", profile_float, list(qm.names), want_f),
                                     ("integer", profile_integer, ["input QUANTIZE"] + list(imodel.names), want_i)):
            target = qm if path == "float" else imodel
            runs, walls = [], []
            for i in range(args.repeats + 1):
                clock = PhaseClock()
                start = time.perf_counter()
                with patched(clock):
                    out = fn(target, x, clock)
                if i:  # the first run warms up
                    walls.append(time.perf_counter() - start)
                    runs.append(clock.times)
            if not np.array_equal(out, want):
                raise RuntimeError(f"{name} {path}: the profiled run's output differs from the plain run's")
            print_table(f"{name}, {path} path, batch {args.batch}", rows, median_table(runs, rows),
                        1e3 * statistics.median(walls))


if __name__ == "__main__":
    main()
