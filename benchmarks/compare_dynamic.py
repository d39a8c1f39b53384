"""Does a change to the dynamic rule move any boundary? This checkout against a git revision, bit for bit.

    python benchmarks/compare_dynamic.py [--baseline ab9c0a8] [--levels 14] [--quick] [--bench-tensor]

Compares clipping.boundary_dynamic of this checkout with the one at --baseline
(loaded from git as benchmarks/bench_dynamic.py does) on
  1. every weight tensor of every model in data/, bits 2..8, per tensor and
     per output channel;
  2. random float32 tensors: normal, Laplace, Student-t (2 and 3 degrees of
     freedom), lognormal, bimodal, sparse; 400 to 1,562,496 weights in 1 to
     300 channels; bits 2, 3, 4, 5, 6, 8; both layouts (seed 0; --quick: a
     smaller set);
  3. with --bench-tensor, the tensor benchmarks/bench_dynamic.py times (25,000,000
     N(0, 1) weights, seed 0: per tensor, and as 1,024 channels), at 4 and 8 bits.
Prints each boundary that differs, with the relative MSE of this checkout's
against the baseline's (negative: this checkout's is lower). Where they
differ, both are run again with --levels branch-and-bound levels instead of
sqref.mse_search.BRACKET_LEVELS: a search that stopped at its last level
keeps intervals without a certificate, and more levels show which side that
affected. Exits 1 if any boundary of a shipped model differs.
"""
import argparse
import pathlib
import sys

import numpy as np

from bench_dynamic import load_baseline  # benchmarks/ is on sys.path when this script runs
from sqref import clipping, fileformat, quant
from sqref.hdf5 import FileFormatError

ROOT = pathlib.Path(__file__).resolve().parent.parent
KINDS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "laplace": lambda rng, n: rng.laplace(size=n),
    "t2": lambda rng, n: rng.standard_t(2, n),
    "t3": lambda rng, n: rng.standard_t(3, n),
    "lognormal": lambda rng, n: rng.lognormal(0, 1, n),
    "bimodal": lambda rng, n: rng.normal(size=n) + 3 * np.sign(rng.normal(size=n)),
    "sparse": lambda rng, n: rng.normal(size=n) * (rng.random(n) < 0.2),
}
SHAPES = [(64, 24414), (16, 3000), (40, 800), (8, 50000), (1, 235200), (1, 48000), (120, 400), (300, 784)]
BOTH = (None, 0)  # per tensor and per output channel
QUICK_SHAPES = [(16, 3000), (40, 800), (1, 48000), (120, 400)]


def shipped_tensors():
    """(name, weight, layouts) for every weight tensor of every model file in data/ that sqref loads as a model."""
    for path in sorted((ROOT / "data").glob("*.h5")):
        try:
            model = fileformat.load(path)
        except FileFormatError:  # a data set, not a model
            continue
        for k, layer in enumerate(model.layers):
            if hasattr(layer, "weight"):
                yield f"{path.name} layer {k}", np.asarray(layer.weight, np.float32), BOTH


def random_tensors(shapes):
    rng = np.random.default_rng(0)
    for rows, m in shapes:
        for kind, draw in KINDS.items():
            yield f"{kind} {rows}x{m}", draw(rng, rows * m).astype(np.float32).reshape(rows, m), BOTH


def bench_tensors(n=25_000_000, channels=1024):
    """bench_dynamic's tensor, as it times it: all n weights per tensor, and the first C * (n // C) as C channels."""
    w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    yield "bench_dynamic's tensor, per tensor", w, (None,)
    yield "bench_dynamic's tensor, per channel", w[: n - n % channels].reshape(channels, -1), (0,)


def with_levels(impl, levels, fn):
    """fn() with the search module of `impl` (a clipping module) set to `levels` branch-and-bound levels."""
    search = impl.search_scales.__globals__  # that implementation's sqref.mse_search
    before = search["BRACKET_LEVELS"]
    search["BRACKET_LEVELS"] = levels
    try:
        return fn()
    finally:
        search["BRACKET_LEVELS"] = before


def compare(label, w, bits_list, impls, levels, axes):
    """Number of (bits, layout) cases, and the number that differ; prints each difference."""
    cases = differ = 0
    for bits in bits_list:
        for axis in axes:
            got = {name: impl.boundary_dynamic(w, bits, axis=axis) for name, impl in impls.items()}
            new, old = got.values()
            cases += 1
            if np.array_equal(new, old):
                continue
            differ += 1
            mse = [np.asarray(quant.quant_mse(w, alpha=a, bits=bits, axis=axis)) for a in (new, old)]
            change = np.max(mse[0] / np.where(mse[1] > 0, mse[1], 1) - 1)
            deep = {name: with_levels(impl, levels, lambda i=impl: i.boundary_dynamic(w, bits, axis=axis))
                    for name, impl in impls.items()}
            agree = {name: bool(np.array_equal(deep[name], got[name])) for name in impls}
            print(f"  differs: {label}, {bits} bits, {'per tensor' if axis is None else 'per channel'}: "
                  f"MSE change {change:+.3g}; unchanged with {levels} levels: {agree}; "
                  f"the two agree with {levels} levels: {bool(np.array_equal(*deep.values()))}")
    return cases, differ


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="ab9c0a8", metavar="REV")
    parser.add_argument("--levels", type=int, default=14)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bench-tensor", action="store_true")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline)
    if baseline is None:
        return 2
    impls = {"this checkout": clipping, f"base {args.baseline}": baseline}
    totals = {}
    groups = [("shipped models", shipped_tensors(), range(2, 9)),
              ("random tensors", random_tensors(QUICK_SHAPES if args.quick else SHAPES), (2, 3, 4, 5, 6, 8))]
    if args.bench_tensor:
        groups.append(("bench_dynamic's tensor", bench_tensors(), (4, 8)))
    for group, tensors, bits_list in groups:
        print(f"{group}:", flush=True)
        count = cases = differ = 0
        for label, w, axes in tensors:
            c, d = compare(label, w, bits_list, impls, args.levels, axes)
            count, cases, differ = count + 1, cases + c, differ + d
        totals[group] = differ
        print(f"  {count} tensors, {cases} boundaries (bits x layouts): "
              f"{cases - differ} bitwise equal, {differ} differ")
    return 1 if totals["shipped models"] else 0


if __name__ == "__main__":
    sys.exit(main())
