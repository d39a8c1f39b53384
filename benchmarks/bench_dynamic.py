"""Time the dynamic clipping search against one fake_quant pass of the same tensor.

    python benchmarks/bench_dynamic.py [--bits 4] [--sizes 1e6 1e7 2.5e7] [--repeats 3] [--per-channel 512]

For each size: a float32 N(0, 1) tensor; one warm-up call of each function,
then the median of `repeats` timed calls, wall and CPU time. The ratio
columns (dynamic / one fake_quant pass) are the numbers to watch: they say
how many full passes over the weights the search costs, and they carry over
between machines much better than the seconds do. --per-channel C also times axis=0 on a (C, N/C)
tensor (the per-tensor search plus one search per channel).
"""
import argparse
import statistics
import time

import numpy as np

from sqref import clipping, quant


def median_time(fn, repeats):
    """(wall, cpu) seconds, each the median of `repeats` calls after one warm-up call.

    CPU time (time.process_time) is printed too because it is far less
    sensitive than wall time to other processes sharing the machine; the
    code timed here is single-threaded NumPy, so on an idle machine the two agree.
    """
    fn()  # warm-up: page faults, caches, the lru_cache of the ACIQ constants
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 2.5e7])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-channel", type=int, default=0, metavar="C")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    print(f"bits={args.bits}, float32 N(0,1) weights, median of {args.repeats} after one warm-up")
    print(f"{'':>18} {'---- wall seconds ----':>30}   {'---- cpu seconds -----':>30}")
    print(f"{'n':>12} {'axis':>5} {'dynamic':>10} {'fake_quant':>11} {'ratio':>7}   "
          f"{'dynamic':>10} {'fake_quant':>11} {'ratio':>7}")
    for size in args.sizes:
        n = int(size)
        w = rng.standard_normal(n).astype(np.float32)
        layouts = [(w, None)]
        if args.per_channel:
            c = args.per_channel
            layouts.append((w[: n - n % c].reshape(c, -1), 0))
        for tensor, axis in layouts:
            alpha = clipping.boundary_dynamic(tensor, args.bits, axis=axis)
            t_dyn = median_time(lambda: clipping.boundary_dynamic(tensor, args.bits, axis=axis), args.repeats)
            t_fq = median_time(lambda: quant.fake_quant(tensor, bits=args.bits, alpha=alpha, axis=axis),
                               args.repeats)
            print(f"{tensor.size:>12,} {str(axis):>5} {t_dyn[0]:>10.3f} {t_fq[0]:>11.3f} {t_dyn[0] / t_fq[0]:>7.1f}   "
                  f"{t_dyn[1]:>10.3f} {t_fq[1]:>11.3f} {t_dyn[1] / t_fq[1]:>7.1f}")


if __name__ == "__main__":
    main()
