"""How tight is the branch and bound's narrow-interval lower bound? This checkout against a git revision.

    python benchmarks/bound_slack.py [--bits 8 [4 ...]] [--channels 64] [--baseline 1fb805b]

On the first --channels channels of the tensor benchmarks/bench_dynamic.py
times (25,000,000 N(0, 1) float32 weights, seed 0, as 1,024 channels of
24,414), for each bit width and each implementation (this checkout's
sqref.mse_search and the one at --baseline, loaded as bench_dynamic.py loads it):
  1. slack: on the first level's narrow tiles (mse_search.first_level, this
     checkout's, the same tiles for both), (least SSE in the tile - the tile's
     bound) / (the channel's least SSE), median and 90th percentile over all
     tiles; the least SSE in a tile comes from every piece in it (mse_search.pieces);
  2. kept: the share of those tiles whose bound is within U + tol +
     bound_tolerance, which the first prune cannot drop;
  3. evaluated: how many narrow bounds mse_search.search_scales computes on
     those channels, in blocks as the dynamic rule runs it.
The bracket's time goes mostly to those bounds and the cuts of the intervals
they keep (docs/method.md section 2; the time itself: bench_dynamic.py).
"""
import argparse
import inspect
import types

import numpy as np

from bench_dynamic import load_baseline, search_alone
from sqref import mse_search


def first_level_tiles(a, cum1, cum2, bits):
    """This checkout's first level for every row: ch, lo, hi, cuts at lo and hi, U, and the pruning margin
    (model_tolerance + bound_tolerance), as search_scales sets them (mse_search.row_limits)."""
    s_top, s_lo, _, margin = mse_search.row_limits(a, cum2, bits)
    rows = np.arange(a.shape[0])
    return mse_search.first_level(a, cum1, cum2, rows, 2 ** (bits - 1) - 1, s_lo, s_top, margin) + (margin,)


def tile_least(a, cum1, cum2, ch, lo, hi, qmax):
    """The least SSE in each tile (every piece in it, minimised in closed form) and in each row: (T,), (R,)."""
    least = np.empty(lo.size)
    for r in np.unique(ch):
        mine = np.flatnonzero(ch == r)
        left, right, big_a, big_b = mse_search.pieces(a, cum1, r, qmax, lo[mine], hi[mine])
        s = np.clip(big_a / np.maximum(big_b, 1.0), left, right)
        sse = cum2[r, -1] - 2.0 * s * big_a + s * s * big_b
        tile = np.minimum(np.searchsorted(hi[mine], right), mine.size - 1)  # each piece's tile
        per_tile = np.full(mine.size, np.inf)
        np.minimum.at(per_tile, tile, sse)
        least[mine] = per_tile
    return least, np.array([least[ch == r].min() for r in range(a.shape[0])])


def narrow_bounds(search, cum1, cum2, ch, lo, hi, down, up, qmax):
    """The narrow_lower_bound of `search` (a module's namespace) on these tiles, whichever signature it has."""
    extra = ()
    if "single" in inspect.signature(search["narrow_lower_bound"]).parameters:
        extra = (np.bincount(ch)[ch] == 1,)  # (the baseline's summation order: a row's only narrow interval)
    return search["narrow_lower_bound"](cum1, cum2, ch, lo, hi, down, up, qmax, *extra)[0]


def count_bounds(search, rows, bits):
    """How many intervals the narrow_lower_bound of `search` bounds while the dynamic rule's search runs."""
    seen = [0]
    inner = search["narrow_lower_bound"]

    def counting(cum1, cum2, ch, *rest):
        seen[0] += ch.size
        return inner(cum1, cum2, ch, *rest)

    search["narrow_lower_bound"] = counting  # the module's global: _bracket looks it up at every call
    try:
        search_alone(rows, bits, types.SimpleNamespace(**search))
    finally:
        search["narrow_lower_bound"] = inner
    return seen[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[8])
    parser.add_argument("--channels", type=int, default=64, metavar="C")
    parser.add_argument("--baseline", default="1fb805b", metavar="REV")
    args = parser.parse_args()

    impls = {"this checkout": vars(mse_search)}  # module namespaces
    baseline = load_baseline(args.baseline)
    if baseline is not None:
        impls[f"base {args.baseline}"] = baseline.search_scales.__globals__
    w = np.random.default_rng(0).standard_normal(25_000_000).astype(np.float32)
    rows = w[: 25_000_000 - 25_000_000 % 1024].reshape(1024, -1)[: args.channels]
    a = np.sort(np.abs(rows), axis=1).astype(np.float64)
    cum1, cum2 = np.empty((a.shape[0], a.shape[1] + 1)), np.empty((a.shape[0], a.shape[1] + 1))
    mse_search.prefix_sums(a, cum1, cum2)
    for bits in args.bits:
        qmax = 2 ** (bits - 1) - 1
        ch, lo, hi, at_lo, at_hi, upper, margin = first_level_tiles(a, cum1, cum2, bits)
        narrow = hi * (qmax - 1) < lo * (qmax - 0.5)
        ch, lo, hi, at_lo, at_hi = ch[narrow], lo[narrow], hi[narrow], at_lo[narrow], at_hi[narrow]
        print(f"\n{bits} bits, {a.shape[0]} channels of {a.shape[1]:,} N(0, 1) weights: {lo.size} narrow "
              f"first-level tiles")
        if lo.size == 0:
            continue
        least, row_least = tile_least(a, cum1, cum2, ch, lo, hi, qmax)
        print(f"{'implementation':>16} {'slack median':>13} {'slack p90':>10} {'kept':>6} {'bounds evaluated':>17}")
        for name, search in impls.items():
            bound = narrow_bounds(search, cum1, cum2, ch, lo, hi, at_lo, at_hi, qmax)
            slack = (least - bound) / row_least[ch]
            kept = np.mean(bound <= (upper + margin)[ch])
            print(f"{name:>16} {np.median(slack):>13.2e} {np.quantile(slack, 0.9):>10.2e} {kept:>6.0%} "
                  f"{count_bounds(search, rows, bits):>17,}")


if __name__ == "__main__":
    main()
