"""The exact search for the MSE-optimal scale of each channel (the `dynamic` clipping rule).

sqref.clipping.boundary_dynamic sorts each channel's |w|, takes prefix sums and
calls ``search_scales`` on blocks of channels, which returns, per channel, the
few float32 scales (as boundaries alpha) that can minimise the squared error of
the symmetric restricted k-bit grid; the rule then evaluates them exactly
beside every other rule's boundary. docs/method.md section 2 states the
algorithm and its bound.

Layout: the channels are the rows of a (R, m) array `a` of sorted |x| and of
its (R, m + 1) prefix sums; a set of intervals of the scale is three flat
arrays, `ch` (the row of each interval, non-decreasing), `lo` and `hi`. The
branch and bound runs level by level for every channel of a block at once;
each channel's numbers are computed exactly as a search of that channel alone
computes them (same operations, same order), so its result does not depend on
the other channels of the block.
"""
from __future__ import annotations

import numpy as np

from sqref.quant import grid_params, sse_scale, sum_sq_error_bound

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
PROBES = 9  # first upper bound: the SSE at this many geometric scales, then as many between the best one's neighbours
TILES = 160  # the first level tiles the scales left with at most this many narrow intervals ...
BRACKET_GRID = 32  # ... or else with this many geometric (wide) ones
BRACKET_SPLIT = 4  # each further level splits every surviving interval in this many
BRACKET_LEVELS = 6  # then the intervals of least lower bound, up to BRACKET_BUDGET breakpoints
FINALIST_PIECES = 8  # at most this many pieces' float32 neighbours are evaluated exactly
PREFIX_CHUNK = 1 << 13  # columns per step of prefix_sums' correction (its temporaries stay in cache)
_TINY32 = float(np.finfo(np.float32).tiny)  # the smallest normal float32 scale


def grid_scales(alphas, bits):
    """The float32 grid scales (as float64) that quantize would use for these boundaries."""
    return np.asarray(grid_params(bits=bits, alpha=np.asarray(alphas, dtype=np.float64))[0], dtype=np.float64)


def _add_rounding_errors(out, before, terms, carry):
    """out[:, k] = before[:, k] + terms[:, k] was rounded; add the running sum of those rounding errors to out.

    Fast2Sum: with b = max(before, terms) and c = min of the two (both >= 0),
    the error of s = fl(b + c) is exactly c - (s - b). carry (R, 1): the
    errors of the earlier columns, updated in place.
    """
    big = np.maximum(before, terms)
    err = np.minimum(before, terms)
    np.subtract(out, big, out=big)  # s - b, exact
    err -= big  # c - (s - b), exact
    np.cumsum(err, axis=1, out=err)
    err += carry
    carry[:] = err[:, -1:]
    out += err


def _running_sum(terms):
    """np.cumsum of a 1-D array of terms >= 0, each sum corrected to about one rounding (as prefix_sums)."""
    out = np.cumsum(terms)[None]
    if terms.size:
        _add_rounding_errors(out, np.concatenate([[0.0], out[0, :-1]])[None], terms[None], np.zeros((1, 1)))
    return out[0]


