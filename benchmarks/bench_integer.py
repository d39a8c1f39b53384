"""Integer-only inference throughput: sqref's integer path vs its float path vs onnxruntime.

    python benchmarks/bench_integer.py [--repeats 5] [--ort-threads 2] [--calibration 300] [--baseline REV]

For LeNet-5 (data/lenet5.h5), LeNet-300-100 (data/lenet300.h5) and the
residual ResNet-mini (data/resnet_mini.h5), weights
quantized to 8 bits (sqref.qmodel.quantize_model, dynamic rule) and
activations calibrated ("max") on the first `--calibration` TRAIN images:

    float    sqref.run on the weight-quantized model (float32 engine)
    integer  sqref.integer.run_integer on its IntegerModel (exact accumulation)
    ort      onnxruntime on sqref.backends.onnx.export_onnx of the same IntegerModel
             (int8 weights, float input), session built once, logits fetched only

    base     run_integer with sqref/integer/kernels.py and requant.py as they were at git
             revision --baseline (loaded from git beside the current ones), for a
             before/after ratio in the same run; its codes must equal the current ones

on the same inputs: a batch of 64 test images and the 1,000 test images.
Median of `--repeats` timed calls after one warm-up, all in one run. The
ratios (integer / float, integer / ort, integer / base; > 1 means the
integer path is faster) are what to compare across machines. Agreement of
the integer path's and onnxruntime's predictions is printed as a sanity check.

A second table times the exact accumulation's GEMM alone, layer by layer
(LeNet-5, LeNet-300-100 and the small VGG at batch 64, real weight codes,
columns prebuilt), method by method: float32 GEMMs over blocks of 514 (the
bound for any 8-bit operands), float32 GEMMs over the blocks `exact_block`
proves exact for the layer's weights (shipped for convolutions; linear layers
keep 514, see exact_block's docstring), one float64 GEMM
(exact below 2**53), and numpy's int32 matmul (exact below 2**31; numpy has
no integer BLAS). Each is checked against int64 matmul.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

import numpy as np

import sqref
from sqref import data, integer, ops, qmodel, zoo
from sqref.integer import kernels
from sqref.integer import run as irun
from sqref.backends import onnx as onnx_io
from sqref.model import INPUT

from bench_dynamic import git_source, load_module
from bench_forward import median_seconds

# resnet_mini: a graph (residual adds, a global average pool); mobilenet_mini's hard-swish has no integer layer
MODELS = {"lenet5": "data/lenet5.h5", "lenet300": "data/lenet300.h5", "resnet_mini": "data/resnet_mini.h5"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(path, calibration_images):
    """(weight-quantized model, IntegerModel, onnxruntime session) of one model file."""
    qm = qmodel.quantize_model(sqref.load(path), bits=8)
    x_train, _ = data.load_split(split="train")
    imodel = integer.build_integer_model(qm, integer.calibrate(qm, x_train[:calibration_images]))
    return qm, imodel


def load_baseline(revision):
    """(kernels, requant) modules of sqref/integer at git `revision`, or None when git cannot show them."""
    if not revision:
        return None
    sources = [git_source(revision, f"sqref/integer/{name}.py") for name in ("kernels", "requant")]
    if None in sources:
        print(f"baseline {revision!r} not available: no before/after column")
        return None
    folder = tempfile.mkdtemp(prefix="sqref-baseline-")
    old_requant = load_module(sources[1], f"requant_{revision}", folder)
    old_kernels = load_module(sources[0], f"kernels_{revision}", folder)
    old_kernels.requant = old_requant  # the baseline kernels call the baseline requantization
    if not hasattr(old_requant, "quantize_onnxruntime_uint8"):  # what run_integer calls, as the baseline did it
        old_requant.quantize_onnxruntime_uint8 = lambda x, scale, zero_point, *, qmin, qmax: old_requant.quantize_linear(
            x, scale, zero_point, qmin=qmin, qmax=qmax, mode="onnxruntime").astype(np.uint8)
    return old_kernels, old_requant


@contextlib.contextmanager
def baseline_kernels(base):
    """run_integer with the baseline's accumulators and requantization (restored on exit)."""
    old_kernels, old_requant = base
    names = ("conv2d_accumulate", "linear_accumulate", "requantize_layer", "max_pool2d_codes", "avg_pool2d_codes",
             "conv2d_requant", "linear_requant")
    saved = {name: getattr(irun, name) for name in names}
    saved_requant = irun.requant
    try:
        for name in names:
            setattr(irun, name, getattr(old_kernels, name, None) or two_steps(old_kernels, name))
        irun.requant = old_requant
        yield
    finally:
        for name, fn in saved.items():
            setattr(irun, name, fn)
        irun.requant = saved_requant


