"""How far the dynamic search's prefix-sum model of the SSE strays, against its tolerance, and what the corrected prefix sums cost.

    python benchmarks/model_error.py [--sizes 24414 1e6 2.5e7] [--bits 4 8] [--scales 16] [--repeats 3]

For each size and bit width: float32 N(0, 1) weights (seed 0), sorted |w|, and
prefix sums of |w| and |w|**2 built two ways, a plain running sum (np.cumsum)
and sqref.mse_search.prefix_sums (each addition's rounding error recovered and
added back). With each, sqref.mse_search.approx_sse gives the SSE at --scales
geometric scales in [0.2 s_top, s_top]; the printed figure is the largest
|approx_sse - exact| / tol, with exact the SSE summed weight by weight
(sqref.quant.sum_sq_error_rows, the evaluation the rule's result is judged
by; its own rounding is a few eps of the SSE, and tol is 64 eps of a sum at
least qmax**2 times the SSE, so it does not move these ratios) and tol =
sqref.mse_search.model_tolerance. A ratio above 1 breaks the stated bound.
Last, the CPU time of prefix_sums over that of the two np.cumsum calls, side
by side on the same array (median of --repeats after one warm-up call,
bench_dynamic.median_time).
"""
import argparse

import numpy as np

from bench_dynamic import median_time  # benchmarks/ is on sys.path when this script runs
from sqref import mse_search, quant


def plain_prefix_sums(a):
    """The running sums np.cumsum gives (what the search used before prefix_sums): cum1, cum2 (1, n + 1)."""
    cum1, cum2 = np.zeros((1, a.shape[1] + 1)), np.zeros((1, a.shape[1] + 1))
    np.cumsum(a, axis=1, out=cum1[:, 1:])
    np.cumsum(np.square(a), axis=1, out=cum2[:, 1:])
    return cum1, cum2


def corrected_prefix_sums(a):
    cum1, cum2 = np.empty((1, a.shape[1] + 1)), np.empty((1, a.shape[1] + 1))
    mse_search.prefix_sums(a, cum1, cum2)
    return cum1, cum2


def worst_ratio(w, a, sums, bits, n_scales):
    """The largest |approx_sse - exact| / tol over n_scales geometric scales up to s_top."""
    cum1, cum2 = sums
    qmax = 2 ** (bits - 1) - 1
    s_top = float(mse_search.grid_scales(a[:, -1], bits)[0])
    scales = np.geomspace(0.2 * s_top, s_top, n_scales)
    model = mse_search.approx_sse(a, cum1, cum2, np.zeros(n_scales, dtype=np.int64), scales, qmax)
    exact = quant.sum_sq_error_rows(w[None], scales[None], qmax)[0]
    tol = mse_search.model_tolerance(float(np.sum(a * a)), a.shape[1], qmax, s_top)
    return float(np.max(np.abs(model - exact)) / tol)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[24414, 1e6, 2.5e7], help="weights per tensor")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8], help="bit widths")
    parser.add_argument("--scales", type=int, default=16, help="scales compared per tensor and bit width")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per prefix-sum method (median)")
    args = parser.parse_args()
    print(f"{'weights':>12} {'bits':>4} {'np.cumsum':>12} {'prefix_sums':>12}   (largest |model - exact| / tol)")
    for size in args.sizes:
        n = int(size)
        w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        a = np.sort(np.abs(w)).astype(np.float64)[None]
        plain, corrected = plain_prefix_sums(a), corrected_prefix_sums(a)
        for bits in args.bits:
            print(f"{n:>12,} {bits:>4} {worst_ratio(w, a, plain, bits, args.scales):>12.4f} "
                  f"{worst_ratio(w, a, corrected, bits, args.scales):>12.4f}", flush=True)
        ratio = median_time(lambda: corrected_prefix_sums(a), args.repeats)[1] / median_time(
            lambda: plain_prefix_sums(a), args.repeats)[1]
        print(f"{'':>12} prefix_sums takes {ratio:.2f}x the CPU time of the two np.cumsum calls", flush=True)


if __name__ == "__main__":
    main()