def prefix_sums(a, cum1, cum2):
    """cum1[:, i] = sum of a[:, :i] and cum2[:, i] = sum of a[:, :i]**2, each correct to about one rounding.

    a (R, m) float64 >= 0; cum1, cum2 (R, m + 1) float64, filled in place.
    np.cumsum adds left to right, so its i-th sum carries the rounding errors
    of i additions: in the worst case i eps/2 of the sum, in practice about
    sqrt(i) of them, enough to break the search's tolerance on tens of
    millions of weights (docs/method.md section 2, "Bound"). Here every
    addition's error is recovered exactly (_add_rounding_errors), those
    errors are summed in a second running sum and added back; each error is
    at most eps/2 of its partial sum, so their sum's own rounding is second
    order. Bound, for a sum P_i of i non-negative terms (rigorous, derived in
    docs/method.md): |cum - P_i| <= (eps/2 + (i eps)**2) P_i. cum2's terms
    a**2 are rounded first (exact when a comes from float32, whose squares
    fit a float64), which adds eps/2 of P_i. Costs about twice the two plain
    cumsums (benchmarks/model_error.py).
    """
    rows, m = a.shape
    cum1[:, 0] = cum2[:, 0] = 0.0
    np.cumsum(a, axis=1, out=cum1[:, 1:])
    np.square(a, out=cum2[:, 1:])
    np.cumsum(cum2[:, 1:], axis=1, out=cum2[:, 1:])
    carry1, carry2 = np.zeros((rows, 1)), np.zeros((rows, 1))
    before1, before2 = np.zeros((rows, 1)), np.zeros((rows, 1))  # the running sum before column c0, uncorrected
    for c0 in range(0, m, PREFIX_CHUNK):
        c1 = min(m, c0 + PREFIX_CHUNK)
        next1, next2 = cum1[:, c1:c1 + 1].copy(), cum2[:, c1:c1 + 1].copy()
        _add_rounding_errors(cum1[:, c0 + 1:c1 + 1], np.concatenate([before1, cum1[:, c0 + 1:c1]], axis=1),
                             a[:, c0:c1], carry1)
        _add_rounding_errors(cum2[:, c0 + 1:c1 + 1], np.concatenate([before2, cum2[:, c0 + 1:c1]], axis=1),
                             np.square(a[:, c0:c1]), carry2)
        before1, before2 = next1, next2


def _positions(a, ch, keys):
    """np.searchsorted(a[ch[t]], keys[t]) for every interval t: keys (T, K) -> (T, K) int64.

    One call per row, with the keys searched column by column (within a row
    the intervals rise, so each column's keys do too: about 2x faster).
    """
    out = np.empty(keys.shape, dtype=np.int64)
    starts = np.searchsorted(ch, np.arange(a.shape[0] + 1))
    for r in np.flatnonzero(np.diff(starts)):
        t0, t1 = starts[r], starts[r + 1]
        out[t0:t1] = np.searchsorted(a[r], np.ascontiguousarray(keys[t0:t1].T)).T
    return out


def _cuts(a, ch, edges, qmax):
    """Positions of the level boundaries (j - 1/2) e, j = 1..qmax, for scales e (T,) of rows ch: (T, qmax)."""
    return _positions(a, ch, (np.arange(1, qmax + 1) - 0.5) * edges[:, None])


def _at(cum, ch, idx):
    """cum[ch[t], idx[t]]: each interval's row of prefix sums read at positions idx ((T,), (T, K) or a scalar)."""
    base = ch * cum.shape[1]
    return cum.ravel()[base.reshape(base.shape + (1,) * (np.ndim(idx) - 1)) + idx]


def _slice_sse(cum1, cum2, ch, lo, hi, v):
    """sum over a[ch][lo:hi] of (a - v)**2 from the prefix sums (elementwise over index arrays lo, hi and values v)."""
    s2, s1 = _at(cum2, ch, hi) - _at(cum2, ch, lo), _at(cum1, ch, hi) - _at(cum1, ch, lo)
    return s2 - 2.0 * v * s1 + v * v * (hi - lo)


# Sums over the code levels are numpy's pairwise sums of contiguous rows (_pairwise_sum), the same
# whatever else is in the block, so that a channel's numbers do not depend on the other channels; the
# pieces' A (pieces) is summed pairwise too, and its running sums corrected, so that tol bounds its error.
def _pairwise_sum(terms):
    """Row sums of a (T, K) array: numpy's pairwise summation of each row."""
    return np.ascontiguousarray(terms).sum(axis=1)


def _row_min(values, ch, rows):
    """The least of `values` in each row (inf for a row without intervals): (rows,)."""
    out = np.full(rows, np.inf)
    np.minimum.at(out, ch, values)
    return out


def _approx_sse_at(cum1, cum2, ch, scales, cut, qmax):
    """approx_sse with the level boundaries already found: cut = _cuts at the scales."""
    n = cum1.shape[1] - 1
    level = np.arange(qmax + 1)
    lo = np.concatenate([np.zeros((scales.size, 1), dtype=cut.dtype), cut], axis=1)
    hi = np.concatenate([cut, np.full((scales.size, 1), n, dtype=cut.dtype)], axis=1)
    return _pairwise_sum(_slice_sse(cum1, cum2, ch, lo, hi, level * scales[:, None]))