def two_steps(kernels, name):
    """conv2d_requant / linear_requant of a revision that had no fused kernels: its accumulator, then its
    requantize_layer (what run_integer called there)."""
    def conv(q, layer):
        acc = kernels.conv2d_accumulate(q, layer.weight, x_zero_point=layer.x.zero_point, stride=layer.stride,
                                        padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        return kernels.requantize_layer(acc, layer, mode="onnxruntime")

    def linear(q, layer):
        acc = kernels.linear_accumulate(q, layer.weight, x_zero_point=layer.x.zero_point)
        return kernels.requantize_layer(acc, layer, mode="onnxruntime")
    return {"conv2d_requant": conv, "linear_requant": linear}[name]


def gemm_operands(imodel, x):
    """(layer name, weights (O, K) float32, activations (K, M) float32, zero point) of every conv and linear
    layer of `imodel` on input x: what the exact accumulation multiplies, columns prebuilt."""
    _, codes = integer.run_integer(imodel, x, return_intermediates=True)
    env = dict(zip(imodel.names, codes))
    env[INPUT] = irun.quantize_input(imodel, x)
    out = []
    for name, layer, reads in zip(imodel.names, imodel.layers, imodel.wiring):
        if not isinstance(layer, (integer.IntConv2d, integer.IntLinear)) or getattr(layer, "groups", 1) != 1:
            continue
        q = env[reads[0]]
        zx = layer.x.zero_point
        centred = np.subtract(q, np.float32(zx), dtype=np.float32)
        w = layer.weight.reshape(len(layer.weight), -1).astype(np.float32)
        if isinstance(layer, integer.IntConv2d):
            cols = ops.im2col(centred, layer.weight.shape[2:], stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation)
        else:
            cols = centred.T.copy()
        out.append((name, layer.weight, w, cols, zx))
    return out


def gemm_methods(models, batch, repeats, base):
    """The exact accumulation's GEMM, method by method, per layer (see the module docstring)."""
    print(f"\nexact accumulation, GEMM only (columns prebuilt), batch {batch}, ms; median of {repeats}")
    header = (f"{'model':<11} {'layer':<14} {'O x K x M':>20} {'blocks':>6} {'514-blocks':>10} {'proven':>8} "
              f"{'float64':>8} {'int32':>8} {'514/proven':>10} {'f64/proven':>10}")
    print(header)
    print("-" * len(header))
    totals = np.zeros(4)
    blocks_514 = base[0].exact_matmul if base is not None else kernels.exact_matmul  # the method before
    for name, (imodel, x) in models.items():
        for layer, wq, w, cols, zx in gemm_operands(imodel, x[:batch]):
            k = w.shape[1]
            block = kernels.exact_block(w, x_zero_point=zx)
            want = w.astype(np.int64) @ cols.astype(np.int64)
            wi, colsi = w.astype(np.int32), cols.astype(np.int32)
            methods = {
                "514": lambda: blocks_514(w, cols),
                "proven": lambda: kernels.exact_matmul(w, cols, k_block=block),
                "float64": lambda: (w.astype(np.float64) @ cols.astype(np.float64)).astype(np.int64),
                "int32": lambda: (wi @ colsi).astype(np.int64),
            }
            for method in ("514", "proven", "float64"):
                if not np.array_equal(methods[method](), want):
                    raise RuntimeError(f"{name} {layer}: {method} is not exact")
            big = w.shape[0] * k * cols.shape[1] > 3e7  # numpy's int32 matmul runs at ~1 GMAC/s: skip big ones
            t = [median_seconds(methods[m], repeats) for m in ("514", "proven", "float64")]
            t.append(np.nan if big else median_seconds(methods["int32"], max(1, repeats // 2)))
            totals += np.nan_to_num(t)
            shape = f"{w.shape[0]}x{k}x{cols.shape[1]}"
            cells = " ".join(f"{1e3 * v:{width}.2f}" for v, width in zip(t, (10, 8, 8, 8)))
            print(f"{name:<11} {layer:<14} {shape:>20} {-(-k // block):>6} {cells} {t[0] / t[1]:10.2f} "
                  f"{t[2] / t[1]:10.2f}")
    print(f"{'total':<9} {'':<14} {'':>20} {'':>6} " + " ".join(f"{1e3 * v:{w}.2f}" for v, w in
                                                               zip(totals[:3], (10, 8, 8))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ort-threads", type=int, default=2, help="onnxruntime intra-op threads (default: %(default)s)")
    parser.add_argument("--calibration", type=int, default=300, help="train images to calibrate on")
    parser.add_argument("--baseline", default="1897294", metavar="REV",
                        help="git revision of the kernels to compare against ('' for none; default %(default)s, "
                             "the last one before the fused conv/linear requantization)")
    parser.add_argument("--no-gemm-table", action="store_true", help="skip the GEMM method table")
    args = parser.parse_args(argv)
    base = load_baseline(args.baseline)

    x_test, y_test = data.load_split(split="test")
    print(f"8-bit weights, 'max' calibration on {args.calibration} train images; onnxruntime threads "
          f"{args.ort_threads}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
          f"median of {args.repeats} after one warm-up")
    header = (f"{'model':<11} {'batch':>5} {'float img/s':>12} {'integer img/s':>14} {'ort img/s':>10} "
              f"{'base img/s':>10} {'int/float':>9} {'int/ort':>8} {'int/base':>8} {'int acc':>8} {'int=ort':>8}")
    print(header)
    print("-" * len(header))
    for name, rel in MODELS.items():
        qm, imodel = prepare(os.path.join(ROOT, rel), args.calibration)
        session = onnx_io.ort_session(onnx_io.export_onnx(imodel), threads=args.ort_threads)
        for batch in (64, len(x_test)):
            x = x_test[:batch]
            t_float = median_seconds(lambda: sqref.run(qm, x), args.repeats)
            t_int = median_seconds(lambda: integer.run_integer(imodel, x), args.repeats)
            t_ort = median_seconds(lambda: session.run(["logits"], {"input": x}), args.repeats)
            _, codes = integer.run_integer(imodel, x, return_intermediates=True)
            base_cells = f"{'-':>10} {'-':>8}"
            if base is not None:
                with baseline_kernels(base):
                    t_base = median_seconds(lambda: integer.run_integer(imodel, x), args.repeats)
                    _, base_codes = integer.run_integer(imodel, x, return_intermediates=True)
                if any(not np.array_equal(a, b) or a.dtype != b.dtype for a, b in zip(codes, base_codes)):
                    raise RuntimeError(f"{name}: the baseline's codes differ from this checkout's")
                base_cells = f"{batch / t_base:10.0f} {t_base / t_int:8.2f}"
            pred_int = integer.run_integer(imodel, x).argmax(1)
            pred_ort = session.run(["logits"], {"input": x})[0].argmax(1)
            print(f"{name:<11} {batch:>5} {batch / t_float:12.0f} {batch / t_int:14.0f} {batch / t_ort:10.0f} "
                  f"{base_cells.split()[0]:>10} {t_float / t_int:9.2f} {t_ort / t_int:8.3f} "
                  f"{base_cells.split()[1]:>8} {np.mean(pred_int == y_test[:batch]):8.3f} "
                  f"{np.mean(pred_int == pred_ort):8.3f}")
    if base is not None:
        print(f"int/base: this checkout's integer path over the kernels at {args.baseline} "
              "(every layer's codes compared: identical)")
    if not args.no_gemm_table:
        models = {name: prepare(os.path.join(ROOT, rel), args.calibration)[1:] + (x_test,)
                  for name, rel in MODELS.items()}
        vgg = qmodel.quantize_model(zoo.small_vgg(0), bits=8)
        rng = np.random.default_rng(0)
        images = rng.random((args.calibration, 3, 32, 32), dtype=np.float32)
        models["small_vgg"] = (integer.build_integer_model(vgg, integer.calibrate(vgg, images)), images)
        gemm_methods(models, 64, args.repeats, base)


if __name__ == "__main__":
    main()
