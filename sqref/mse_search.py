"""The exact search for the MSE-optimal scale of one channel (the `dynamic` clipping rule).

sqref.clipping.boundary_dynamic sorts each channel's |w|, takes prefix sums and
calls ``search_scales``, which returns the few float32 scales (as boundaries
alpha) that can minimise the squared error of the symmetric restricted k-bit
grid; the rule then evaluates them exactly beside every other rule's boundary.
docs/method.md section 2 states the algorithm and its bound.
"""
from __future__ import annotations

import numpy as np

from sqref.quant import grid_params

# The SSE of one channel as a function of the scale s (|x| = a, codes c_i(s) = min(round(a_i / s), qmax)):
#     SSE(s) = sum_i (a_i - s c_i(s))**2 = sum_i min over c in 0..qmax of (a_i - s c)**2.
# Between breakpoints (s = a_i / (j - 1/2): a_i moves from code j - 1 to j) the codes are fixed and
#     SSE(s) = S2 - 2 s A + s**2 B,  A = sum_i a_i c_i,  B = sum_i c_i**2,
# a quadratic piece, least at s* = A / B. Crossing breakpoint (i, j) downwards adds a_i to A and 2j - 1
# to B. Every piece's quadratic is >= SSE everywhere (its codes are valid, just not the nearest), so
#     min over s of SSE = min over pieces of (the piece's quadratic at s*, clamped into the piece),
# and the float32 scale of least SSE is a float32 neighbour of one of those points.
ENUMERATE = 1 << 15  # a channel with at most this many breakpoints has them all enumerated (258 weights at 8 bits)
BRACKET_BUDGET = 1 << 13  # breakpoints enumerated inside the bracket of a larger channel
BRACKET_GRID = 32  # first bracketing level: geometric intervals of the scale
BRACKET_SPLIT = 4  # each further level splits every surviving interval in this many
BRACKET_LEVELS = 6  # then the intervals of least lower bound, up to BRACKET_BUDGET breakpoints
FINALIST_PIECES = 8  # at most this many pieces' float32 neighbours are evaluated exactly
_TINY32 = float(np.finfo(np.float32).tiny)  # the smallest normal float32 scale


def grid_scales(alphas, bits):
    """The float32 grid scales (as float64) that quantize would use for these boundaries."""
    return np.asarray(grid_params(bits=bits, alpha=np.asarray(alphas, dtype=np.float64))[0], dtype=np.float64)


def _positions(a, v):
    """np.searchsorted(a, v) for a 2-D (S, L) v, searched column by column (rising keys: about 2x faster)."""
    return np.searchsorted(a, np.ascontiguousarray(v.T)).T


def _slice_sse(cum1, cum2, lo, hi, v):
    """sum over a[lo:hi] of (a - v)**2 from the prefix sums (elementwise over index arrays lo, hi and values v)."""
    return (cum2[hi] - cum2[lo]) - 2.0 * v * (cum1[hi] - cum1[lo]) + v * v * (hi - lo)


def approx_sse(a, cum1, cum2, scales, qmax):
    """Sum of squared errors of the symmetric grid for each scale, from sorted |x| and its prefix sums.

    Shapes: a (n,) sorted |x|; cum1, cum2 (n + 1,) prefix sums of a and a**2;
    scales (S,) -> (S,). Level j (|code| j) takes |x| in [(j - 0.5) s, (j + 0.5) s),
    the top level qmax everything from (qmax - 0.5) s up (that is the clipping),
    and contributes sum (|x| - j s)**2 = S2 - 2 j s S1 + (j s)**2 n_j over its
    slice of the sorted array: O(qmax log n) per scale, no pass over the data.
    It differs from sum_sq_error only by float rounding (the error is the same
    on both sides of a level boundary, so ties do not matter), bounded by
    _model_tolerance; the search's last word is an exact evaluation.
    """
    level = np.arange(qmax + 1)
    cut = _positions(a, (level[1:] - 0.5) * scales[:, None])  # (S, qmax) level boundaries
    lo = np.concatenate([np.zeros((scales.size, 1), dtype=cut.dtype), cut], axis=1)
    hi = np.concatenate([cut, np.full((scales.size, 1), a.size, dtype=cut.dtype)], axis=1)
    return _slice_sse(cum1, cum2, lo, hi, level * scales[:, None]).sum(axis=1)