def approx_sse(a, cum1, cum2, ch, scales, qmax):
    """Sum of squared errors of the symmetric grid at scale scales[t] for row ch[t], from sorted |x| and prefix sums.

    Shapes: a (R, m) sorted |x|; cum1, cum2 (R, m + 1) prefix sums of a and a**2;
    ch (non-decreasing), scales (T,) -> (T,). Level j (|code| j) takes |x| in
    [(j - 0.5) s, (j + 0.5) s), the top level qmax everything from (qmax - 0.5) s
    up (that is the clipping), and contributes sum (|x| - j s)**2 =
    S2 - 2 j s S1 + (j s)**2 n_j over its slice of the sorted row: O(qmax log m)
    per scale, no pass over the data. It differs from sum_sq_error only by float
    rounding (the error is the same on both sides of a level boundary, so ties
    do not matter), bounded by model_tolerance; the search's last word is an
    exact evaluation.
    """
    return _approx_sse_at(cum1, cum2, ch, scales, _cuts(a, ch, scales, qmax), qmax)


def _wide_bounds(a, cum1, cum2, ch, lo, hi, at_lo, at_hi, qmax):
    """For intervals [lo, hi]: a lower bound of the SSE over s in [lo, hi] and the breakpoints inside.

    The bound charges each |x| its squared distance to the values any such
    grid offers, U = union over c = 0..qmax of [c lo, c hi]: 0 inside level
    c's span, the nearer end in the gap (c hi, (c + 1) lo), (|x| - qmax hi)**2
    above. O(qmax log m) per interval with the prefix sums. at_lo, at_hi
    (T, qmax): _cuts at lo and hi; the breakpoints in [lo, hi) are the |x| in
    [(j - 1/2) lo, (j - 1/2) hi). Both (T,).
    """
    c = np.arange(qmax + 1)
    multiples = c * hi[:, None]  # (T, qmax + 1): c hi
    end = multiples[:, :qmax]  # top of level c's span, c < qmax
    low = c[1:] * lo[:, None]  # bottom of level c + 1's span
    nxt = np.maximum(low, end)  # (no gap if they overlap)
    mid = 0.5 * (end + nxt)
    i_mult, i_low, i_mid = np.split(_positions(a, ch, np.concatenate([multiples, low, mid], axis=1)),
                                    [qmax + 1, 2 * qmax + 1], axis=1)
    # nxt is the larger of two keys searched, so its position is the larger of theirs
    i_end, i_nxt, top = i_mult[:, :qmax], np.maximum(i_low, i_mult[:, :qmax]), multiples[:, qmax]
    gaps = _slice_sse(cum1, cum2, ch, i_end, i_mid, end) + _slice_sse(cum1, cum2, ch, i_mid, i_nxt, nxt)
    bound = _pairwise_sum(gaps) + _slice_sse(cum1, cum2, ch, i_mult[:, qmax], a.shape[1], top)
    return bound, (at_hi - at_lo).sum(axis=1)


