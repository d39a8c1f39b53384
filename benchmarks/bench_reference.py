"""sqref vs onnx.reference.ReferenceEvaluator, the other NumPy reference, on the same models.

    python benchmarks/bench_reference.py [--repeats 3] [--batch 64]

Two graphs of LeNet-5 (data/lenet5.h5), timed on the same `--batch` test images:

    float    the float model built with onnx.helper (Conv, MaxPool, Flatten, Gemm, Relu;
             opset 21), against sqref.run on the sqref model
    qlinear  sqref.backends.onnx.export_onnx of its 8-bit IntegerModel (QuantizeLinear,
             QLinearConv, MaxPool on uint8, DequantizeLinear), against
             sqref.integer.run_integer

Median of `--repeats` timed calls after one warm-up. The speed-up is
ReferenceEvaluator time / sqref time. Outputs are compared (float: max abs
difference; qlinear: identical predictions) so the two run the same model.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

import sqref
from sqref import data, integer, qmodel
from sqref.backends import onnx as onnx_io

from bench_forward import float_onnx, median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    model = sqref.load(os.path.join(ROOT, "data/lenet5.h5"))
    qm = qmodel.quantize_model(model, bits=8)
    x_train, _ = data.load_split(split="train")
    imodel = integer.build_integer_model(qm, integer.calibrate(qm, x_train[:300]))
    x = data.load_split(split="test")[0][: args.batch]

    ref_float = ReferenceEvaluator(float_onnx(model))
    ref_q = ReferenceEvaluator(onnx_io.export_onnx(imodel))
    out_name = model.names[-1]
    diff = np.max(np.abs(ref_float.run([out_name], {"input": x})[0] - sqref.run(model, x)))
    same = np.mean(ref_q.run(["logits"], {"input": x})[0].argmax(1) == integer.run_integer(imodel, x).argmax(1))

    print(f"LeNet-5, batch {args.batch}, median of {args.repeats} after one warm-up; onnx {onnx.__version__}")
    header = f"{'graph':<8} {'sqref s':>9} {'reference s':>12} {'speed-up':>9}  check"
    print(header)
    print("-" * len(header) + "-" * 24)
    for label, fn_sqref, fn_ref, check in (
            ("float", lambda: sqref.run(model, x), lambda: ref_float.run([out_name], {"input": x}),
             f"max |diff| {diff:.1e}"),
            ("qlinear", lambda: integer.run_integer(imodel, x), lambda: ref_q.run(["logits"], {"input": x}),
             f"same predictions {same:.3f}")):
        t_sqref = median_seconds(fn_sqref, args.repeats)
        t_ref = median_seconds(fn_ref, args.repeats)
        print(f"{label:<8} {t_sqref:9.4f} {t_ref:12.4f} {t_ref / t_sqref:8.1f}x  {check}")


if __name__ == "__main__":
    main()