def sse_lower_bound(a, cum1, cum2, lo, hi, qmax):
    """A lower bound of the SSE over all scales s in [lo, hi], for each interval (arrays lo, hi of shape (S,)).

    Each |x| is charged its squared distance to the values any such grid
    offers, U = union over c = 0..qmax of [c lo, c hi]: 0 inside level c's span,
    the nearer end in the gap (c hi, (c + 1) lo), (|x| - qmax hi)**2 above.
    O(qmax log n) per interval with the prefix sums, as approx_sse.
    """
    c = np.arange(qmax)
    end = c * hi[:, None]  # (S, qmax): top of level c's span
    nxt = np.maximum((c + 1) * lo[:, None], end)  # bottom of level c + 1's span (no gap if they overlap)
    mid = 0.5 * (end + nxt)
    i_end, i_mid, i_nxt = (_positions(a, v) for v in (end, mid, nxt))
    gaps = _slice_sse(cum1, cum2, i_end, i_mid, end) + _slice_sse(cum1, cum2, i_mid, i_nxt, nxt)
    top = qmax * hi
    return gaps.sum(axis=1) + _slice_sse(cum1, cum2, np.searchsorted(a, top), a.size, top)


def _narrow_lower_bound(a, cum1, cum2, lo, hi, qmax):
    """A tighter lower bound of the SSE over s in [lo, hi], for narrow intervals: hi / lo < (qmax - 1/2) / (qmax - 1).

    Then every |x| changes code at most once in [lo, hi]. The |x| that do not change keep their codes: their SSE is
    one quadratic in s, minimised over [lo, hi] in closed form. Each |x| that
    changes (from j - 1 to j, i.e. |x| in [(j - 1/2) lo, (j - 1/2) hi)) lies in
    the gap ((j - 1) hi, j lo) and is charged its squared distance to the
    nearer end. Returns the bound, the fixed part's minimiser and the number of
    breakpoints inside, each (S,).
    """
    n = a.size
    j = np.arange(1, qmax + 1)
    up = _positions(a, (j - 0.5) * hi[:, None])  # (S, qmax): first index with code >= j at s = hi
    down = _positions(a, (j - 0.5) * lo[:, None])  # ... at s = lo
    a_hi = (cum1[n] - cum1[up]).sum(axis=1)  # A and B at s = hi (see _pieces)
    b_hi = ((n - up) * (2 * j - 1)).sum(axis=1)
    # the changing |x| (indices down .. up - 1 for level j) have code j - 1 at hi: take them out
    a_fix = a_hi - ((j - 1) * (cum1[up] - cum1[down])).sum(axis=1)
    b_fix = b_hi - ((j - 1) ** 2 * (up - down)).sum(axis=1)
    s2_fix = cum2[n] - (cum2[up] - cum2[down]).sum(axis=1)
    s = np.clip(a_fix / np.maximum(b_fix, 1), lo, hi)
    fixed = s2_fix - 2.0 * s * a_fix + s * s * b_fix
    left, right = (j - 1) * hi[:, None], j * lo[:, None]  # the gap's ends
    mid = np.clip(_positions(a, 0.5 * (left + right)), down, up)
    changing = _slice_sse(cum1, cum2, down, mid, left) + _slice_sse(cum1, cum2, mid, up, right)
    return fixed + changing.sum(axis=1), s, (up - down).sum(axis=1)


def _model_tolerance(cum2, n, qmax, s_top):
    """Bound on the float error of approx_sse / sse_lower_bound / the pieces' SSE (S2 - 2 s A + s**2 B cancels)."""
    return 64 * np.finfo(np.float64).eps * (float(cum2[-1]) + n * (qmax * s_top) ** 2)


def _breakpoint_counts(a, lo, hi, qmax):
    """How many breakpoints a_i / (j - 1/2) lie in [lo, hi), per interval: a_i in [(j - 1/2) lo, (j - 1/2) hi)."""
    half = np.arange(1, qmax + 1) - 0.5
    return (_positions(a, half * hi[:, None]) - _positions(a, half * lo[:, None])).sum(axis=1)