def narrow_lower_bound(cum1, cum2, ch, lo, hi, down, up, qmax):
    """A lower bound of the SSE over s in [lo, hi], for narrow intervals: hi / lo < (qmax - 1/2) / (qmax - 1).

    Then every |x| changes code at most once in [lo, hi], from j - 1 to j as s
    falls through its breakpoint t = |x| / (j - 1/2); those that change are
    the |x| in [(j - 1/2) lo, (j - 1/2) hi). With every code taken at s = hi
    (A, B as in pieces), SSE_hi(s) = S2 - 2 s A + s**2 B, and each weight that
    has moved up by s saves exactly (2j - 1) s (t - s):
        SSE(s) = SSE_hi(s) - sum over the changing |x| of (2j - 1) s max(0, t - s).
    max(0, t - s) is convex in s, so on [lo, hi] it is at most its chord
    (t - lo)(hi - s) / (hi - lo), which needs only the sum of those |x|:
        SSE(s) >= q(s) = SSE_hi(s) - 2 s (1 - u) D,  u = (s - lo) / (hi - lo),
        D = sum over the changing |x| of (|x| - (j - 1/2) lo) >= 0.
    q equals the SSE at both ends and is convex in u (its u**2 coefficient is
    (hi - lo)**2 B + 2 (hi - lo) D >= 0), so its tangent at any point u0 lies
    below it: the bound is q(u0) + min(-u0 q'(u0), (1 - u0) q'(u0)), with u0
    q's minimiser as computed in floats (a u0 off the minimiser only weakens
    the bound, it never makes it invalid). Its float error is within
    bound_tolerance (docs/method.md section 2, "Bound").
    down, up (T, qmax): _cuts at lo and hi (up: the first index with code >= j
    at s = hi). Returns the bound and the number of breakpoints inside, each (T,).
    """
    n = cum1.shape[1] - 1
    half = np.arange(1, qmax + 1) - 0.5
    moving = up - down  # (T, qmax): the |x| that change from code j - 1 to j inside [lo, hi]
    c1_up = _at(cum1, ch, up)
    a_hi = _pairwise_sum(_at(cum1, ch, n)[:, None] - c1_up)  # A and B at s = hi (see pieces)
    b_hi = ((n - up) * (2 * half)).sum(axis=1)
    d_lo = _pairwise_sum((c1_up - _at(cum1, ch, down)) - moving * half * lo[:, None])
    width = hi - lo
    # q(u) = c0 + c1 u + c2 u**2 (s = lo + u width); u0 its minimiser in [0, 1]
    c1 = 2.0 * width * (lo * b_hi - a_hi) + 2.0 * d_lo * (lo - width)
    c2 = width * width * b_hi + 2.0 * width * d_lo
    u0 = np.clip(np.divide(-c1, 2.0 * c2, out=np.zeros_like(c1), where=c2 > 0), 0.0, 1.0)
    u0[(c2 <= 0) & (c1 < 0)] = 1.0  # linear (or constant) q: least at an end
    s = lo + u0 * width
    q = _at(cum2, ch, n) - 2.0 * s * a_hi + s * s * b_hi - 2.0 * s * (1.0 - u0) * d_lo
    slope = 2.0 * width * (s * b_hi - a_hi) + 2.0 * d_lo * (s - width * (1.0 - u0))  # dq/du at u0
    return q - u0 * np.maximum(slope, 0.0) + (1.0 - u0) * np.minimum(slope, 0.0), moving.sum(axis=1)


def model_tolerance(s2, n, qmax, s_top):
    """The search's allowance for float error in an SSE it computes from prefix sums, for one channel.

    tol = (64 eps + 8 (n eps)**2) Z, Z = S2 + n (qmax s_top)**2 (s2 = S2 = sum of a**2, n the
    channel's length, s_top its largest scale). It bounds the error of approx_sse: the prefix sums
    are within (eps/2 + (n eps)**2) of the exact sums, relative (prefix_sums; eps/2 more for the
    squares, rounded first); approx_sse's slices tile the sorted row, so those errors telescope, to
    at most (2 eps + 3 (n eps)**2) Z; its own arithmetic (a few roundings per level, a pairwise sum
    of qmax + 1 terms) adds at most 28 eps Z: half of tol in all. The pieces' SSE is within tol / 2
    too (pieces; its A has 2 (n eps)**2 Z of the second-order terms, within tol / 4, which is why
    their coefficient is 8); the interval bounds get bound_tolerance on top (docs/method.md
    section 2, "Bound").
    """
    eps = float(np.finfo(np.float64).eps)
    return (64 * eps + 8 * (n * eps) ** 2) * sse_scale(s2, n, qmax, s_top)


def bound_tolerance(s2, n, qmax, s_top):
    """The float error allowed an interval's lower bound (narrow_lower_bound, _wide_bounds), for one channel.

    (8 qmax + 64) (eps + (n eps)**2) Z, Z as in model_tolerance. Unlike approx_sse's slices, the
    bounds' sums do not tile the row, so their prefix errors do not cancel: each prefix sum is within
    (eps + (n eps)**2) of its sum, and _wide_bounds takes up to 4 qmax of them, so its worst case grows
    with qmax, (6 qmax + 30)(...) Z; narrow_lower_bound's is (11 (eps + (n eps)**2) + 46 eps) Z whatever
    qmax (docs/method.md section 2, "Bound"). The branch and bound drops an interval only when its bound
    exceeds U + model_tolerance + this: then no scale in it can beat U, whatever the rounding.
    """
    eps = float(np.finfo(np.float64).eps)
    return (8 * qmax + 64) * (eps + (n * eps) ** 2) * sse_scale(s2, n, qmax, s_top)


