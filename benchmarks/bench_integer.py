"""Integer-only inference throughput: sqref's integer path vs its float path vs onnxruntime.

    python benchmarks/bench_integer.py [--repeats 5] [--ort-threads 2] [--calibration 300]

For LeNet-5 (data/lenet5.h5) and LeNet-300-100 (data/lenet300.h5), weights
quantized to 8 bits (sqref.qmodel.quantize_model, dynamic rule) and
activations calibrated ("max") on the first `--calibration` TRAIN images:

    float    sqref.run on the weight-quantized model (float32 engine)
    integer  sqref.integer.run_integer on its IntegerModel (exact accumulation)
    ort      onnxruntime on sqref.backends.onnx.export_onnx of the same IntegerModel
             (int8 weights, float input), session built once, logits fetched only

on the same inputs: a batch of 64 test images and the 1,000 test images.
Median of `--repeats` timed calls after one warm-up, all in one run. The
ratios (integer / float, integer / ort; > 1 means the integer path is
faster) are what to compare across machines. Agreement of the integer
path's and onnxruntime's predictions is printed as a sanity check.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import sqref
from sqref import data, integer, qmodel
from sqref.backends import onnx as onnx_io

from bench_forward import median_seconds

MODELS = {"lenet5": "data/lenet5.h5", "lenet300": "data/lenet300.h5"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(path, calibration_images):
    """(weight-quantized model, IntegerModel, onnxruntime session) of one model file."""
    qm = qmodel.quantize_model(sqref.load(path), bits=8)
    x_train, _ = data.load_split(split="train")
    imodel = integer.build_integer_model(qm, integer.calibrate(qm, x_train[:calibration_images]))
    return qm, imodel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ort-threads", type=int, default=2, help="onnxruntime intra-op threads (default: %(default)s)")
    parser.add_argument("--calibration", type=int, default=300, help="train images to calibrate on")
    args = parser.parse_args(argv)

    x_test, y_test = data.load_split(split="test")
    print(f"8-bit weights, 'max' calibration on {args.calibration} train images; onnxruntime threads "
          f"{args.ort_threads}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; "
          f"median of {args.repeats} after one warm-up")
    header = (f"{'model':<9} {'batch':>5} {'float img/s':>12} {'integer img/s':>14} {'ort img/s':>10} "
              f"{'int/float':>9} {'int/ort':>8} {'int acc':>8} {'int=ort':>8}")
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
            pred_int = integer.run_integer(imodel, x).argmax(1)
            pred_ort = session.run(["logits"], {"input": x})[0].argmax(1)
            print(f"{name:<9} {batch:>5} {batch / t_float:12.0f} {batch / t_int:14.0f} {batch / t_ort:10.0f} "
                  f"{t_float / t_int:9.2f} {t_ort / t_int:8.3f} {np.mean(pred_int == y_test[:batch]):8.3f} "
                  f"{np.mean(pred_int == pred_ort):8.3f}")


if __name__ == "__main__":
    main()