def _bracket(a, cum1, cum2, qmax, s_lo, s_top, tol):
    """Intervals of the scale in [s_lo, s_top] that may hold the least SSE (branch and bound).

    Split [s_lo, s_top] into geometric intervals; the SSE at every interval
    end (and at each narrow interval's own estimate) is an upper bound U of
    the minimum; an interval whose lower bound (sse_lower_bound, or
    _narrow_lower_bound once narrow) exceeds U + tol cannot hold it and is
    dropped; split the others in BRACKET_SPLIT and repeat until they hold at
    most BRACKET_BUDGET breakpoints: then the bracket is exact (to tol).
    After BRACKET_LEVELS levels, keep the intervals of least lower bound up to
    the budget (then the result is within the bound boundary_dynamic states).
    """
    edges = np.geomspace(s_lo, s_top, BRACKET_GRID + 1)
    lo, hi = edges[:-1], edges[1:]
    upper = np.inf
    for level in range(BRACKET_LEVELS + 1):
        narrow = hi * (qmax - 1) < lo * (qmax - 0.5)
        bound, counts = np.empty(lo.size), np.empty(lo.size, dtype=np.int64)
        wide = ~narrow
        probes = []
        if wide.any():
            bound[wide] = sse_lower_bound(a, cum1, cum2, lo[wide], hi[wide], qmax)
            counts[wide] = _breakpoint_counts(a, lo[wide], hi[wide], qmax)
            probes += [lo[wide], hi[wide]]
        if narrow.any():
            bound[narrow], inside, counts[narrow] = _narrow_lower_bound(a, cum1, cum2, lo[narrow], hi[narrow], qmax)
            probes.append(inside)
        upper = min(upper, float(approx_sse(a, cum1, cum2, np.concatenate(probes), qmax).min()))
        keep = bound <= upper + tol
        lo, hi, bound, counts = lo[keep], hi[keep], bound[keep], counts[keep]
        if counts.sum() <= BRACKET_BUDGET:
            return lo, hi
        if level == BRACKET_LEVELS:
            order = np.argsort(bound, kind="stable")
            take = order[np.cumsum(counts[order]) <= BRACKET_BUDGET]
            take = take if take.size else order[:1]
            return lo[take], hi[take]
        t = np.linspace(0.0, 1.0, BRACKET_SPLIT + 1)
        edges = lo[:, None] + (hi - lo)[:, None] * t  # (S, SPLIT + 1)
        edges[:, -1] = hi
        lo, hi = edges[:, :-1].ravel(), edges[:, 1:].ravel()
    return lo, hi


def _pieces(a, cum1, qmax, lo, hi):
    """Every quadratic piece of the SSE inside the intervals [lo_k, hi_k]: (left, right, A, B), each (P,).

    At s = hi_k, |x| >= (j - 1/2) hi_k has code >= j, so A = sum_j (sum of those
    |x|) and B = sum_j (2j - 1) (their count). Going down from hi_k, breakpoint
    (i, j) at t = a_i / (j - 1/2) adds a_i to A and 2j - 1 to B.
    """
    n = a.size
    half = np.arange(1, qmax + 1) - 0.5
    up = _positions(a, half * hi[:, None])  # (S, qmax): first index with code >= j at s = hi
    down = _positions(a, half * lo[:, None])  # ... at s = lo
    odd = 2 * np.arange(1, qmax + 1) - 1
    a_hi = (cum1[n] - cum1[up]).sum(axis=1)
    b_hi = ((n - up) * odd).sum(axis=1)
    # the breakpoints: for interval k and level j, the indices down[k, j] .. up[k, j] - 1
    count = (up - down).ravel()
    first = np.repeat(down.ravel() - np.cumsum(count) + count, count)
    idx = first + np.arange(count.sum())
    k = np.repeat(np.repeat(np.arange(lo.size), qmax), count)
    j_half = np.repeat(np.tile(half, lo.size), count)
    t = a[idx] / j_half
    # by interval, then by descending scale: t / hi_k is in (0, 1], so one key sorts both ways
    order = np.argsort(k - t / hi[k], kind="stable")
    t, k, d_a, d_b = t[order], k[order], a[idx][order], 2.0 * j_half[order]
    # segmented running sums: A after each breakpoint = A(hi_k) + the d_a of the breakpoints so far in k
    seg_start = np.searchsorted(k, np.arange(lo.size))
    run_a = np.cumsum(d_a)
    run_b = np.cumsum(d_b)
    base_a = np.concatenate([[0.0], run_a])[seg_start]
    base_b = np.concatenate([[0.0], run_b])[seg_start]
    after_a = a_hi[k] + run_a - base_a[k]
    after_b = b_hi[k] + run_b - base_b[k]
    # pieces: the first of each interval (no breakpoint crossed), then one after each breakpoint
    seg_end = np.append(seg_start[1:], t.size)
    has = seg_end > seg_start
    left_first = lo.copy()
    left_first[has] = t[seg_start[has]]  # the interval's largest breakpoint
    last_of_seg = np.zeros(t.size, dtype=bool)
    last_of_seg[seg_end[has] - 1] = True
    left_after = np.where(last_of_seg, lo[k], np.append(t[1:], 0.0))  # the next breakpoint down, or lo
    return (np.concatenate([left_first, left_after]), np.concatenate([hi, t]),
            np.concatenate([a_hi, after_a]), np.concatenate([b_hi, after_b]))