def _breakpoint_counts(a, ch, lo, hi, qmax):
    """How many breakpoints a_i / (j - 1/2) lie in [lo, hi), per interval: a_i in [(j - 1/2) lo, (j - 1/2) hi)."""
    return (_cuts(a, ch, hi, qmax) - _cuts(a, ch, lo, qmax)).sum(axis=1)


def first_level(a, cum1, cum2, rows, qmax, s_lo, s_top, tol):
    """The first level of _bracket for the given rows: its intervals, their _cuts, and an upper bound U per row.

    1. U: the least approx_sse at PROBES geometric scales over [s_lo, s_top],
       then at PROBES scales evenly between the best one's two neighbours.
    2. s_clip: at any scale s' <= s, every |x| > qmax s is clipped and costs
       (|x| - qmax s')**2 >= (|x| - qmax s)**2, so
       clip(s) = sum over |x| > qmax s of (|x| - qmax s)**2 bounds the SSE on
       (0, s] from below, and falls as s grows. The largest of 33 geometric
       scales between s_lo and the best probe with clip > U + tol, refined
       once more between it and the next: no scale below s_clip can hold the
       minimum.
    3. [s_clip, s_top] in geometric intervals just inside the narrow limit
       (hi / lo < (qmax - 1/2) / (qmax - 1), so the tighter bound applies at
       once) when at most TILES do, else (or if fewer) BRACKET_GRID geometric ones.
    s_lo, s_top, tol: (R,) per row of a. Returns ch, lo, hi (T,), at_lo, at_hi
    (T, qmax) and U (R,) (inf on the rows not searched).
    """
    n_rows, n = a.shape
    k, idx = rows.size, np.arange(rows.size)
    upper = np.full(n_rows, np.inf)
    probes = np.stack([np.geomspace(s_lo[r], s_top[r], PROBES) for r in rows])
    sse = approx_sse(a, cum1, cum2, np.repeat(rows, PROBES), probes.ravel(), qmax).reshape(k, PROBES)
    best = np.argmin(sse, axis=1)
    left, right = probes[idx, np.maximum(best - 1, 0)], probes[idx, np.minimum(best + 1, PROBES - 1)]
    between = left[:, None] + (right - left)[:, None] * np.linspace(0.0, 1.0, PROBES)
    sse_between = approx_sse(a, cum1, cum2, np.repeat(rows, PROBES), between.ravel(), qmax).reshape(k, PROBES)
    upper[rows] = np.minimum(sse.min(axis=1), sse_between.min(axis=1))
    s_best = np.where(sse.min(axis=1) <= sse_between.min(axis=1), probes[idx, best],
                      between[idx, np.argmin(sse_between, axis=1)])  # clip(s_best) <= SSE(s_best) = U
    s_clip, top = s_lo[rows].copy(), s_best
    for _ in range(2):
        scales = np.exp(np.linspace(np.log(s_clip), np.log(top), 33, axis=1))  # (k, 33)
        over = qmax * scales
        first = _positions(a, rows, over)  # the first |x| >= qmax s (ties cost 0 either way)
        ch33 = np.repeat(rows, 33)
        clip = _slice_sse(cum1, cum2, ch33, first.ravel(), np.full(first.size, n), over.ravel()).reshape(k, 33)
        out = clip > (upper + tol)[rows][:, None]
        some = out.any(axis=1)
        last = 32 - np.argmax(out[:, ::-1], axis=1)  # the largest scale ruled out
        s_clip = np.where(some, scales[idx, last], s_clip)
        top = np.where(some, scales[idx, np.minimum(last + 1, 32)], scales[idx, 0])
    count = np.full(k, BRACKET_GRID)
    if qmax > 1:  # (with one level every interval is narrow)
        step = 0.98 * np.log((qmax - 0.5) / (qmax - 1))  # a little inside the limit: the float edges stay narrow
        narrow = np.ceil(np.log(s_top[rows] / s_clip) / step).astype(np.int64)
        count = np.where(narrow <= TILES, np.maximum(narrow, BRACKET_GRID), BRACKET_GRID)
    edges = np.concatenate([np.geomspace(s_clip[t], s_top[r], count[t] + 1) for t, r in enumerate(rows)])
    cuts = _cuts(a, np.repeat(rows, count + 1), edges, qmax)
    first_edge = np.cumsum(count + 1) - (count + 1)
    at = np.concatenate([f + np.arange(c) for f, c in zip(first_edge, count)])  # each interval's lower edge
    return np.repeat(rows, count), edges[at], edges[at + 1], cuts[at], cuts[at + 1], upper


def _bracket(a, cum1, cum2, rows, qmax, s_lo, s_top, tol):
    """Intervals of the scale in [s_lo, s_top] that may hold the least SSE, for each of the `rows` (branch and bound).

    Per row: a first upper bound U of the minimum, the scales below s_clip
    ruled out, and the rest in intervals (first_level); the SSE at every
    interval's upper end lowers U; an interval whose lower bound (_wide_bounds, or
    narrow_lower_bound once narrow) exceeds U + tol cannot hold it and is
    dropped; split the others in BRACKET_SPLIT and repeat until they hold at
    most BRACKET_BUDGET breakpoints: then the bracket is exact (to tol).
    After BRACKET_LEVELS levels, keep the intervals of least lower bound up to
    the budget (then the result is within the bound boundary_dynamic states).
    The rows go through the levels together, each with its own U. An edge's
    _cuts are searched once: the intervals on either side of it, and the
    outer children of a split interval, share them.
    s_lo, s_top, tol: (R,) per row of a; tol is the pruning margin, model_tolerance +
    bound_tolerance (search_scales). Returns {row: (lo, hi)}.
    """
    n_rows = a.shape[0]
    if rows.size == 0:
        return {}
    ch, lo, hi, at_lo, at_hi, upper = first_level(a, cum1, cum2, rows, qmax, s_lo, s_top, tol)
    active = np.isin(np.arange(n_rows), rows)
    brackets = {}
    for level in range(BRACKET_LEVELS + 1):
        is_narrow = hi * (qmax - 1) < lo * (qmax - 0.5)
        bound, counts = np.empty(lo.size), np.empty(lo.size, dtype=np.int64)
        wide, narrow = np.flatnonzero(~is_narrow), np.flatnonzero(is_narrow)
        if wide.size:
            bound[wide], counts[wide] = _wide_bounds(a, cum1, cum2, ch[wide], lo[wide], hi[wide],
                                                     at_lo[wide], at_hi[wide], qmax)
        if narrow.size:
            bound[narrow], counts[narrow] = narrow_lower_bound(
                cum1, cum2, ch[narrow], lo[narrow], hi[narrow], at_lo[narrow], at_hi[narrow], qmax)
        upper = np.minimum(upper, _row_min(_approx_sse_at(cum1, cum2, ch, hi, at_hi, qmax), ch, n_rows))
        keep = bound <= (upper + tol)[ch]
        ch, lo, hi, at_lo, at_hi, bound, counts = (v[keep] for v in (ch, lo, hi, at_lo, at_hi, bound, counts))
        starts = np.searchsorted(ch, np.arange(n_rows + 1))
        done = active & (np.bincount(ch, weights=counts, minlength=n_rows) <= BRACKET_BUDGET)
        if level == BRACKET_LEVELS:
            done = active
        for r in np.flatnonzero(done):
            seg = slice(starts[r], starts[r + 1])
            take = slice(None)
            if level == BRACKET_LEVELS and counts[seg].sum() > BRACKET_BUDGET:
                order = np.argsort(bound[seg], kind="stable")
                take = order[np.cumsum(counts[seg][order]) <= BRACKET_BUDGET]
                take = take if take.size else order[:1]
            brackets[int(r)] = lo[seg][take], hi[seg][take]
        active &= ~done
        if not active.any():
            break
        going = active[ch]
        ch, lo, hi, at_lo, at_hi = ch[going], lo[going], hi[going], at_lo[going], at_hi[going]
        t = np.linspace(0.0, 1.0, BRACKET_SPLIT + 1)
        edges = lo[:, None] + (hi - lo)[:, None] * t  # (T, SPLIT + 1)
        edges[:, -1] = hi
        inner = _cuts(a, np.repeat(ch, BRACKET_SPLIT - 1), edges[:, 1:-1].ravel(), qmax)
        cuts = np.concatenate([at_lo[:, None], inner.reshape(ch.size, BRACKET_SPLIT - 1, qmax), at_hi[:, None]], axis=1)
        ch, lo, hi = np.repeat(ch, BRACKET_SPLIT), edges[:, :-1].ravel(), edges[:, 1:].ravel()
        at_lo, at_hi = cuts[:, :-1].reshape(-1, qmax), cuts[:, 1:].reshape(-1, qmax)
    return brackets