def _float32_neighbours(s):
    """The float32 values just below and just above each s (both s when s is a float32), as float64."""
    f = s.astype(np.float32)
    below = np.where(f > s, np.nextafter(f, np.float32(0)), f)
    above = np.where(f < s, np.nextafter(f, np.float32(np.inf)), f)
    return np.concatenate([below, above]).astype(np.float64)


def search_scales(a, cum1, cum2, bits):
    """The float32 scales, as alphas, that may minimise the SSE of one channel (see the comment above).

    Shapes: a (m,) sorted |x| (float64), cum1, cum2 (m + 1,) its prefix sums of a and a**2.
    1. the domain: s in (0, s_top], s_top = the float32 scale of max|x|;
    2. below s_lo = (smallest |x| > 0) / (qmax - 1/2) every non-zero |x| clips:
       one piece; above it, all m * qmax breakpoints when there are at most
       ENUMERATE of them, else those inside the bracket (_bracket);
    3. each piece's least point, clamped into the piece and the domain; the
       pieces within the float tolerance (plus one float32 step) of the least,
       at most FINALIST_PIECES of them, give their float32 neighbours.
    Returns alphas = s * qmax (exact in float64, and float32(alpha / qmax) == s),
    max|x| for s_top.
    """
    qmax = 2 ** (bits - 1) - 1
    amax = float(a[-1])
    s_top = float(grid_scales([amax], bits)[0])
    smallest = float(a[np.searchsorted(a, 0.0, side="right")])  # smallest |x| > 0
    s_lo = min(smallest / (qmax - 0.5), s_top)
    tol = _model_tolerance(cum2, a.size, qmax, s_top)
    lo, hi = np.array([_TINY32]), np.array([s_lo])  # all clipped: one piece, no breakpoint inside
    if s_lo < s_top:
        n_breaks = int(_breakpoint_counts(a, np.array([s_lo]), np.array([s_top]), qmax)[0])
        b_lo, b_hi = ((np.array([s_lo]), np.array([s_top])) if n_breaks <= ENUMERATE
                      else _bracket(a, cum1, cum2, qmax, s_lo, s_top, tol))
        lo, hi = np.concatenate([lo, b_lo]), np.concatenate([hi, b_hi])
    left, right, big_a, big_b = _pieces(a, cum1, qmax, lo, hi)
    right = np.minimum(right, s_top)
    live = left <= right
    left, right, big_a, big_b = left[live], right[live], big_a[live], big_b[live]
    s = np.clip(big_a / np.maximum(big_b, 1.0), left, right)  # B = 0: no code set, SSE = S2 anywhere
    sse = cum2[-1] - 2.0 * s * big_a + s * s * big_b
    best = int(np.argmin(sse))
    step = float(np.spacing(np.float32(s[best])))  # a float32 step from the best point costs B * step**2
    near = np.flatnonzero(sse <= sse[best] + 2.0 * tol + big_b[best] * step * step)
    near = near[np.argsort(sse[near], kind="stable")[:FINALIST_PIECES]]
    scales = np.unique(np.clip(_float32_neighbours(s[near]), _TINY32, s_top))
    return [amax if v == s_top else float(v * qmax) for v in scales]