def pieces(a, cum1, r, qmax, lo, hi):
    """Every quadratic piece of row r's SSE inside the intervals [lo_k, hi_k]: (left, right, A, B), each (P,).

    At s = hi_k, |x| >= (j - 1/2) hi_k has code >= j, so A = sum_j (sum of those
    |x|) and B = sum_j (2j - 1) (their count). Going down from hi_k, breakpoint
    (i, j) at t = a_i / (j - 1/2) adds a_i to A and 2j - 1 to B. B is exact (an
    integer); A is a pairwise sum over the levels plus a corrected running sum
    over the breakpoints, so 2 s A is within about (12 eps + 2 (n eps)**2) Z of
    its exact value (Z as in model_tolerance, tol / 4 at most; docs/method.md section 2).
    """
    n = a.shape[1]
    ch = np.full(lo.size, r)
    half = np.arange(1, qmax + 1) - 0.5
    up, down = _cuts(a, ch, hi, qmax), _cuts(a, ch, lo, qmax)  # (S, qmax): first index with code >= j at hi, at lo
    odd = 2 * np.arange(1, qmax + 1) - 1
    a_hi = _pairwise_sum(cum1[r, n] - _at(cum1, ch, up))
    b_hi = ((n - up) * odd).sum(axis=1)
    # the breakpoints: for interval k and level j, the indices down[k, j] .. up[k, j] - 1
    count = (up - down).ravel()
    first = np.repeat(down.ravel() - np.cumsum(count) + count, count)
    idx = first + np.arange(count.sum())
    k = np.repeat(np.repeat(np.arange(lo.size), qmax), count)
    j_half = np.repeat(np.tile(half, lo.size), count)
    t = a[r, idx] / j_half
    # by interval, then by descending scale: t / hi_k is in (0, 1], so one key sorts both ways
    order = np.argsort(k - t / hi[k], kind="stable")
    t, k, d_a, d_b = t[order], k[order], a[r, idx][order], 2.0 * j_half[order]
    # segmented running sums: A after each breakpoint = A(hi_k) + the d_a of the breakpoints so far in k
    seg_start = np.searchsorted(k, np.arange(lo.size))
    run_a = _running_sum(d_a)
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


def _finalists(found, s2, tol, s_top, amax, qmax):
    """The float32 scales, as alphas, of the pieces of least SSE (one row; see search_scales, step 3).

    found: what pieces returns for the row."""
    left, right, big_a, big_b = found
    right = np.minimum(right, s_top)
    live = left <= right
    left, right, big_a, big_b = left[live], right[live], big_a[live], big_b[live]
    s = np.clip(big_a / np.maximum(big_b, 1.0), left, right)  # B = 0: no code set, SSE = S2 anywhere
    sse = s2 - 2.0 * s * big_a + s * s * big_b
    best = int(np.argmin(sse))
    step = float(np.spacing(np.float32(s[best])))  # a float32 step from the best point costs B * step**2
    near = np.flatnonzero(sse <= sse[best] + 2.0 * tol + big_b[best] * step * step)
    near = near[np.argsort(sse[near], kind="stable")[:FINALIST_PIECES]]
    scales = np.unique(np.clip(_float32_neighbours(s[near]), _TINY32, s_top))
    return [amax if v == s_top else float(v * qmax) for v in scales]


def row_limits(a, cum2, bits):
    """Per row of a (sorted |x|, see search_scales): s_top, s_lo, tol and the pruning margin, each (R,).

    s_top: the float32 scale of max|x|; s_lo: (smallest |x| > 0) / (qmax - 1/2),
    at most s_top; tol: model_tolerance; the margin: tol + bound_tolerance (what
    _bracket prunes with). Each row's tolerances are Python-float arithmetic,
    row by row, so their bits do not depend on the other rows.
    """
    qmax = 2 ** (bits - 1) - 1
    m = a.shape[1]
    s_top = grid_scales(a[:, -1], bits)
    smallest = np.array([row[np.searchsorted(row, 0.0, side="right")] for row in a])  # smallest |x| > 0
    s_lo = np.minimum(smallest / (qmax - 0.5), s_top)
    tol = np.array([model_tolerance(float(s2), m, qmax, float(top)) for s2, top in zip(cum2[:, -1], s_top)])
    prune = tol + np.array([bound_tolerance(float(s2), m, qmax, float(top)) for s2, top in zip(cum2[:, -1], s_top)])
    return s_top, s_lo, tol, prune


def search_scales(a, cum1, cum2, bits):
    """The float32 scales, as alphas, that may minimise the SSE of each row of a (see the comment above).

    Shapes: a (R, m) sorted |x| (float64) of R channels with max|x| > 0;
    cum1, cum2 (R, m + 1) its prefix sums of a and a**2 (cum[:, i] = sum of the
    i smallest). Per row:
    1. the domain: s in (0, s_top], s_top = the float32 scale of max|x|;
    2. below s_lo = (smallest |x| > 0) / (qmax - 1/2) every non-zero |x| clips:
       one piece; above it, all m * qmax breakpoints when there are at most
       ENUMERATE of them, else those inside the bracket (_bracket, every such
       row at once);
    3. each piece's least point, clamped into the piece and the domain; the
       pieces within the float tolerance (plus one float32 step) of the least,
       at most FINALIST_PIECES of them, give their float32 neighbours.
    Returns one list per row: alphas = s * qmax (exact in float64, and
    float32(alpha / qmax) == s), max|x| for s_top.
    """
    qmax = 2 ** (bits - 1) - 1
    every = np.arange(a.shape[0])
    amax = a[:, -1]
    s_top, s_lo, tol, prune = row_limits(a, cum2, bits)
    open_ = s_lo < s_top  # else all clipped: one piece, no breakpoint inside
    many = open_ & (_breakpoint_counts(a, every, s_lo, s_top, qmax) > ENUMERATE)
    brackets = _bracket(a, cum1, cum2, np.flatnonzero(many), qmax, s_lo, s_top, prune)
    found = []
    for r in every:
        lo, hi = np.array([_TINY32]), s_lo[r:r + 1]
        if open_[r]:
            b_lo, b_hi = brackets.get(r, (s_lo[r:r + 1], s_top[r:r + 1]))
            lo, hi = np.concatenate([lo, b_lo]), np.concatenate([hi, b_hi])
        found.append(_finalists(pieces(a, cum1, r, qmax, lo, hi), cum2[r, -1], tol[r], float(s_top[r]),
                                float(amax[r]), qmax))
    return found


def screen(a, cum1, cum2, alphas, bits):
    """Which candidate boundaries of each row can give the row's least exactly evaluated SSE: (R, K) bool.

    a, cum1, cum2 as in search_scales; alphas (R, K) float64 > 0, K candidates
    per row. A candidate is dropped when its SSE from the prefix sums
    (approx_sse) exceeds the row's least by more than tol + 2 E, where tol
    bounds approx_sse's error both ways (model_tolerance) and E that of the
    exact evaluation (sqref.quant.sum_sq_error_bound), both with Z taken at
    the row's largest scale (its s_top or a larger candidate): then the exact
    evaluation puts it strictly above the row's least candidate, so dropping
    it changes no result (ties included). Each row's margin is Python-float
    arithmetic, row by row, as in row_limits.
    """
    qmax = 2 ** (bits - 1) - 1
    rows, k = alphas.shape
    scales = grid_scales(alphas, bits)
    model = approx_sse(a, cum1, cum2, np.repeat(np.arange(rows), k), scales.ravel(), qmax).reshape(rows, k)
    s_max = np.maximum(grid_scales(a[:, -1], bits), scales.max(axis=1))
    m = a.shape[1]
    margin = np.array([model_tolerance(float(s2), m, qmax, float(top))
                       + 2.0 * sum_sq_error_bound(float(s2), m, qmax, float(top))
                       for s2, top in zip(cum2[:, -1], s_max)])
    return model <= model.min(axis=1, keepdims=True) + margin[:, None]
